"""The hold-granting path: Reserve, Commit, Release, RecordCost and expiry.

Each operation is one transaction under its budget's row lock. Decisions come from ``rules``;
responses are encoded by the caller and stored with the row they answer, so that a retry with the
same id replays the identical bytes. Kept in one module so that concurrent holds on one budget can
later be applied together in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import asyncpg
from agentbudget import routing

from . import commands as c
from . import db, pricing, rules
from .accounts import Account, Posting, Unit, unit
from .budgets import route_in
from .errors import (
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


async def reserve(
    pool: asyncpg.Pool, cmd: c.Reserve, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog
) -> bytes:
    with sums_of("amount"):
        return await _reserve(pool, cmd, encode, catalog)


def _priced_hold(account: Account, cmd: c.Reserve, catalog: pricing.Catalog) -> tuple[c.Reserve, str]:
    """The hold with its model routed (a task class) and its amount priced (no amount given)."""
    details, tier = cmd.details, ""
    if cmd.task_class:
        tier, model = route_in(routing.resolve(account.budget.spec.routing), cmd.task_class)
        details = replace(details, model=model, kind=details.kind or "MODEL_INFERENCE")
    amount = cmd.amount if cmd.amount is not None else catalog.cost(details)
    return replace(cmd, amount=amount, details=details), tier


async def _reserve(
    pool: asyncpg.Pool, cmd: c.Reserve, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog
) -> bytes:
    denial: BudgetExceeded | None = None
    async with unit(pool) as u:
        account = await u.lock(cmd.budget)
        existing = await u.conn.fetchrow(Q["get_reservation"], account.budget.id, cmd.reservation_id)
        if existing is not None:
            if existing["reserve_fingerprint"] == cmd.fingerprint:
                return bytes(existing["reserve_response"])
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
            assert cmd.amount is not None
            remaining = account.period.balance.remaining
            u.emit(account, EventType.RESERVATION_DENIED, amount=cmd.amount, reservation_id=cmd.reservation_id)
            denial = BudgetExceeded(cmd.budget, cmd.amount, remaining, account.budget.spec.currency)
        else:
            version = catalog.version if priced else None
            response = await _grant(u, account, cmd, encode, tier, version)
    if denial is not None:
        raise denial  # after the commit: the expiries and the denial event are kept
    return response


async def _grant(
    u: Unit,
    account: Account,
    cmd: c.Reserve,
    encode: Callable[[HoldResult], bytes],
    tier: str,
    catalog_version: str | None,
) -> bytes:
    assert u.now is not None and cmd.amount is not None
    expires = u.now + cmd.ttl
    posting = Posting(
        "HOLD",
        held=cmd.amount,
        reservation_id=cmd.reservation_id,
        details=cmd.details,
        catalog_version=catalog_version,
    )
    await u.post(account, posting)
    view = ReservationView(
        budget=cmd.budget,
        currency=account.budget.spec.currency,
        reservation_id=cmd.reservation_id,
        amount=cmd.amount,
        state="ACTIVE",
        created_at=u.now,
        expires_at=expires,
        ended_at=None,
        committed=None,
        overrun=False,
        late=False,
        period_start=account.period.start,
        details=cmd.details,
    )
    response = encode(HoldResult(view, account.period.balance.remaining, cmd.details.model or "", tier))
    await u.conn.execute(
        Q["insert_reservation"],
        account.budget.id,
        cmd.reservation_id,
        account.period.start,
        cmd.amount,
        u.now,
        expires,
        cmd.details.to_json(),
        cmd.fingerprint,
        response,
    )
    return response


async def _ending(
    u: Unit, account: Account, reservation_id: str, fingerprint: bytes, same_operation_state: str
) -> tuple[asyncpg.Record, bytes | None]:
    """The reservation, and the stored response if this call replays its ending."""
    row = await u.conn.fetchrow(Q["get_reservation"], account.budget.id, reservation_id)
    if row is None:
        raise ReservationNotFound(account.budget.name, reservation_id)
    if row["end_fingerprint"] is not None:
        if row["end_fingerprint"] == fingerprint:
            return row, bytes(row["end_response"])
        if row["state"] == same_operation_state:
            raise IdempotencyKeyReused("reservation_id", reservation_id)
        raise ReservationEnded(reservation_id, row["state"])
    return row, None


async def commit(
    pool: asyncpg.Pool, cmd: c.Commit, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog
) -> bytes:
    with sums_of("actual"):
        return await _commit(pool, cmd, encode, catalog)


async def _commit(
    pool: asyncpg.Pool, cmd: c.Commit, encode: Callable[[HoldResult], bytes], catalog: pricing.Catalog
) -> bytes:
    async with unit(pool) as u:
        account = await u.lock(cmd.budget)
        row, replay = await _ending(u, account, cmd.reservation_id, cmd.fingerprint, "COMMITTED")
        if replay is not None:
            return replay
        _check_currency(account, cmd.currency, "actual")
        assert u.now is not None
        hold = row["amount_nanos"]
        already_expired = row["state"] == "EXPIRED"
        period = None
        if row["period_start"] != account.period.start:
            period = await u.period_of(account.budget, row["period_start"])
        target = period or account.period
        details = ReservationView.from_record(row, cmd.budget, "").details.merged(cmd.details)
        version = None
        if cmd.actual is None:  # priced from the usage (the reserve's model carries over)
            cmd, version = replace(cmd, actual=catalog.cost(details, "actual")), catalog.version
        assert cmd.actual is not None
        plan = rules.plan_commit(hold, cmd.actual, already_expired, row["expires_at"] <= u.now)
        overrun = plan.overrun or checked_sum(target.balance.spent, cmd.actual) > target.balance.limit
        if plan.expire_first:
            await u.post(account, Posting("EXPIRY", held=-hold, reservation_id=cmd.reservation_id), period)
        await u.post(
            account,
            Posting(
                "CHARGE" if plan.late else "COMMIT",
                spent=cmd.actual,
                held=0 if plan.late else -hold,
                reservation_id=cmd.reservation_id,
                overrun=overrun,
                late=plan.late,
                details=details,
                catalog_version=version,
            ),
            period,
        )
        if overrun and period is None:
            u.emit(account, EventType.OVERRUN, amount=cmd.actual - hold, reservation_id=cmd.reservation_id)
        view = ReservationView(
            budget=cmd.budget,
            currency=account.budget.spec.currency,
            reservation_id=cmd.reservation_id,
            amount=hold,
            state="COMMITTED",
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            ended_at=u.now,
            committed=cmd.actual,
            overrun=overrun,
            late=plan.late,
            period_start=row["period_start"],
            details=details,
        )
        response = encode(HoldResult(view, account.period.balance.remaining))
        await u.conn.execute(
            Q["end_reservation"],
            account.budget.id,
            cmd.reservation_id,
            "COMMITTED",
            u.now,
            cmd.actual,
            overrun,
            plan.late,
            details.to_json(),
            cmd.fingerprint,
            response,
        )
        return response


async def release(pool: asyncpg.Pool, cmd: c.Release, encode: Callable[[HoldResult], bytes]) -> bytes:
    async with unit(pool) as u:
        account = await u.lock(cmd.budget)
        row, replay = await _ending(u, account, cmd.reservation_id, cmd.fingerprint, "RELEASED")
        if replay is not None:
            return replay
        if row["state"] != "ACTIVE":
            raise ReservationEnded(cmd.reservation_id, row["state"])
        period = None
        if row["period_start"] != account.period.start:
            period = await u.period_of(account.budget, row["period_start"])
        hold = row["amount_nanos"]
        await u.post(account, Posting("RELEASE", held=-hold, reservation_id=cmd.reservation_id), period)
        assert u.now is not None
        view = ReservationView.from_record(row, cmd.budget, account.budget.spec.currency)
        view = replace(view, state="RELEASED", ended_at=u.now)
        response = encode(HoldResult(view, account.period.balance.remaining))
        await u.conn.execute(
            Q["end_reservation"],
            account.budget.id,
            cmd.reservation_id,
            "RELEASED",
            u.now,
            None,
            False,
            False,
            view.details.to_json(),
            cmd.fingerprint,
            response,
        )
        return response


async def record_cost(
    pool: asyncpg.Pool, cmd: c.RecordCost, encode: Callable[[ChargeResult], bytes], catalog: pricing.Catalog
) -> bytes:
    with sums_of("amount"):
        return await _record_cost(pool, cmd, encode, catalog)


async def _record_cost(
    pool: asyncpg.Pool, cmd: c.RecordCost, encode: Callable[[ChargeResult], bytes], catalog: pricing.Catalog
) -> bytes:
    async with unit(pool) as u:
        account = await u.lock(cmd.budget)
        scope = f"charge:{account.budget.id}"
        key = await u.conn.fetchrow(Q["get_idempotency_key"], scope, cmd.request_id)
        if key is not None:
            if key["fingerprint"] == cmd.fingerprint:
                return bytes(key["response"])
            raise IdempotencyKeyReused("request_id", cmd.request_id)
        _check_currency(account, cmd.currency, "amount")
        version = None
        if cmd.amount is None:
            cmd, version = replace(cmd, amount=catalog.cost(cmd.details)), catalog.version
        assert cmd.amount is not None
        balance = account.period.balance
        overrun = checked_sum(balance.spent, cmd.amount) > balance.limit
        posting = Posting(
            "CHARGE",
            spent=cmd.amount,
            request_id=cmd.request_id,
            overrun=overrun,
            details=cmd.details,
            catalog_version=version,
        )
        entry_id = await u.post(account, posting)
        if overrun:
            u.emit(account, EventType.OVERRUN, amount=cmd.amount)
        assert u.now is not None
        entry = Entry(
            id=entry_id,
            budget=cmd.budget,
            currency=account.budget.spec.currency,
            entry_type="CHARGE",
            created_at=u.now,
            period_start=account.period.start,
            spent_delta=cmd.amount,
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
        response = encode(ChargeResult(entry, account.period.balance.remaining))
        await u.conn.execute(Q["insert_idempotency_key"], scope, cmd.request_id, cmd.fingerprint, response)
        return response


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
