"""Unit tests of ``agentbudget_server.rules``: balances, thresholds, phases, holds and commits."""

from __future__ import annotations

import math

import pytest
from agentbudget_server.money import INT64_MAX, MAX_AMOUNT_NANOS, MoneyError
from agentbudget_server.rules import (
    DEFAULT_THRESHOLDS_PPM,
    PPM,
    Assessment,
    Balance,
    CommitPlan,
    EventType,
    Phase,
    ReserveOutcome,
    assess,
    decide_reserve,
    phase_of,
    plan_commit,
    thresholds_from_fractions,
)
from hypothesis import given
from hypothesis import strategies as st

E = EventType
USD = 1_000_000_000  # nanos per unit
T80 = (800_000,)

# --- Balance ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "remaining"),
    [
        (Balance(limit=100, spent=0, held=0), 100),
        (Balance(limit=100, spent=30, held=20), 50),
        (Balance(limit=100, spent=60, held=40), 0),
        (Balance(limit=100, spent=120, held=0), 0),  # an overrun
        (Balance(limit=100, spent=50, held=80), 0),
        (Balance(limit=0, spent=0, held=0), 0),
        (Balance(limit=-50, spent=0, held=0), 0),  # transferred out below zero
    ],
)
def test_remaining_is_never_negative(balance: Balance, remaining: int) -> None:
    """remaining = limit - spent - held, floored at zero."""
    assert balance.remaining == remaining


def test_fits_at_exact_equality() -> None:
    """A hold fits when spent + held + amount == limit, and not one nano more."""
    b = Balance(limit=100 * USD, spent=30 * USD, held=20 * USD)
    assert b.fits(50 * USD)
    assert not b.fits(50 * USD + 1)
    assert b.fits(0)


def test_fits_counts_open_holds() -> None:
    """Open holds use up the limit just like spend."""
    b = Balance(limit=100, spent=0, held=100)
    assert not b.fits(1)
    assert b.fits(0)


def test_nothing_fits_an_overrun_budget() -> None:
    """When spent is above the limit even a zero amount does not fit."""
    assert not Balance(limit=100, spent=101, held=0).fits(0)


@pytest.mark.parametrize(
    ("balance", "ppm"),
    [
        (Balance(limit=100, spent=0, held=0), 0),
        (Balance(limit=100, spent=25, held=0), 250_000),
        (Balance(limit=100, spent=0, held=100), 0),  # holds are not spend
        (Balance(limit=3, spent=1, held=0), 333_333),  # rounds down
        (Balance(limit=100, spent=100, held=0), PPM),
        (Balance(limit=100, spent=150, held=0), 1_500_000),
        (Balance(limit=MAX_AMOUNT_NANOS, spent=MAX_AMOUNT_NANOS - 1, held=0), 999_999),  # exact, not 1.0
        (Balance(limit=0, spent=0, held=0), 0),
        (Balance(limit=0, spent=1, held=0), PPM),
        (Balance(limit=-5, spent=1, held=0), PPM),
    ],
)
def test_utilization_ppm(balance: Balance, ppm: int) -> None:
    """Committed spend over the limit in ppm, floored; a zero limit is 0 unused, 100% once spent."""
    assert balance.utilization_ppm() == ppm


# --- thresholds_from_fractions ---------------------------------------------------------------


def test_thresholds_default_to_eighty_percent() -> None:
    """No thresholds given means the default [0.8]."""
    assert thresholds_from_fractions([]) == DEFAULT_THRESHOLDS_PPM == (800_000,)


@pytest.mark.parametrize(
    ("values", "ppm"),
    [
        ([0.5], (500_000,)),
        ([0.9, 0.5, 0.75], (500_000, 750_000, 900_000)),
        ([0.8, 0.8, 0.8], (800_000,)),
        ([0.3, 0.1, 0.2], (100_000, 200_000, 300_000)),  # 0.1 + 0.2 style float noise does not leak
        ([0.95, 0.999999], (950_000, 999_999)),
        ([0.000001], (1,)),
        ([0.8, 0.8000000001], (800_000,)),  # equal to the ppm: one threshold
    ],
)
def test_thresholds_are_sorted_unique_ppm(values: list[float], ppm: tuple[int, ...]) -> None:
    """Fractions become sorted, de-duplicated integer parts per million."""
    assert thresholds_from_fractions(values) == ppm


