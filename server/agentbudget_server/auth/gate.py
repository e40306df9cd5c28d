"""One call through the gate: authenticate, rate-limit, authorize; in that order, before any
database work but the (cached) read of the named budgets' agent principals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..principal import Principal
from . import policy
from .agents import BudgetAgents
from .authenticate import Authenticator, Metadata
from .errors import NotAllowed, RateLimited
from .ratelimit import RateLimiter

# Budget changes after which this replica re-reads the budget's agent principals.
CHANGES = ("UpsertBudget", "DeleteBudget")


@dataclass(frozen=True)
class Admission:
    principal: Principal | None  # None: authentication is off
    verdict: policy.Verdict = policy.ALLOWED


def peer_host(peer: str | None) -> str:
    """``ipv4:10.0.0.7:53412`` -> ``10.0.0.7``: one bucket per address, however many connections."""
    if not peer:
        return ""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0] or rest
    return peer


def narrow(request: Any, verdict: policy.Verdict) -> None:
    """Restrict a call over many budgets to what the verdict allows (ListBudgets, QuerySpend)."""
    if verdict.namespace is not None:
        request.namespace = verdict.namespace
    if verdict.budgets is not None:
        del request.budgets[:]
        request.budgets.extend(verdict.budgets)


class Gate:
    def __init__(self, authenticator: Authenticator | None, limiter: RateLimiter, agents: BudgetAgents) -> None:
        self.authenticator = authenticator  # None: authentication is off, every caller an admin
        self.limiter = limiter
        self.agents = agents

    def _limit(self, key: str) -> None:
        wait = self.limiter.check(key)
        if wait:
            raise RateLimited(wait)

    async def admit(self, method: str, request: Any, metadata: Metadata | None, peer: str | None) -> Admission:
        if self.authenticator is None:
            self._limit("peer:" + peer_host(peer))
            return Admission(None)
        who = await self.authenticator.authenticate(metadata)
        self._limit(who.name)
        target = policy.target_of(method, request)
        needed = policy.needs_agents(who, target)
        verdict = policy.decide(who, method, target, await self.agents.of(needed) if needed else {})
        if not verdict.allowed:
            raise NotAllowed(who.name, who.role, method, verdict.why)
        return Admission(who, verdict)

    async def reaches(self, who: Principal, budget: str) -> bool:
        """For a stream restricted to what the principal reaches: is this event's budget in it."""
        if policy.matches(who.scope, budget):
            return True
        return policy.reaches(who, budget, await self.agents.of((budget,)))

    def changed(self, method: str, request: Any) -> None:
        if method in CHANGES:
            self.agents.forget(request.name)
