"""What the operator decides, as pure functions: spec → authority request, budget → status,
phase → scaling, authority event → Kubernetes Event, pod template → token volume patch. Handlers
only fetch, call these, and apply."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from agentbudget import routing
from agentbudget.client import money, to_decimal
from agentbudget.v1 import budget_authority_pb2 as pb
from google.type.money_pb2 import Money

REPLICAS_ANNOTATION = "agentbudget.io/paused-replicas"
MAX_REPLICAS = 2**31 - 1  # a Deployment's replicas is an int32
PERIODS = {"Monthly": pb.MONTHLY, "Weekly": pb.WEEKLY, "Daily": pb.DAILY}
PHASES = {pb.ACTIVE: "Active", pb.WARNING: "Warning", pb.EXHAUSTED: "Exhausted", pb.PAUSED: "Paused"}
# A ServiceAccount name is a DNS-1123 subdomain (as the CRD's pattern says); a principal the
# authority keeps is at most 253 characters.
SERVICE_ACCOUNT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_PRINCIPAL = 253

# The projected token the operator adds for spec.injectToken (and docs/security-clients.md shows).
TOKEN_VOLUME = "agentbudget-token"
TOKEN_DIR = "/var/run/secrets/agentbudget.io"
TOKEN_PATH = "token"
TOKEN_FILE = f"{TOKEN_DIR}/{TOKEN_PATH}"
TOKEN_AUDIENCE = "agentbudget"
TOKEN_SECONDS = 3600
TOKEN_ENV = "AGENTBUDGET_TOKEN_FILE"


class SpecError(ValueError):
    """A spec the authority cannot take: retrying will not help until the spec changes."""


def budget_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def service_account(spec: Mapping[str, Any], deployment: Mapping[str, Any] | None) -> str | None:
    """The ServiceAccount whose pods may spend from the budget: ``spec.serviceAccountName``, else
    the target Deployment's (``default`` when its pod template names none); None without either,
    or while the target does not exist."""
    explicit = spec.get("serviceAccountName")
    if explicit:
        return str(explicit)
    if not (spec.get("targetRef") or {}).get("name"):
        return None
    return deployment_service_account(deployment)


def deployment_service_account(deployment: Mapping[str, Any] | None) -> str | None:
    """The ServiceAccount a Deployment's pods run as (None for no Deployment)."""
    if deployment is None:
        return None
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    # serviceAccount is the deprecated alias the API server still honours
    return str(pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")


def agent_principal(namespace: str, service_account: str | None) -> str | None:
    """How the authority names the pods of that ServiceAccount (a TokenReview's username)."""
    return f"system:serviceaccount:{namespace}:{service_account}" if service_account else None


def upsert_request(
    namespace: str, name: str, spec: Mapping[str, Any], service_account: str | None = None
) -> pb.UpsertBudgetRequest:
    """The authority's spec of the AgentBudget; ``service_account`` (resolved by :func:`service_account`)
    becomes its one agent principal, and None leaves it without an agent."""
    if service_account is not None and not (
        len(service_account) <= 253 and SERVICE_ACCOUNT_NAME.match(service_account)
    ):
        raise SpecError(f"{service_account!r} is no ServiceAccount name (a lowercase DNS-1123 subdomain)")
    principal = agent_principal(namespace, service_account)
    if principal is not None and len(principal) > MAX_PRINCIPAL:
        raise SpecError(f"the principal {principal!r} is longer than {MAX_PRINCIPAL} characters")
    try:
        limit = Decimal(str(spec["limit"]))
    except (KeyError, InvalidOperation):
        raise SpecError(f"spec.limit must be a decimal string, got {spec.get('limit')!r}") from None
    period = spec.get("period", "Monthly")
    if period not in PERIODS:
        raise SpecError(f"spec.period must be one of {sorted(PERIODS)}, got {period!r}")
    try:
        limit_money = money(limit, str(spec.get("currency", "USD")))
    except ValueError as exc:
        raise SpecError(f"spec.limit: {exc}") from None
    thresholds = spec.get("alertThresholds", [0.8])
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int | float) and not isinstance(t, bool) for t in thresholds
    ):
        raise SpecError(f"spec.alertThresholds must be a list of numbers, got {thresholds!r}")
    paused = spec.get("paused", False)
    if not isinstance(paused, bool):
        raise SpecError(f"spec.paused must be true or false, got {paused!r}")
    overrides = spec.get("routing") or {}
    try:
        routing.resolve(overrides)
    except (ValueError, TypeError, AttributeError) as exc:
        raise SpecError(f"spec.routing: {exc}") from None
    request = pb.UpsertBudgetRequest(
        name=budget_name(namespace, name),
        spec=pb.BudgetSpec(
            limit=limit_money,
            period=PERIODS[period],
            time_zone=str(spec.get("timeZone", "")),
            alert_thresholds=[float(t) for t in thresholds],
            paused=paused,
            agent_principals=[principal] if principal else [],
        ),
    )
    if overrides.get("tiers") or overrides.get("taskClasses"):
        request.spec.routing.tiers.update(overrides.get("tiers") or {})
        request.spec.routing.task_classes.update(overrides.get("taskClasses") or {})
    return request


