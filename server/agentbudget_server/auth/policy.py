"""May this principal make this call on these budgets: pure decisions, no I/O.

A principal *reaches* a budget when one of its scope patterns matches the budget's name
(``fnmatch`` globs: ``*``, ``demo/*``, ``team/research``) or when the budget names it among its
agent principals. The role decides which methods it may call on the budgets it reaches:

| role | methods |
|---|---|
| agent | Reserve, Commit, Release, RecordCost, GetBudget, Route |
| coordinator | an agent's, and ListBudgets, ListLedgerEntries, QuerySpend, Transfer (both budgets), WatchEvents |
| viewer | GetBudget, Route, ListBudgets, ListLedgerEntries, QuerySpend, WatchEvents |
| admin | everything, on every budget (UpsertBudget and DeleteBudget only here) |

Calls over many budgets name none, or a namespace; for a principal whose scope is not ``*`` they
are narrowed to its scope when that can be done exactly, and refused otherwise:

* ListBudgets: a namespace its scope covers whole (``ns/*``); with no namespace, a scope of one
  namespace means that namespace;
* QuerySpend: the budgets it reaches, or a namespace its scope covers whole; with neither, a scope
  of exact names means those budgets, a scope of one namespace that namespace;
* WatchEvents: the budgets it reaches; with none named, the stream carries only the events of
  budgets it reaches.

The decision uses names and agent principals only: a budget that does not exist has no agent
principals, so it looks like someone else's, and a refusal never says which.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from ..principal import ADMIN, AGENT, COORDINATOR, VIEWER, Principal

SPEND = frozenset({"Reserve", "Commit", "Release", "RecordCost"})
AGENT_METHODS = SPEND | {"GetBudget", "Route"}
READ_METHODS = frozenset({"GetBudget", "Route", "ListBudgets", "ListLedgerEntries", "QuerySpend", "WatchEvents"})
METHODS: dict[str, frozenset[str]] = {
    AGENT: AGENT_METHODS,
    COORDINATOR: AGENT_METHODS | READ_METHODS | {"Transfer"},
    VIEWER: READ_METHODS,
}
_PLAIN = re.compile(r"^[^*?\[\]]+$")
_NAMESPACE = re.compile(r"^([^*?\[\]/]+)/\*$")


@dataclass(frozen=True)
class Target:
    """What a request names: its budgets, and for calls over many budgets, the namespace filter."""

    budgets: tuple[str, ...] = ()
    namespace: str = ""
    many: bool = False  # ListBudgets, QuerySpend, WatchEvents: budgets (or a namespace) are a filter


def target_of(method: str, request: Any) -> Target:
    """The budgets a BudgetAuthority request names (by the field each request type uses)."""
    if method in ("GetBudget", "UpsertBudget", "DeleteBudget"):
        return Target((request.name,))
    if method == "Transfer":
        return Target((request.from_budget, request.to_budget))
    if method == "ListBudgets":
        return Target((), request.namespace, many=True)
    if method == "QuerySpend":
        return Target(tuple(request.budgets), request.namespace, many=True)
    if method == "WatchEvents":
        return Target(tuple(request.budgets), many=True)
    budget = getattr(request, "budget", None)
    return Target(() if budget is None else (budget,))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    why: str = ""
    # Narrowings of a call over many budgets (None: as asked).
    namespace: str | None = None
    budgets: tuple[str, ...] | None = None
    # WatchEvents with no budgets named: deliver only the events of budgets the principal reaches.
    filter_stream: bool = False


ALLOWED = Verdict(True)


def matches(scope: Sequence[str], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in scope)


def reaches(principal: Principal, name: str, agents: Mapping[str, Sequence[str]]) -> bool:
    """The principal's scope matches the budget, or the budget names it among its agents."""
    return matches(principal.scope, name) or principal.name in agents.get(name, ())


def covers_all(scope: Sequence[str]) -> bool:
    """A pattern matches every name (``*``, ``**``...)."""
    return any(p.endswith("*") and fnmatchcase("", p) for p in scope)


def covers_namespace(scope: Sequence[str], namespace: str) -> bool:
    """A pattern matches every budget of ``namespace``: it ends with ``*`` and matches ``namespace/``
    (the final ``*`` then matches whatever follows)."""
    return any(p.endswith("*") and fnmatchcase(namespace + "/", p) for p in scope)


def needs_agents(principal: Principal, target: Target) -> tuple[str, ...]:
    """The named budgets whose agent principals the decision needs (those the scope does not match)."""
    if principal.role == ADMIN:
        return ()
    return tuple(sorted({b for b in target.budgets if not matches(principal.scope, b)}))


def decide(principal: Principal, method: str, target: Target, agents: Mapping[str, Sequence[str]]) -> Verdict:
    """May ``principal`` call ``method`` on ``target``; ``agents`` holds the agent principals of the
    named budgets (a budget missing from it has none)."""
    if principal.role == ADMIN:
        return ALLOWED
    if method not in METHODS.get(principal.role, frozenset()):
        return Verdict(False, f"the {principal.role} role does not include {method}")
    if not target.many and not target.budgets:
        return Verdict(False, "no budget named")
    if not all(reaches(principal, b, agents) for b in target.budgets):
        return Verdict(False, "a budget is outside its scope")
    if not target.many or target.budgets:
        return ALLOWED  # (a namespace beside named budgets only narrows them further)
    return _narrow(principal.scope, method, target)


def _narrow(scope: Sequence[str], method: str, target: Target) -> Verdict:
    """A call over many budgets that names none."""
    if target.namespace:
        if covers_namespace(scope, target.namespace):
            return ALLOWED
        return Verdict(False, f"namespace {target.namespace!r} is not wholly in its scope")
    if covers_all(scope):
        return ALLOWED
    if method == "WatchEvents":
        return Verdict(True, filter_stream=True)
    namespaces = {m.group(1) for p in scope if (m := _NAMESPACE.match(p))}
    if len(namespaces) == 1 and len(set(scope)) == 1:
        return Verdict(True, namespace=namespaces.pop())
    if method == "QuerySpend" and scope and all(_PLAIN.match(p) for p in scope):
        return Verdict(True, budgets=tuple(sorted(set(scope))))
    return Verdict(False, "name a namespace (or budgets) within its scope")
