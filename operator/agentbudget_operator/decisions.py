"""What the operator decides, as pure functions: spec → authority request, budget → status,
phase → scaling, authority event → Kubernetes Event. Handlers only fetch, call these, and apply."""

from __future__ import annotations

import math
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


class SpecError(ValueError):
    """A spec the authority cannot take: retrying will not help until the spec changes."""


def budget_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def upsert_request(namespace: str, name: str, spec: Mapping[str, Any]) -> pb.UpsertBudgetRequest:
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
