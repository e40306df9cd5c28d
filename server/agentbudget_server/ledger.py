"""The hold-granting path: Reserve, Commit, Release, RecordCost and expiry.

Each call becomes a :class:`Call`: a plan to apply under its budget's row lock. :func:`apply`
applies any number of calls for one budget in one transaction, each decided in order against
the balances the calls before it left, exactly as if it ran alone (group commit: see
``groupcommit``). Decisions come from ``rules``; responses are encoded here and stored with the
row they answer, so a retry with the same id replays the identical bytes, whether it arrives in
a later transaction or in the same one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import asyncpg
from agentbudget import routing

from . import commands as c
from . import db, pricing, rules
from . import principal as principal_of
from .accounts import Account, Hold, NeedsLock, Posting, Reply, StoredKey, Unit, unit
from .budgets import route_in
from .errors import (
    AuthorityError,
    BudgetExceeded,
    BudgetPaused,
    IdempotencyKeyReused,
    InvalidField,
    ReservationEnded,
    ReservationNotFound,
    sums_of,
)
from .model import Entry, ReservationView
from .money import checked_sum
from .rules import EventType, ReserveOutcome
from .sql import QUERIES as Q


@dataclass(frozen=True)
class HoldResult:
    reservation: ReservationView
    remaining: int
    model: str = ""
    tier: str = ""


@dataclass(frozen=True)
class ChargeResult:
    entry: Entry
    remaining: int


@dataclass(frozen=True)
class Call:
    """One call of the hold path, ready to be applied to its locked budget."""

    budget: str
    apply: Callable[[Unit, Account], Awaitable[Reply]]
    reservation_id: str | None = None  # read ahead with the batch's other reservations
    request_id: str | None = None  # a RecordCost's idempotency key, read ahead likewise
    # Who makes the call: taken where the call is planned (the caller's context), since a batch
    # is applied by a task of its own.
    principal: str | None = field(default_factory=principal_of.current_name)


async def apply(pool: asyncpg.Pool, budget: str, calls: Sequence[Call]) -> list[Reply]:
    """Apply ``calls`` (all for ``budget``) in one transaction, in order; replies after the commit.

    A call that fails for its caller's reason has its changes taken back and gets its error; the
    others are not disturbed. Any other failure (the database) fails the whole transaction.
    """
    async with db.connection(pool) as conn, conn.transaction():
        u = Unit(conn)
        try:
            account = await u.lock(budget, holds=[x.reservation_id for x in calls if x.reservation_id])
        except AuthorityError as exc:
            return [Reply(error=exc) for _ in calls]
        if any(x.request_id for x in calls):
            await u.load_keys(_charge_scope(account), [x.request_id for x in calls if x.request_id])
        replies = await _decide(u, account, calls)
        await u.write()
    return replies


class Unlocked(StrEnum):
    """How an attempt without the lock ended."""

    WRITTEN = "written"
    MOVED = "moved"  # the budget's version moved between the read and the write: nothing written
    NEEDS_LOCK = "needs_lock"  # events, keys, a period to open or a further read: nothing written


async def try_unlocked(pool: asyncpg.Pool, budget: str, calls: Sequence[Call]) -> tuple[Unlocked, list[Reply]]:
    """:func:`apply` without the budget's lock, if it can be: one read, the same decisions, and one
    write that happens only if nothing changed the budget in between — two round trips instead of
    four, and no lock held while deciding. The replies count only if ``WRITTEN``; otherwise nothing
    was written and the calls must be applied under the lock (the same answers either way).

    Correct whatever else writes the budget meanwhile (that is what the version check is for), but
    worth trying only where little does: group commit drains one budget's batches one after
    another, so only other processes make an attempt miss.
    """
    if any(x.request_id for x in calls):  # RecordCost's idempotency keys are written under the lock
        return Unlocked.NEEDS_LOCK, []
    async with db.connection(pool) as conn:
        u = Unit(conn)
        try:
            try:
                account = await u.read(budget, holds=[x.reservation_id for x in calls if x.reservation_id])
            except AuthorityError as exc:  # no such budget: nothing to write, nothing to lock
                return Unlocked.WRITTEN, [Reply(error=exc) for _ in calls]
            replies = await _decide(u, account, calls)
            if not await u.write():
                return Unlocked.MOVED, []
        except NeedsLock:
            return Unlocked.NEEDS_LOCK, []
    return Unlocked.WRITTEN, replies


async def _decide(u: Unit, account: Account, calls: Sequence[Call]) -> list[Reply]:
    """Each call applied in order to what the calls before it left; one's error undoes its changes."""
    replies = []
    for call in calls:
        u.principal = call.principal
        mark = u.mark()
        try:
            replies.append(await call.apply(u, account))
        except AuthorityError as exc:
            u.undo(mark)
            replies.append(Reply(error=exc))
    return replies