def show_money(m: Money) -> str:
    value = to_decimal(m)
    text = f"{value:.2f}" if value == value.quantize(Decimal("0.01")) else f"{value.normalize():f}"
    return f"{text} {m.currency_code}"


def _time(ts: Any) -> str:
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def budget_status(budget: pb.Budget) -> dict[str, Any]:
    """The part of ``.status`` that mirrors the authority."""
    return {
        "phase": PHASES.get(budget.phase, "Unknown"),
        "limit": show_money(budget.effective_limit),
        "spent": show_money(budget.spent),
        "held": show_money(budget.held),
        "remaining": show_money(budget.remaining),
        "utilization": round(budget.utilization, 6),
        "used": f"{math.floor(budget.utilization * 100)}%",  # never "100%" while money is left
        "periodStart": _time(budget.period_start),
        "periodEnd": _time(budget.period_end),
    }


def wants_paused(budget: pb.Budget) -> bool:
    """Exhausted or paused: the agent's workload must run no replica, with no exceptions."""
    return budget.phase in (pb.EXHAUSTED, pb.PAUSED)


@dataclass(frozen=True)
class ScalePlan:
    """What to do to the target: replicas to set (None: leave), the annotation, and the Event."""

    replicas: int | None = None
    annotation: str | None = None  # value to write; "" removes it
    event: tuple[str, str, str] | None = None  # (type, reason, message)


def scale_plan(pause: bool, replicas: int, remembered: str | None, why: str) -> ScalePlan:
    """Pause to 0 remembering the former count once; restore it when budget is available again."""
    if pause:
        if remembered is None:
            if replicas == 0:
                return ScalePlan()  # nothing runs, nothing to remember
            return ScalePlan(0, str(replicas), ("Normal", "Paused", f"scaled to 0 from {replicas}: {why}"))
        if replicas > 0:  # scaled back up by hand while still exhausted or paused
            return ScalePlan(0, None, ("Warning", "Paused", f"scaled up to {replicas} while {why}; scaled to 0 again"))
        return ScalePlan()
    if remembered is None:
        return ScalePlan()
    try:
        former = int(remembered)
    except ValueError:
        former = -1
    if not 0 <= former <= MAX_REPLICAS:
        former = 1  # a damaged annotation: bring the agent back rather than leave it down
    return ScalePlan(former, "", ("Normal", "Resumed", f"budget available again; restored {former} replicas"))


def pause_reason(budget: pb.Budget) -> str:
    return "the budget is paused" if budget.phase == pb.PAUSED else "the budget is exhausted"


EVENT_REASONS: dict[int, tuple[str, str]] = {
    pb.EVENT_THRESHOLD_CROSSED: ("Warning", "ThresholdReached"),
    pb.EVENT_BUDGET_EXHAUSTED: ("Warning", "BudgetExhausted"),
    pb.EVENT_RESERVATION_DENIED: ("Warning", "BudgetDenied"),
}


