"""The ledger's decisions as pure functions: phases, thresholds, holds and commits.

Everything here works on exact integer nanos and knows nothing of SQL or gRPC, so the
authority's behaviour can be unit-tested rule by rule (and later applied to a batch of calls
in memory, in arrival order).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .money import checked_sum, ratio_reached

PPM = 1_000_000
DEFAULT_THRESHOLDS_PPM = (800_000,)


class Phase(StrEnum):
    ACTIVE = "ACTIVE"
    WARNING = "WARNING"
    EXHAUSTED = "EXHAUSTED"
    PAUSED = "PAUSED"


class EventType(StrEnum):
    BUDGET_CREATED = "BUDGET_CREATED"
    BUDGET_DELETED = "BUDGET_DELETED"
    LIMIT_CHANGED = "LIMIT_CHANGED"
    THRESHOLD_CROSSED = "THRESHOLD_CROSSED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    RESERVATION_DENIED = "RESERVATION_DENIED"
    BUDGET_PAUSED = "BUDGET_PAUSED"
    BUDGET_RESUMED = "BUDGET_RESUMED"
    BUDGET_TRANSFERRED = "BUDGET_TRANSFERRED"
    PERIOD_ROLLED = "PERIOD_ROLLED"
    OVERRUN = "OVERRUN"


@dataclass(frozen=True)
class Balance:
    """One period of one budget: effective limit, committed spend and open holds, in nanos."""

    limit: int
    spent: int
    held: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.spent - self.held)

    def fits(self, amount: int) -> bool:
        return self.spent + self.held + amount <= self.limit

    def utilization_ppm(self) -> int:
        if self.limit <= 0:
            return PPM if self.spent > 0 else 0
        return self.spent * PPM // self.limit


@dataclass(frozen=True)
class Assessment:
    phase: Phase
    crossed: frozenset[int]
    events: tuple[tuple[EventType, int | None], ...]  # (type, threshold ppm)


def thresholds_from_fractions(values: list[float]) -> tuple[int, ...]:
    """Alert thresholds given as fractions to sorted unique parts per million, each in (0, 1)."""
    if not values:
        return DEFAULT_THRESHOLDS_PPM
    out = set()
    for value in values:
        if not 0.0 < value < 1.0:  # also rejects NaN
            raise ValueError(f"alert thresholds must be strictly between 0 and 1, got {value}")
        ppm = round(value * PPM)
        if not 0 < ppm < PPM:
            raise ValueError(f"alert thresholds are kept to a millionth; {value} is too close to 0 or 1")
        out.add(ppm)
    if len(out) > 10:
        raise ValueError("at most 10 alert thresholds")
    return tuple(sorted(out))


def phase_of(balance: Balance, paused: bool, thresholds: tuple[int, ...]) -> Phase:
    if paused:
        return Phase.PAUSED
    if balance.spent >= balance.limit:
        return Phase.EXHAUSTED
    if any(ratio_reached(balance.spent, balance.limit, t) for t in thresholds):
        return Phase.WARNING
    return Phase.ACTIVE


def assess(
    prev_phase: Phase,
    prev_crossed: frozenset[int],
    balance: Balance,
    paused: bool,
    thresholds: tuple[int, ...],
) -> Assessment:
    """The phase and crossed thresholds after a change, and the events the change causes.

    A threshold fires once per period; it re-arms when the limit rises above it again.
    """
    reached = frozenset(t for t in thresholds if ratio_reached(balance.spent, balance.limit, t))
    events: list[tuple[EventType, int | None]] = [
        (EventType.THRESHOLD_CROSSED, t) for t in sorted(reached - prev_crossed)
    ]
    phase = phase_of(balance, paused, thresholds)
    if phase != prev_phase:
        if phase is Phase.EXHAUSTED:
            events.append((EventType.BUDGET_EXHAUSTED, None))
        elif phase is Phase.PAUSED:
            events.append((EventType.BUDGET_PAUSED, None))
        elif prev_phase in (Phase.EXHAUSTED, Phase.PAUSED):
            events.append((EventType.BUDGET_RESUMED, None))
    return Assessment(phase, reached, tuple(events))


class ReserveOutcome(StrEnum):
    GRANT = "GRANT"
    PAUSED = "PAUSED"
    EXCEEDED = "EXCEEDED"


def decide_reserve(balance: Balance, paused: bool, amount: int) -> ReserveOutcome:
    if paused:
        return ReserveOutcome.PAUSED
    checked_sum(balance.spent, balance.held, amount)
    return ReserveOutcome.GRANT if balance.fits(amount) else ReserveOutcome.EXCEEDED


@dataclass(frozen=True)
class CommitPlan:
    """How a commit of ``actual`` against a hold of ``hold`` moves the period's balance."""

    held_delta: int
    spent_delta: int
    overrun: bool
    late: bool
    # A late commit ends the hold by expiry first, then charges the actual cost separately.
    expire_first: bool


def plan_commit(hold: int, actual: int, already_expired: bool, past_expiry: bool) -> CommitPlan:
    """``already_expired``: the sweeper ended the hold; ``past_expiry``: its TTL has run out."""
    late = already_expired or past_expiry
    return CommitPlan(
        held_delta=0 if already_expired else -hold,
        spent_delta=actual,
        overrun=actual > hold,
        late=late,
        expire_first=past_expiry and not already_expired,
    )