def _check_currency(account: Account, currency: str | None, field: str) -> None:
    """A given amount must be in the budget's currency; a priced one is in the catalog's."""
    if currency is None:
        if account.budget.spec.currency != pricing.CURRENCY:
            raise InvalidField(
                field,
                f"the price catalog is in {pricing.CURRENCY}; budget {account.budget.name!r} is in "
                f"{account.budget.spec.currency}: give the amount",
                reason="CURRENCY_MISMATCH",
            )
        return
    if currency != account.budget.spec.currency:
        raise InvalidField(
            f"{field}.currency_code",
            f"{currency} given, but budget {account.budget.name!r} is in {account.budget.spec.currency}",
            reason="CURRENCY_MISMATCH",
        )


def _priced_hold(account: Account, cmd: c.Reserve, catalog: pricing.Catalog) -> tuple[c.Reserve, str]:
    """The hold with its model routed (a task class) and its amount priced (no amount given)."""
    if cmd.amount is not None and not cmd.task_class:
        return cmd, ""  # nothing to route or price
    details, tier = cmd.details, ""
    if cmd.task_class:
        tier, model = route_in(routing.resolve(account.budget.spec.routing), cmd.task_class)
        details = replace(details, model=model, kind=details.kind or "MODEL_INFERENCE")
    amount = cmd.amount if cmd.amount is not None else catalog.cost(details)
    return replace(cmd, amount=amount, details=details), tier


# -- Reserve ---------------------------------------------------------------------------------------


def reserve(cmd: c.Reserve, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog) -> Call:
    async def run(u: Unit, account: Account) -> Reply:
        with sums_of("amount"):
            return await _reserve(u, account, cmd, encode, catalog)

    return Call(cmd.budget, run, reservation_id=cmd.reservation_id)


async def _reserve(
    u: Unit, account: Account, cmd: c.Reserve, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog
) -> Reply:
    existing = await u.hold(account, cmd.reservation_id)
    if existing is not None:
        if existing.reserve_fingerprint == cmd.fingerprint:
            return Reply(existing.reserve_response)
        raise IdempotencyKeyReused("reservation_id", cmd.reservation_id)
    _check_currency(account, cmd.currency, "amount")
    priced = cmd.amount is None
    cmd, tier = _priced_hold(account, cmd, catalog)
    assert cmd.amount is not None
    outcome = rules.decide_reserve(account.period.balance, account.budget.spec.paused, cmd.amount)
    if outcome is ReserveOutcome.EXCEEDED and await u.expire_due(account):
        outcome = rules.decide_reserve(account.period.balance, account.budget.spec.paused, cmd.amount)
    if outcome is ReserveOutcome.PAUSED:
        raise BudgetPaused(cmd.budget)
    if outcome is ReserveOutcome.EXCEEDED:
        remaining = account.period.balance.remaining
        u.emit(account, EventType.RESERVATION_DENIED, amount=cmd.amount, reservation_id=cmd.reservation_id)
        # A kept error: the expiries and the denial event are written; the same id may succeed later.
        return Reply(error=BudgetExceeded(cmd.budget, cmd.amount, remaining, account.budget.spec.currency))
    return Reply(_grant(u, account, cmd, encode, tier, catalog.version if priced else None))


