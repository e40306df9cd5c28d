"""Domain records to protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from agentbudget.v1 import budget_authority_pb2 as pb
from google.protobuf.timestamp_pb2 import Timestamp
from google.type.money_pb2 import Money

from .budgets import UpsertResult
from .ledger import ChargeResult, HoldResult
from .model import BudgetView, Details, Entry, Event, ReservationView
from .money import to_parts
from .periods import PeriodKind
from .rules import PPM
from .spend import SpendGroup, SpendResult

_PERIODS = {PeriodKind.MONTHLY: pb.MONTHLY, PeriodKind.WEEKLY: pb.WEEKLY, PeriodKind.DAILY: pb.DAILY}


def money(nanos: int, currency: str) -> Money:
    out = Money()
    set_money(out, nanos, currency)
    return out


def set_money(out: Money, nanos: int, currency: str) -> None:
    """Fill a message's money field in place (on the hold path: half the cost of building one and
    copying it in)."""
    out.currency_code = currency
    out.units, out.nanos = to_parts(nanos)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "api_calls",
    "reasoning_tokens",
)


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    set_ts(out, value)
    return out


def set_ts(out: Timestamp, value: datetime) -> None:
    """Exact to the microsecond, by integer arithmetic (``FromDatetime`` builds a time tuple: on the
    hold path, three per response, that was a tenth of the encoding). A naive datetime is UTC."""
    delta = value - (_EPOCH if value.tzinfo is not None else _NAIVE_EPOCH)
    out.seconds, out.nanos = delta.days * 86400 + delta.seconds, delta.microseconds * 1000


def details(d: Details) -> pb.CostDetails:
    if d.is_empty():
        return pb.CostDetails()
    counts = {
        name: getattr(d, name)
        for name in _COUNTS
        if getattr(d, name) is not None  # counts have presence: only what was given
    }
    out = pb.CostDetails(
        kind=pb.CostKind.Value(d.kind) if d.kind else pb.COST_KIND_UNSPECIFIED,
        model=d.model or "",
        api_name=d.api_name or "",
        task_id=d.task_id or "",
        task_type=d.task_type or "",
        labels=d.labels,
        sandbox_class=d.sandbox_class or "",
        provider=d.provider or "",
        **counts,
    )
    if d.sandbox_nanos is not None:
        out.sandbox_time.seconds, out.sandbox_time.nanos = divmod(d.sandbox_nanos, 1_000_000_000)
    return out


def budget(view: BudgetView) -> pb.Budget:
    b, p = view.budget, view.period
    s, cur = b.spec, b.spec.currency
    return pb.Budget(
        name=b.name,
        spec=pb.BudgetSpec(
            limit=money(s.limit, cur),
            period=_PERIODS[s.period],
            time_zone=s.time_zone,
            alert_thresholds=[t / PPM for t in s.thresholds],
            paused=s.paused,
            labels=s.labels,
            routing=pb.Routing(tiers=s.routing.get("tiers", {}), task_classes=s.routing.get("taskClasses", {})),
            agent_principals=s.agent_principals,
        ),
        phase=pb.Phase.Value(p.phase.value),
        effective_limit=money(p.balance.limit, cur),
        spent=money(p.balance.spent, cur),
        held=money(p.balance.held, cur),
        remaining=money(p.balance.remaining, cur),
        utilization=p.balance.utilization_ppm() / PPM,
        period_start=ts(p.start),
        period_end=ts(p.end),
        crossed_thresholds=[t / PPM for t in sorted(p.crossed)],
        create_time=ts(b.created_at),
        update_time=ts(b.updated_at),
    )


def reservation(r: ReservationView) -> pb.Reservation:
    out = pb.Reservation()
    fill_reservation(out, r)
    return out


_RESERVATION_STATES = {
    name.removeprefix("RESERVATION_"): number for name, number in pb.ReservationState.items() if number
}


def fill_reservation(out: pb.Reservation, r: ReservationView) -> None:
    """Set a Reservation in place: the hold path encodes one per call."""
    out.budget, out.reservation_id = r.budget, r.reservation_id
    set_money(out.amount, r.amount, r.currency)
    out.state = _RESERVATION_STATES[r.state]
    set_ts(out.create_time, r.created_at)
    set_ts(out.expire_time, r.expires_at)
    out.overrun, out.late = r.overrun, r.late
    set_ts(out.period_start, r.period_start)
    out.details.CopyFrom(details(r.details))  # present even when empty, as stored responses have it
    if r.ended_at is not None:
        set_ts(out.end_time, r.ended_at)
    if r.committed is not None:
        set_money(out.committed, r.committed, r.currency)


def hold_response(cls: type, result: HoldResult) -> bytes:
    msg = cls()
    fill_reservation(msg.reservation, result.reservation)
    set_money(msg.remaining, result.remaining, result.reservation.currency)
    if cls is pb.ReserveResponse:  # the model the hold was priced for, and its tier when routed
        msg.model, msg.tier = result.model, result.tier
    data: bytes = msg.SerializeToString(deterministic=True)
    return data


def entry(e: Entry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        id=e.id,
        budget=e.budget,
        type=pb.EntryType.Value(f"ENTRY_{e.entry_type}"),
        create_time=ts(e.created_at),
        period_start=ts(e.period_start),
        spent_delta=money(e.spent_delta, e.currency),
        held_delta=money(e.held_delta, e.currency),
        limit_delta=money(e.limit_delta, e.currency),
        reservation_id=e.reservation_id or "",
        request_id=e.request_id or "",
        overrun=e.overrun,
        late=e.late,
        details=details(e.details),
        counterparty=e.counterparty or "",
        reason=e.reason or "",
        catalog_version=e.catalog_version or "",
        principal=e.principal or "",
    )


def charge_response(result: ChargeResult) -> bytes:
    msg = pb.RecordCostResponse(entry=entry(result.entry), remaining=money(result.remaining, result.entry.currency))
    data: bytes = msg.SerializeToString(deterministic=True)
    return data


def transfer_response(source: BudgetView, target: BudgetView) -> bytes:
    data: bytes = pb.TransferResponse(from_budget=budget(source), to_budget=budget(target)).SerializeToString(
        deterministic=True
    )
    return data


def upsert_response(result: UpsertResult) -> pb.UpsertBudgetResponse:
    return pb.UpsertBudgetResponse(budget=budget(result.view), created=result.created, changed=result.changed)


def routing_table(table: dict[str, dict[str, str]]) -> pb.Routing:
    return pb.Routing(tiers=table["tiers"], task_classes=table["taskClasses"])


def event(e: Event) -> pb.Event:
    p = e.payload
    out = pb.Event(
        id=e.id,
        type=pb.EventType.Value(f"EVENT_{e.event_type}"),
        budget=e.budget,
        create_time=ts(e.created_at),
        phase=pb.Phase.Value(p["phase"]),
        effective_limit=money(p["limit"], e.currency),
        spent=money(p["spent"], e.currency),
        held=money(p["held"], e.currency),
        threshold=p.get("threshold_ppm", 0) / PPM,
        reservation_id=p.get("reservation_id", ""),
        counterparty=p.get("counterparty", ""),
        message=p.get("message", "") or "",
        period_start=ts(datetime.fromisoformat(p["period_start"])),
        principal=e.principal or "",
    )
    if "amount" in p:
        out.amount.CopyFrom(money(p["amount"], e.currency))
    return out


_INT64_MAX = 2**63 - 1


def _count(value: int) -> int:
    return min(value, _INT64_MAX)  # a sum of counts past int64 is shown saturated, never wrapped


def spend_group(g: SpendGroup) -> pb.SpendGroup:
    s = g.sums
    out = pb.SpendGroup(
        budget=g.budget or "",
        model=g.model or "",
        task_type=g.task_type or "",
        kind=pb.CostKind.Value(g.kind) if g.kind else pb.COST_KIND_UNSPECIFIED,
        bucket=g.bucket or "",
        cost=money(s.cost, g.currency),
        entries=_count(s.entries),
        input_tokens=_count(s.input_tokens),
        output_tokens=_count(s.output_tokens),
        cache_read_tokens=_count(s.cache_read_tokens),
        cache_write_tokens=_count(s.cache_write_tokens),
        tasks=_count(s.tasks),
    )
    if g.bucket_start is not None:
        out.bucket_start.CopyFrom(ts(g.bucket_start))
    seconds, frac = divmod(s.sandbox_nanos, 1_000_000_000)
    out.sandbox_time.seconds, out.sandbox_time.nanos = min(seconds, 315_576_000_000), frac
    return out


def spend_response(result: SpendResult, next_page_token: str) -> pb.QuerySpendResponse:
    return pb.QuerySpendResponse(
        groups=[spend_group(g) for g in result.groups],
        totals=[spend_group(g) for g in result.totals],
        group_count=result.group_count,
        next_page_token=next_page_token if result.more else "",
    )
