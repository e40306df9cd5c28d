"""Budget administration: create / update, read, list, delete, transfer, and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from agentbudget import routing

from . import commands as c
from . import db, periods, rules
from .accounts import Account, Posting, Unit, unit
from .errors import (
    BudgetConflict,
    BudgetNotFound,
    IdempotencyKeyReused,
    InvalidField,
    TransferExceedsAvailable,
    sums_of,
)
from .model import BudgetRow, BudgetView, Entry, PeriodRow, Spec
from .rules import Balance, EventType
from .sql import QUERIES as Q


@dataclass(frozen=True)
class UpsertResult:
    view: BudgetView
    created: bool
    changed: bool


async def upsert(pool: asyncpg.Pool, cmd: c.Upsert) -> UpsertResult:
    for attempt in range(2):
        try:
            with sums_of("spec.limit"):
                return await _upsert(pool, cmd)
        except asyncpg.UniqueViolationError:
            if attempt:  # a concurrent create of the same name won; the second try updates it
                raise
    raise AssertionError("unreachable")


async def _upsert(pool: asyncpg.Pool, cmd: c.Upsert) -> UpsertResult:
    async with unit(pool) as u:
        account = await u.lock_optional(cmd.name)
        if account is None:
            return await _create(u, cmd)
        return await _update(u, account, cmd.spec)


async def _create(u: Unit, cmd: c.Upsert) -> UpsertResult:
    now = await u.conn.fetchval(Q["now"])
    u.now = now
    s = cmd.spec
    start, end = periods.bounds(s.period, s.time_zone, now)
    row = await u.conn.fetchrow(
        Q["insert_budget"],
        cmd.name,
        s.currency,
        s.limit,
        s.period.value,
        s.time_zone,
        list(s.thresholds),
        s.paused,
        _json(s.labels),
        start,
        end,
        now,
        json.dumps(s.routing, sort_keys=True),
        list(s.agent_principals),
    )
    assert row is not None
    budget = BudgetRow.from_record(row)
    placeholder = PeriodRow(start, end, Balance(0, 0, 0), frozenset(), rules.Phase.ACTIVE)
    account = Account(budget, placeholder)
    account.period = await u.open_period(budget, start, end)
    u.emit(account, EventType.BUDGET_CREATED)
    for event_type, _ in rules.assess(
        rules.Phase.ACTIVE, account.period.crossed, account.period.balance, s.paused, s.thresholds
    ).events:
        u.emit(account, event_type)
    return UpsertResult(BudgetView(budget, account.period), created=True, changed=True)


async def _update(u: Unit, account: Account, spec: Spec) -> UpsertResult:
    old = account.budget.spec
    revived = account.budget.deleted_at is not None
    if spec.currency != old.currency:
        raise BudgetConflict(
            f"budget {account.budget.name!r} is in {old.currency}; its currency cannot change",
            field="spec.limit.currency_code",
        )
    if spec == old and not revived:
        return UpsertResult(BudgetView(account.budget, account.period), created=False, changed=False)
    row = await u.conn.fetchrow(
        Q["update_budget_spec"],
        account.budget.id,
        spec.limit,
        spec.period.value,
        spec.time_zone,
        list(spec.thresholds),
        spec.paused,
        _json(spec.labels),
        u.now,
        json.dumps(spec.routing, sort_keys=True),
        list(spec.agent_principals),
    )
    assert row is not None and u.now is not None
    account.budget = BudgetRow.from_record(row)
    if revived:
        u.emit(account, EventType.BUDGET_CREATED)
    if (spec.period, spec.time_zone) != (old.period, old.time_zone) or u.now >= account.budget.period_end:
        # A new period kind or zone starts now (nothing spent), up to the new period's end; a
        # budget revived after its period ended starts at the boundary as usual.
        start, end = periods.bounds(spec.period, spec.time_zone, u.now)
        await u.roll(account, start if start >= account.budget.period_end else u.now, end)
    elif spec.limit != old.limit:
        u.post(account, Posting("LIMIT_CHANGED", limit=spec.limit - old.limit))
        u.emit(account, EventType.LIMIT_CHANGED, amount=spec.limit - old.limit)
    else:
        u.reassess(account, account.period, account.period.balance)
    return UpsertResult(BudgetView(account.budget, account.period), created=revived, changed=True)


async def delete(pool: asyncpg.Pool, name: str, allow_missing: bool) -> bool:
    async with unit(pool) as u:
        try:
            account = await u.lock(name)
        except BudgetNotFound:
            if allow_missing:
                return False
            raise
        await u.conn.execute(Q["delete_budget"], account.budget.id, u.now)
        u.emit(account, EventType.BUDGET_DELETED)
        return True


def _current_view(row: asyncpg.Record) -> BudgetView:
    """A read without a lock; a period that has ended is shown as the new one it has become."""
    budget = BudgetRow.from_record(row)
    period = PeriodRow.from_record(row, limit_column="p_limit")
    now = row["now"]
    if now >= budget.period_end:
        start, end = periods.bounds(budget.spec.period, budget.spec.time_zone, now)
        fresh = Balance(budget.spec.limit, 0, 0)
        s = budget.spec
        assessed = rules.assess(rules.Phase.ACTIVE, frozenset(), fresh, s.paused, s.thresholds)
        period = PeriodRow(start, end, fresh, assessed.crossed, assessed.phase)
    return BudgetView(budget, period)


async def get(pool: asyncpg.Pool, name: str) -> BudgetView:
    async with db.connection(pool) as conn:
        row = await conn.fetchrow(Q["read_budget"], name)
    if row is None:
        raise BudgetNotFound(name)
    return _current_view(row)


async def list_budgets(
    pool: asyncpg.Pool, namespace: str, after: str, page_size: int
) -> tuple[list[BudgetView], str | None]:
    async with db.connection(pool) as conn:
        rows = await conn.fetch(Q["list_budgets"], after, namespace, page_size + 1)
    views = [_current_view(r) for r in rows[:page_size]]
    more = len(rows) > page_size
    return views, (views[-1].budget.name if more and views else None)


async def transfer(pool: asyncpg.Pool, cmd: c.Transfer, encode: Callable[[BudgetView, BudgetView], bytes]) -> bytes:
    for attempt in range(2):
        try:
            with sums_of("amount"):
                return await _transfer(pool, cmd, encode)
        except asyncpg.UniqueViolationError:
            if attempt:  # the same request id raced on another budget pair; now it is stored
                raise
    raise AssertionError("unreachable")


async def _transfer(pool: asyncpg.Pool, cmd: c.Transfer, encode: Callable[[BudgetView, BudgetView], bytes]) -> bytes:
    async with unit(pool) as u:
        # Lock order: by name, whichever way the money moves.
        first, second = sorted((cmd.source, cmd.target))
        locked = {first: await u.lock(first), second: await u.lock(second)}
        source, target = locked[cmd.source], locked[cmd.target]
        key = await u.conn.fetchrow(Q["get_idempotency_key"], "transfer", cmd.request_id)
        if key is not None:
            if key["fingerprint"] == cmd.fingerprint:
                return bytes(key["response"])
            raise IdempotencyKeyReused("request_id", cmd.request_id)
        for account, field in ((source, "from_budget"), (target, "to_budget")):
            if account.budget.spec.currency != cmd.currency:
                raise InvalidField(
                    "amount.currency_code",
                    f"{cmd.currency} given, but {field} {account.budget.name!r} is in {account.budget.spec.currency}",
                    reason="CURRENCY_MISMATCH",
                )
        b = source.period.balance
        available = max(0, b.limit - b.spent - b.held)
        if cmd.amount > available:
            raise TransferExceedsAvailable(cmd.source, available, cmd.currency)
        for account, sign, other, kind in (
            (source, -1, target, "TRANSFER_OUT"),
            (target, 1, source, "TRANSFER_IN"),
        ):
            u.post(
                account,
                Posting(
                    kind,
                    limit=sign * cmd.amount,
                    request_id=cmd.request_id,
                    counterparty=other.budget.name,
                    reason=cmd.reason or None,
                ),
            )
            u.emit(
                account,
                EventType.BUDGET_TRANSFERRED,
                amount=sign * cmd.amount,
                counterparty=other.budget.name,
                message=cmd.reason,
            )
        response = encode(BudgetView(source.budget, source.period), BudgetView(target.budget, target.period))
        await u.conn.execute(Q["insert_idempotency_key"], "transfer", cmd.request_id, cmd.fingerprint, response)
        return response


async def list_entries(pool: asyncpg.Pool, cmd: c.ListEntries) -> tuple[list[Entry], int | None]:
    async with db.connection(pool) as conn:
        budget_id = await conn.fetchval(Q["find_budget_id"], cmd.budget)
        if budget_id is None:
            raise BudgetNotFound(cmd.budget)
        rows = await conn.fetch(Q["list_entries"], budget_id, cmd.after_id, cmd.start, cmd.end, cmd.page_size + 1)
    entries = [Entry.from_record(r) for r in rows[: cmd.page_size]]
    more = len(rows) > cmd.page_size
    return entries, (entries[-1].id if more and entries else None)


def _json(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True)


async def route(pool: asyncpg.Pool, name: str, task_class: str) -> tuple[str, str, dict[str, dict[str, str]]]:
    """(tier, model, the budget's whole table) for a task class."""
    view = await get(pool, name)
    table = routing.resolve(view.budget.spec.routing)
    tier, model = route_in(table, task_class)
    return tier, model, table


def route_in(table: dict[str, dict[str, str]], task_class: str) -> tuple[str, str]:
    try:
        return routing.route(table, task_class)
    except KeyError:
        known = ", ".join(sorted(table["taskClasses"]))
        raise InvalidField(
            "task_class", f"unknown task class {task_class!r} (known: {known})", reason="UNKNOWN_TASK_CLASS"
        ) from None