def _grant(
    u: Unit,
    account: Account,
    cmd: c.Reserve,
    encode: Callable[[HoldResult], bytes],
    tier: str,
    catalog_version: str | None,
) -> bytes:
    assert u.now is not None and cmd.amount is not None
    posting = Posting(
        "HOLD",
        held=cmd.amount,
        reservation_id=cmd.reservation_id,
        details=cmd.details,
        catalog_version=catalog_version,
    )
    u.post(account, posting)
    hold = Hold(
        budget_id=account.budget.id,
        reservation_id=cmd.reservation_id,
        period_start=account.period.start,
        amount_nanos=cmd.amount,
        state="ACTIVE",
        created_at=u.now,
        expires_at=u.now + cmd.ttl,
        ended_at=None,
        committed_nanos=None,
        overrun=False,
        late=False,
        details=cmd.details.to_json(),
        reserve_fingerprint=cmd.fingerprint,
        reserve_response=b"",
        new=True,
    )
    view = hold.view(cmd.budget, account.budget.spec.currency, cmd.details)  # no JSON round trip
    response = encode(HoldResult(view, account.period.balance.remaining, cmd.details.model or "", tier))
    u.put_hold(replace(hold, reserve_response=response))
    return response


# -- Commit and Release ----------------------------------------------------------------------------


async def _ending(
    u: Unit, account: Account, reservation_id: str, fingerprint: bytes, same_operation_state: str
) -> tuple[Hold, bytes | None]:
    """The reservation, and the stored response if this call replays its ending."""
    hold = await u.hold(account, reservation_id)
    if hold is None:
        raise ReservationNotFound(account.budget.name, reservation_id)
    if hold.end_fingerprint is not None:
        if hold.end_fingerprint == fingerprint:
            assert hold.end_response is not None
            return hold, hold.end_response
        if hold.state == same_operation_state:
            raise IdempotencyKeyReused("reservation_id", reservation_id)
        raise ReservationEnded(reservation_id, hold.state)
    return hold, None


def _ended(u: Unit, account: Account, ended: Hold, encode: Callable[[HoldResult], bytes]) -> bytes:
    """Store an ended hold with its response (for replays) and return the response."""
    view = ended.view(account.budget.name, account.budget.spec.currency)
    response = encode(HoldResult(view, account.period.balance.remaining))
    u.put_hold(replace(ended, end_response=response))
    return response


def commit(cmd: c.Commit, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog) -> Call:
    async def run(u: Unit, account: Account) -> Reply:
        with sums_of("actual"):
            return Reply(await _commit(u, account, cmd, encode, catalog))

    return Call(cmd.budget, run, reservation_id=cmd.reservation_id)


async def _commit(
    u: Unit, account: Account, cmd: c.Commit, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog
) -> bytes:
    hold, replay = await _ending(u, account, cmd.reservation_id, cmd.fingerprint, "COMMITTED")
    if replay is not None:
        return replay
    _check_currency(account, cmd.currency, "actual")
    assert u.now is not None
    amount = hold.amount_nanos
    period = None
    if hold.period_start != account.period.start:
        period = await u.period_of(account.budget, hold.period_start)
    target = period or account.period
    details = hold.view(cmd.budget, "").details.merged(cmd.details)
    version = None
    if cmd.actual is None:  # priced from the usage (the reserve's model carries over)
        cmd, version = replace(cmd, actual=catalog.cost(details, "actual")), catalog.version
    assert cmd.actual is not None
    plan = rules.plan_commit(amount, cmd.actual, hold.state == "EXPIRED", hold.expires_at <= u.now)
    overrun = plan.overrun or checked_sum(target.balance.spent, cmd.actual) > target.balance.limit
    if plan.expire_first:
        u.post(account, Posting("EXPIRY", held=-amount, reservation_id=cmd.reservation_id), period)
    u.post(
        account,
        Posting(
            "CHARGE" if plan.late else "COMMIT",
            spent=cmd.actual,
            held=0 if plan.late else -amount,
            reservation_id=cmd.reservation_id,
            overrun=overrun,
            late=plan.late,
            details=details,
            catalog_version=version,
        ),
        period,
    )
    if overrun and period is None:
        u.emit(account, EventType.OVERRUN, amount=cmd.actual - amount, reservation_id=cmd.reservation_id)
    ended = replace(
        hold,
        state="COMMITTED",
        ended_at=u.now,
        committed_nanos=cmd.actual,
        overrun=overrun,
        late=plan.late,
        details=details.to_json(),
        end_fingerprint=cmd.fingerprint,
    )
    return _ended(u, account, ended, encode)