def kube_event(event: pb.Event) -> tuple[str, str, str] | None:
    """The Kubernetes Event (type, reason, message) an authority event becomes, if any."""
    kind = EVENT_REASONS.get(event.type)
    if kind is None:
        return None
    used = f"spent {show_money(event.spent)} of {show_money(event.effective_limit)}"
    if event.type == pb.EVENT_THRESHOLD_CROSSED:
        message = f"{event.threshold * 100:g}% of the budget reached: {used}"
    elif event.type == pb.EVENT_BUDGET_EXHAUSTED:
        message = f"budget exhausted: {used}; the agent is paused until budget is available"
    else:
        message = f"a hold of {show_money(event.amount)} was denied ({used}); reservation {event.reservation_id}"
    return kind[0], kind[1], message


def condition(
    kind: str, status: bool, reason: str, message: str, generation: int, now: str, previous: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A status condition; lastTransitionTime changes only when the status does."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and "lastTransitionTime" in old else now
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def merge_conditions(previous: Sequence[Mapping[str, Any]], updates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_type = {c["type"]: dict(c) for c in previous if "type" in c}
    for c in updates:
        by_type[c["type"]] = c
    return [by_type[k] for k in sorted(by_type)]


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Only the keys whose values differ (no patch at all when nothing changed)."""
    return {k: v for k, v in desired.items() if current.get(k) != v}


def template_annotation_changes(current: Mapping[str, str] | None, desired: Mapping[str, str]) -> dict[str, str]:
    current = current or {}
    return {k: v for k, v in desired.items() if current.get(k) != v}


def _projected_token_volume() -> dict[str, Any]:
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": TOKEN_AUDIENCE,
                        "expirationSeconds": TOKEN_SECONDS,
                        "path": TOKEN_PATH,
                    }
                }
            ]
        },
    }


def _is_token_volume(volume: Mapping[str, Any]) -> bool:
    # Compared by what matters, not equality: the API server adds defaults (projected.defaultMode).
    sources = (volume.get("projected") or {}).get("sources") or []
    return len(sources) == 1 and {
        k: v
        for k, v in ((sources[0] or {}).get("serviceAccountToken") or {}).items()
        if k in ("audience", "expirationSeconds", "path")
    } == {"audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": TOKEN_PATH}


def _with_token(container: Mapping[str, Any]) -> dict[str, Any]:
    """The container with the token mounted read-only and its path in AGENTBUDGET_TOKEN_FILE."""
    out = copy.deepcopy(dict(container))
    mount = {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}
    mounts = list(out.get("volumeMounts") or [])
    at = next((i for i, m in enumerate(mounts) if m.get("mountPath") == TOKEN_DIR), None)
    if at is None:
        mounts.append(mount)
    elif {k: mounts[at].get(k) for k in mount} != mount:  # extra keys may be the API server's defaults
        mounts[at] = mount
    out["volumeMounts"] = mounts
    env = {"name": TOKEN_ENV, "value": TOKEN_FILE}
    variables = list(out.get("env") or [])
    at = next((i for i, e in enumerate(variables) if e.get("name") == TOKEN_ENV), None)
    if at is None:
        variables.append(env)
    elif variables[at] != env:
        variables[at] = env  # in place: later variables may refer to it as $(AGENTBUDGET_TOKEN_FILE)
    out["env"] = variables
    return out


def token_injection_patch(template: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch of a pod template that gives every container the projected token, or
    None when it already has it.

    A merge patch replaces lists whole, so the lists are the template's own with the token's
    volume, mounts and variable added (or put right where they differ); apply it only onto the
    version of the object it was computed from (metadata.resourceVersion).
    """
    spec = template.get("spec") or {}
    volumes = list(spec.get("volumes") or [])
    at = next((i for i, v in enumerate(volumes) if v.get("name") == TOKEN_VOLUME), None)
    if at is None:
        volumes.append(_projected_token_volume())
    elif not _is_token_volume(volumes[at]):
        volumes[at] = _projected_token_volume()
    patch: dict[str, Any] = {}
    if volumes != list(spec.get("volumes") or []):
        patch["volumes"] = volumes
    for kind in ("initContainers", "containers"):
        current = list(spec.get(kind) or [])
        wanted = [_with_token(c) for c in current]
        if wanted != current:
            patch[kind] = wanted
    return {"spec": patch} if patch else None


def merge_patches(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """Both merge patches as one (``second`` wins where both set a value)."""
    out = dict(first)
    for key, value in second.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patches(out[key], value)
        else:
            out[key] = value
    return out