@pytest.mark.parametrize("bad", [0.0, -0.0, 1.0, -0.1, 1.5, 100.0, math.nan, math.inf, -math.inf])
def test_thresholds_outside_the_open_unit_interval_are_rejected(bad: float) -> None:
    """Each threshold must be strictly between 0 and 1 (1.0 is implicit: exhaustion); NaN is rejected."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        thresholds_from_fractions([bad])
    with pytest.raises(ValueError):
        thresholds_from_fractions([0.5, bad])


def test_at_most_ten_thresholds() -> None:
    """Ten distinct thresholds are accepted, eleven are not."""
    ten = [i / 20 for i in range(1, 11)]
    assert len(thresholds_from_fractions(ten)) == 10
    with pytest.raises(ValueError, match="at most 10"):
        thresholds_from_fractions([i / 20 for i in range(1, 12)])


def test_the_limit_of_ten_counts_distinct_thresholds() -> None:
    """Duplicates collapse before counting: eleven entries with one repeat are ten thresholds."""
    values = [i / 20 for i in range(1, 11)] + [0.05]
    assert thresholds_from_fractions(values) == tuple(i * 50_000 for i in range(1, 11))


@pytest.mark.parametrize("value", [1e-7, 4.9e-7, 0.9999996, 0.9999999999])
def test_thresholds_never_round_to_zero_or_one(value: float) -> None:
    """A fraction in (0, 1) must give a threshold in (0, 1e6) ppm, or be rejected."""
    try:
        ppm = thresholds_from_fractions([value])
    except ValueError:
        return
    assert all(0 < t < PPM for t in ppm)


def test_a_tiny_threshold_is_refused_rather_than_firing_on_a_fresh_budget() -> None:
    """A threshold that would round to 0 ppm would be 'reached' with nothing spent: it is refused."""
    with pytest.raises(ValueError, match="millionth"):
        thresholds_from_fractions([1e-7])
    fresh = Balance(limit=10 * USD, spent=0, held=0)
    smallest = thresholds_from_fractions([1e-6])
    assert assess(Phase.ACTIVE, frozenset(), fresh, False, smallest) == Assessment(Phase.ACTIVE, frozenset(), ())


# --- phase_of --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "phase"),
    [
        (Balance(limit=100, spent=0, held=0), Phase.ACTIVE),
        (Balance(limit=100, spent=79, held=0), Phase.ACTIVE),
        (Balance(limit=100, spent=79, held=21), Phase.ACTIVE),  # holds are not committed spend
        (Balance(limit=100, spent=80, held=0), Phase.WARNING),  # exactly at the threshold
        (Balance(limit=100, spent=99, held=0), Phase.WARNING),
        (Balance(limit=100 * USD, spent=100 * USD - 1, held=0), Phase.WARNING),  # one nano short
        (Balance(limit=100, spent=100, held=0), Phase.EXHAUSTED),  # exactly at the limit
        (Balance(limit=100, spent=130, held=0), Phase.EXHAUSTED),
        (Balance(limit=0, spent=0, held=0), Phase.EXHAUSTED),
        (Balance(limit=-10, spent=0, held=0), Phase.EXHAUSTED),
    ],
)
def test_phase_of(balance: Balance, phase: Phase) -> None:
    """ACTIVE → WARNING at a threshold → EXHAUSTED at the limit, on committed spend."""
    assert phase_of(balance, False, T80) is phase


@pytest.mark.parametrize(
    "balance",
    [Balance(100, 0, 0), Balance(100, 85, 0), Balance(100, 100, 0), Balance(100, 200, 0), Balance(0, 0, 0)],
)
def test_paused_wins_over_every_other_phase(balance: Balance) -> None:
    """A paused budget is PAUSED whether active, warning or exhausted."""
    assert phase_of(balance, True, T80) is Phase.PAUSED


def test_no_thresholds_means_no_warning() -> None:
    """Without thresholds a budget goes straight from ACTIVE to EXHAUSTED."""
    assert phase_of(Balance(100, 99, 0), False, ()) is Phase.ACTIVE
    assert phase_of(Balance(100, 100, 0), False, ()) is Phase.EXHAUSTED


# --- assess ----------------------------------------------------------------------------------


def test_assess_without_change_raises_no_event() -> None:
    """Spend below every threshold: ACTIVE, nothing crossed, no events."""
    got = assess(Phase.ACTIVE, frozenset(), Balance(100, 10, 50), False, T80)
    assert got == Assessment(Phase.ACTIVE, frozenset(), ())


def test_threshold_fires_when_crossed() -> None:
    """Reaching 80% exactly fires THRESHOLD_CROSSED(800000) and moves to WARNING."""
    got = assess(Phase.ACTIVE, frozenset(), Balance(100, 80, 0), False, T80)
    assert got == Assessment(Phase.WARNING, frozenset({800_000}), ((E.THRESHOLD_CROSSED, 800_000),))


def test_threshold_fires_once_per_period() -> None:
    """Once crossed, further spend in the same period does not fire it again."""
    crossed = frozenset({800_000})
    for spent in (81, 90, 99):
        got = assess(Phase.WARNING, crossed, Balance(100, spent, 0), False, T80)
        assert got == Assessment(Phase.WARNING, crossed, ())


def test_threshold_re_arms_when_the_limit_rises_above_it() -> None:
    """A raised limit un-crosses the threshold; crossing it again fires again."""
    raised = assess(Phase.WARNING, frozenset({800_000}), Balance(200, 80, 0), False, T80)
    assert raised == Assessment(Phase.ACTIVE, frozenset(), ())  # WARNING → ACTIVE is not a resume
    again = assess(raised.phase, raised.crossed, Balance(200, 160, 0), False, T80)
    assert again.events == ((E.THRESHOLD_CROSSED, 800_000),)
    assert again.phase is Phase.WARNING


def test_threshold_stays_crossed_while_the_raised_limit_is_still_below_it() -> None:
    """Raising the limit without leaving the threshold behind keeps it crossed: no new event."""
    got = assess(Phase.WARNING, frozenset({800_000}), Balance(110, 90, 0), False, T80)
    assert got == Assessment(Phase.WARNING, frozenset({800_000}), ())


def test_lowering_the_limit_can_cross_a_threshold() -> None:
    """Thresholds follow the effective limit: a transfer out may cross one without new spend."""
    got = assess(Phase.ACTIVE, frozenset(), Balance(50, 45, 0), False, T80)
    assert got.events == ((E.THRESHOLD_CROSSED, 800_000),)


def test_several_thresholds_crossed_at_once_fire_in_ascending_order() -> None:
    """One large commit past 50%, 75% and 90% fires all three, lowest first."""
    thresholds = (900_000, 500_000, 750_000)  # order given does not matter
    got = assess(Phase.ACTIVE, frozenset(), Balance(100, 95, 0), False, thresholds)
    assert got.events == (
        (E.THRESHOLD_CROSSED, 500_000),
        (E.THRESHOLD_CROSSED, 750_000),
        (E.THRESHOLD_CROSSED, 900_000),
    )
    assert got.crossed == frozenset(thresholds)
    assert got.phase is Phase.WARNING


def test_only_newly_crossed_thresholds_fire() -> None:
    """Thresholds already crossed this period stay silent while the new ones fire."""
    got = assess(Phase.WARNING, frozenset({500_000}), Balance(100, 95, 0), False, (500_000, 750_000, 900_000))
    assert got.events == ((E.THRESHOLD_CROSSED, 750_000), (E.THRESHOLD_CROSSED, 900_000))


def test_exhausted_on_reaching_the_limit_exactly() -> None:
    """spent == limit is EXHAUSTED, with one BUDGET_EXHAUSTED event."""
    got = assess(Phase.WARNING, frozenset({800_000}), Balance(100 * USD, 100 * USD, 0), False, T80)
    assert got == Assessment(Phase.EXHAUSTED, frozenset({800_000}), ((E.BUDGET_EXHAUSTED, None),))


def test_one_nano_short_of_the_limit_is_not_exhausted() -> None:
    """spent == limit - 1 nano stays WARNING."""
    got = assess(Phase.WARNING, frozenset({800_000}), Balance(100 * USD, 100 * USD - 1, 0), False, T80)
    assert got == Assessment(Phase.WARNING, frozenset({800_000}), ())


def test_jump_to_exhausted_fires_thresholds_then_exhausted() -> None:
    """From ACTIVE straight past the limit: the threshold event comes before BUDGET_EXHAUSTED."""
    got = assess(Phase.ACTIVE, frozenset(), Balance(100, 150, 0), False, T80)
    assert got.phase is Phase.EXHAUSTED
    assert got.events == ((E.THRESHOLD_CROSSED, 800_000), (E.BUDGET_EXHAUSTED, None))


def test_exhausted_fires_once() -> None:
    """More spend (an overrun) on an exhausted budget raises no second BUDGET_EXHAUSTED."""
    got = assess(Phase.EXHAUSTED, frozenset({800_000}), Balance(100, 140, 0), False, T80)
    assert got == Assessment(Phase.EXHAUSTED, frozenset({800_000}), ())


def test_zero_limit_is_exhausted() -> None:
    """A zero limit is EXHAUSTED from the start, even with nothing spent."""
    got = assess(Phase.ACTIVE, frozenset(), Balance(0, 0, 0), False, T80)
    assert got.phase is Phase.EXHAUSTED
    assert got.events[-1] == (E.BUDGET_EXHAUSTED, None)
    assert got.events.count((E.BUDGET_EXHAUSTED, None)) == 1


@pytest.mark.parametrize(
    ("prev", "crossed", "balance", "phase"),
    [
        (Phase.EXHAUSTED, {800_000}, Balance(200, 100, 0), Phase.ACTIVE),  # limit raised
        (Phase.EXHAUSTED, {800_000}, Balance(110, 100, 0), Phase.WARNING),  # a transfer in
        (Phase.EXHAUSTED, {800_000}, Balance(100, 0, 0), Phase.ACTIVE),  # a new period
        (Phase.PAUSED, set(), Balance(100, 10, 0), Phase.ACTIVE),  # unpaused
        (Phase.PAUSED, {800_000}, Balance(100, 85, 0), Phase.WARNING),  # unpaused
    ],
)
def test_resumed_when_leaving_exhausted_or_paused(
    prev: Phase, crossed: set[int], balance: Balance, phase: Phase
) -> None:
    """EXHAUSTED/PAUSED → ACTIVE/WARNING emits BUDGET_RESUMED (and no repeated threshold)."""
    got = assess(prev, frozenset(crossed), balance, False, T80)
    assert got.phase is phase
    assert got.events == ((E.BUDGET_RESUMED, None),)


def test_unpausing_an_exhausted_budget_is_not_a_resume() -> None:
    """PAUSED → EXHAUSTED emits BUDGET_EXHAUSTED, not BUDGET_RESUMED."""
    got = assess(Phase.PAUSED, frozenset({800_000}), Balance(100, 100, 0), False, T80)
    assert got == Assessment(Phase.EXHAUSTED, frozenset({800_000}), ((E.BUDGET_EXHAUSTED, None),))


@pytest.mark.parametrize("prev", [Phase.ACTIVE, Phase.WARNING, Phase.EXHAUSTED])
def test_pausing_emits_paused(prev: Phase) -> None:
    """Any phase → PAUSED emits BUDGET_PAUSED."""
    got = assess(prev, frozenset({800_000}), Balance(100, 90, 0), True, T80)
    assert got == Assessment(Phase.PAUSED, frozenset({800_000}), ((E.BUDGET_PAUSED, None),))


def test_paused_wins_over_exhaustion() -> None:
    """A paused budget reaching its limit stays PAUSED: no BUDGET_EXHAUSTED until it is unpaused."""
    got = assess(Phase.PAUSED, frozenset({800_000}), Balance(100, 100, 0), True, T80)
    assert got == Assessment(Phase.PAUSED, frozenset({800_000}), ())


def test_thresholds_are_tracked_while_paused() -> None:
    """Committed spend still crosses thresholds while paused, so they do not fire again on unpause."""
    paused = assess(Phase.PAUSED, frozenset(), Balance(100, 85, 0), True, T80)
    assert paused == Assessment(Phase.PAUSED, frozenset({800_000}), ((E.THRESHOLD_CROSSED, 800_000),))
    unpaused = assess(paused.phase, paused.crossed, Balance(100, 85, 0), False, T80)
    assert unpaused.events == ((E.BUDGET_RESUMED, None),)


@given(
    limit=st.integers(min_value=0, max_value=MAX_AMOUNT_NANOS),
    spends=st.lists(st.integers(min_value=0, max_value=MAX_AMOUNT_NANOS // 10), max_size=20),
    thresholds=st.lists(st.integers(min_value=1, max_value=PPM - 1), max_size=10, unique=True),
)
def test_each_threshold_fires_at_most_once_as_spend_grows(limit: int, spends: list[int], thresholds: list[int]) -> None:
    """Over a period of growing spend (fixed limit), each threshold and exhaustion fire at most once."""
    ts = tuple(sorted(thresholds))
    phase, crossed, spent = Phase.ACTIVE, frozenset[int](), 0
    fired: list[tuple[EventType, int | None]] = []
    for amount in spends:
        spent += amount
        got = assess(phase, crossed, Balance(limit, spent, 0), False, ts)
        assert got.phase is phase_of(Balance(limit, spent, 0), False, ts)
        assert crossed <= got.crossed
        fired += got.events
        phase, crossed = got.phase, got.crossed
    assert len(fired) == len(set(fired))
    assert all(event in (E.THRESHOLD_CROSSED, E.BUDGET_EXHAUSTED) for event, _ in fired)
    crossings = [t for event, t in fired if event is E.THRESHOLD_CROSSED]
    assert set(crossings) == set(crossed)


# --- decide_reserve --------------------------------------------------------------------------


def test_reserve_exact_fit_is_granted() -> None:
    """spent + held + amount == limit: GRANT."""
    assert decide_reserve(Balance(100 * USD, 30 * USD, 20 * USD), False, 50 * USD) is ReserveOutcome.GRANT


def test_reserve_one_nano_over_is_exceeded() -> None:
    """One nano over the limit: EXCEEDED."""
    assert decide_reserve(Balance(100 * USD, 30 * USD, 20 * USD), False, 50 * USD + 1) is ReserveOutcome.EXCEEDED


def test_reserve_counts_open_holds() -> None:
    """Held money is not available to a new hold."""
    assert decide_reserve(Balance(100, 0, 100), False, 1) is ReserveOutcome.EXCEEDED
    assert decide_reserve(Balance(100, 0, 99), False, 1) is ReserveOutcome.GRANT


def test_reserve_on_a_zero_or_overrun_limit_is_exceeded() -> None:
    """Nothing positive fits a zero limit, nor a budget already over its limit."""
    assert decide_reserve(Balance(0, 0, 0), False, 1) is ReserveOutcome.EXCEEDED
    assert decide_reserve(Balance(100, 120, 0), False, 1) is ReserveOutcome.EXCEEDED


@pytest.mark.parametrize("amount", [0, 1, 50, 10**6])
def test_paused_denies_every_reserve(amount: int) -> None:
    """A paused budget answers PAUSED, even for a hold that would fit."""
    assert decide_reserve(Balance(10**6, 0, 0), True, amount) is ReserveOutcome.PAUSED


def test_paused_is_reported_before_exceeded() -> None:
    """A paused budget says PAUSED rather than EXCEEDED for a hold that would not fit."""
    assert decide_reserve(Balance(100, 100, 0), True, 1) is ReserveOutcome.PAUSED


@pytest.mark.parametrize(
    ("balance", "amount"),
    [
        (Balance(INT64_MAX, INT64_MAX, 0), 1),
        (Balance(INT64_MAX, INT64_MAX - 5, 0), 10),
        (Balance(INT64_MAX, MAX_AMOUNT_NANOS * 5, MAX_AMOUNT_NANOS * 4), MAX_AMOUNT_NANOS),
    ],
)
def test_reserve_overflow_is_amount_overflow(balance: Balance, amount: int) -> None:
    """spent + held + amount past the bigint range is a MoneyError AMOUNT_OVERFLOW, not a grant."""
    with pytest.raises(MoneyError) as exc:
        decide_reserve(balance, False, amount)
    assert exc.value.reason == "AMOUNT_OVERFLOW"


@given(
    limit=st.integers(min_value=0, max_value=MAX_AMOUNT_NANOS),
    amounts=st.lists(st.integers(min_value=1, max_value=MAX_AMOUNT_NANOS), max_size=30),
)
def test_granted_holds_never_exceed_the_limit(limit: int, amounts: list[int]) -> None:
    """No overspend: after any sequence of reserves, granted holds sum to at most the limit."""
    balance = Balance(limit, 0, 0)
    for amount in amounts:
        outcome = decide_reserve(balance, False, amount)
        assert (outcome is ReserveOutcome.GRANT) == (amount <= balance.remaining)
        if outcome is ReserveOutcome.GRANT:
            balance = Balance(limit, balance.spent, balance.held + amount)
        assert balance.spent + balance.held <= limit


# --- plan_commit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hold", "actual", "plan"),
    [
        (100, 60, CommitPlan(held_delta=-100, spent_delta=60, overrun=False, late=False, expire_first=False)),
        (100, 0, CommitPlan(held_delta=-100, spent_delta=0, overrun=False, late=False, expire_first=False)),
        (100, 100, CommitPlan(held_delta=-100, spent_delta=100, overrun=False, late=False, expire_first=False)),
        (100, 101, CommitPlan(held_delta=-100, spent_delta=101, overrun=True, late=False, expire_first=False)),
    ],
)
def test_commit_in_time(hold: int, actual: int, plan: CommitPlan) -> None:
    """An in-time commit releases the whole hold and charges the actual; above the hold is an overrun."""
    assert plan_commit(hold, actual, already_expired=False, past_expiry=False) == plan


@pytest.mark.parametrize("past_expiry", [True, False])
def test_late_commit_after_the_sweeper(past_expiry: bool) -> None:
    """The sweeper already released the hold: charge the actual only, flagged late, nothing to expire."""
    plan = plan_commit(100, 60, already_expired=True, past_expiry=past_expiry)
    assert plan == CommitPlan(held_delta=0, spent_delta=60, overrun=False, late=True, expire_first=False)


def test_late_commit_past_ttl_before_the_sweeper() -> None:
    """TTL ran out but no sweep yet: expire the hold first, then charge the actual, flagged late."""
    plan = plan_commit(100, 60, already_expired=False, past_expiry=True)
    assert plan == CommitPlan(held_delta=-100, spent_delta=60, overrun=False, late=True, expire_first=True)


@pytest.mark.parametrize(("already_expired", "past_expiry"), [(True, True), (False, True)])
def test_late_overrun_is_still_an_overrun(already_expired: bool, past_expiry: bool) -> None:
    """A late commit above its hold is both late and an overrun; the money is still charged."""
    plan = plan_commit(100, 250, already_expired, past_expiry)
    assert plan.late and plan.overrun
    assert plan.spent_delta == 250


@given(
    hold=st.integers(min_value=1, max_value=MAX_AMOUNT_NANOS),
    actual=st.integers(min_value=0, max_value=MAX_AMOUNT_NANOS),
    already_expired=st.booleans(),
    past_expiry=st.booleans(),
)
def test_every_hold_ends_exactly_once(hold: int, actual: int, already_expired: bool, past_expiry: bool) -> None:
    """Sweeper + commit together remove the hold from ``held`` exactly once; actual is never dropped."""
    plan = plan_commit(hold, actual, already_expired, past_expiry)
    released_by_sweeper = -hold if already_expired else 0
    assert released_by_sweeper + plan.held_delta == -hold
    assert plan.spent_delta == actual
    assert plan.overrun == (actual > hold)
    assert plan.late == (already_expired or past_expiry)
    assert not (plan.expire_first and already_expired)