def release(cmd: c.Release, encode: Callable[[HoldResult], bytes]) -> Call:
    async def run(u: Unit, account: Account) -> Reply:
        return Reply(await _release(u, account, cmd, encode))

    return Call(cmd.budget, run, reservation_id=cmd.reservation_id)


async def _release(u: Unit, account: Account, cmd: c.Release, encode: Callable[[HoldResult], bytes]) -> bytes:
    hold, replay = await _ending(u, account, cmd.reservation_id, cmd.fingerprint, "RELEASED")
    if replay is not None:
        return replay
    if hold.state != "ACTIVE":
        raise ReservationEnded(cmd.reservation_id, hold.state)
    period = None
    if hold.period_start != account.period.start:
        period = await u.period_of(account.budget, hold.period_start)
    u.post(account, Posting("RELEASE", held=-hold.amount_nanos, reservation_id=cmd.reservation_id), period)
    assert u.now is not None
    ended = replace(hold, state="RELEASED", ended_at=u.now, end_fingerprint=cmd.fingerprint)
    return _ended(u, account, ended, encode)


# -- RecordCost ------------------------------------------------------------------------------------


def _charge_scope(account: Account) -> str:
    return f"charge:{account.budget.id}"


def record_cost(cmd: c.RecordCost, encode: Callable[[ChargeResult], bytes], catalog: pricing.Catalog) -> Call:
    async def run(u: Unit, account: Account) -> Reply:
        with sums_of("amount"):
            return await _record_cost(u, account, cmd, encode, catalog)

    return Call(cmd.budget, run, request_id=cmd.request_id)


async def _record_cost(
    u: Unit, account: Account, cmd: c.RecordCost, encode: Callable[[ChargeResult], bytes], catalog: pricing.Catalog
) -> Reply:
    scope = _charge_scope(account)
    stored = await u.key(scope, cmd.request_id)
    if stored is not None:
        if stored.fingerprint == cmd.fingerprint:
            return stored.reply  # the same object as the first call's, filled in when written
        raise IdempotencyKeyReused("request_id", cmd.request_id)
    _check_currency(account, cmd.currency, "amount")
    version = None
    if cmd.amount is None:
        cmd, version = replace(cmd, amount=catalog.cost(cmd.details)), catalog.version
    amount = cmd.amount
    assert amount is not None and u.now is not None
    balance = account.period.balance
    overrun = checked_sum(balance.spent, amount) > balance.limit
    posting = Posting(
        "CHARGE",
        spent=amount,
        request_id=cmd.request_id,
        overrun=overrun,
        details=cmd.details,
        catalog_version=version,
    )
    ref = u.post(account, posting)
    if overrun:
        u.emit(account, EventType.OVERRUN, amount=amount)
    entry = Entry(
        id=0,
        budget=cmd.budget,
        currency=account.budget.spec.currency,
        entry_type="CHARGE",
        created_at=u.now,
        period_start=account.period.start,
        spent_delta=amount,
        held_delta=0,
        limit_delta=0,
        reservation_id=None,
        request_id=cmd.request_id,
        overrun=overrun,
        late=False,
        details=cmd.details,
        counterparty=None,
        reason=None,
        catalog_version=version,
    )
    reply, remaining = Reply(), account.period.balance.remaining

    def encode_with_id() -> None:  # the response names the entry, whose id the write assigns
        assert ref.id is not None
        reply.data = encode(ChargeResult(replace(entry, id=ref.id), remaining))

    u.when_written(encode_with_id)
    u.put_key(scope, cmd.request_id, StoredKey(cmd.fingerprint, reply))
    return reply


# -- expiry ----------------------------------------------------------------------------------------


async def sweep(pool: asyncpg.Pool, batch: int = 100) -> int:
    """Expire due holds and open due periods; returns how many budgets were visited.

    Safe on every replica at once: each budget is handled under its lock, and one that another
    transaction holds is skipped (that transaction, or the next sweep, does the work).
    """
    async with db.connection(pool) as conn:
        names = [r["name"] for r in await conn.fetch(Q["due_budgets"], batch)]
    for name in names:
        async with unit(pool) as u:
            account = await u.try_lock(name)
            if account is not None:
                await u.expire_due(account)
    return len(names)
