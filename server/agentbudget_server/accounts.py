"""A unit of work on budgets: lock, roll the period, change balances, emit events, in one transaction.

Every change of money goes through :meth:`Unit.post`, which writes the ledger row, updates the
materialised balance of its period and derives the phase and threshold events from the pure
rules, so the balances are the ledger's sums by construction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from . import db, periods, rules
from .errors import BudgetNotFound
from .model import BudgetRow, Details, PeriodRow
from .money import checked_sum
from .rules import Balance, EventType
from .sql import QUERIES as Q


@dataclass
class Account:
    """A locked budget and its current period, kept in step with what this unit wrote."""

    budget: BudgetRow
    period: PeriodRow


@dataclass
class Posting:
    """One ledger row to write."""

    entry_type: str
    spent: int = 0
    held: int = 0
    limit: int = 0
    reservation_id: str | None = None
    request_id: str | None = None
    overrun: bool = False
    late: bool = False
    details: Details = field(default_factory=Details)
    counterparty: str | None = None
    reason: str | None = None
    catalog_version: str | None = None


class Unit:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.now: datetime | None = None
        self._events: list[tuple[str, int, str, str]] = []

    # -- locking -------------------------------------------------------------------------------

    async def lock(self, name: str, *, include_deleted: bool = False) -> Account:
        row = await self.conn.fetchrow(Q["lock_budget"], name, include_deleted)
        if row is None:
            raise BudgetNotFound(name)
        return await self._account(row)

    async def try_lock(self, name: str) -> Account | None:
        """For the sweeper: skip a budget another transaction is working on."""
        row = await self.conn.fetchrow(Q["lock_budget_skip_locked"], name)
        return None if row is None else await self._account(row)

    async def lock_optional(self, name: str) -> Account | None:
        row = await self.conn.fetchrow(Q["lock_budget"], name, True)
        return None if row is None else await self._account(row)

    async def _account(self, row: asyncpg.Record) -> Account:
        self.now = row["now"]
        budget = BudgetRow.from_record(row)
        period = await self.period_of(budget, budget.period_start)
        account = Account(budget, period)
        if budget.deleted_at is None and self.now >= budget.period_end:
            await self.roll(account, *periods.bounds(budget.spec.period, budget.spec.time_zone, self.now))
        return account

    async def period_of(self, budget: BudgetRow, start: datetime) -> PeriodRow:
        prow = await self.conn.fetchrow(Q["get_period"], budget.id, start)
        assert prow is not None, "every budget has its current period row"
        return PeriodRow.from_record(prow)

    # -- periods -------------------------------------------------------------------------------

    async def open_period(self, budget: BudgetRow, start: datetime, end: datetime) -> PeriodRow:
        """A new period starts with nothing spent and the spec limit (as a ledger row)."""
        spec = budget.spec
        balance = Balance(spec.limit, 0, 0)
        assessed = rules.assess(rules.Phase.ACTIVE, frozenset(), balance, spec.paused, spec.thresholds)
        await self.conn.execute(
            Q["insert_period"],
            budget.id,
            start,
            end,
            spec.limit,
            list(assessed.crossed),
            assessed.phase.value,
        )
        await self._insert_entry(budget, start, Posting("PERIOD_OPENED", limit=spec.limit))
        await self.conn.execute(Q["move_budget_period"], budget.id, start, end)
        budget.period_start, budget.period_end = start, end
        return PeriodRow(start, end, balance, assessed.crossed, assessed.phase)

    async def roll(self, account: Account, start: datetime, end: datetime) -> None:
        previous = account.period
        account.period = await self.open_period(account.budget, start, end)
        self.emit(account, EventType.PERIOD_ROLLED, previous_period_start=previous.start.isoformat())
        if account.period.phase != previous.phase and previous.phase in (
            rules.Phase.EXHAUSTED,
            rules.Phase.PAUSED,
        ):
            if account.period.phase not in (rules.Phase.EXHAUSTED, rules.Phase.PAUSED):
                self.emit(account, EventType.BUDGET_RESUMED)

    # -- money ---------------------------------------------------------------------------------

    async def post(self, account: Account, posting: Posting, period: PeriodRow | None = None) -> int:
        """Write one ledger row and move its period's balance by the same deltas.

        ``period`` is an earlier period (a late commit of an old hold); events are emitted only
        for the current one, apart from overruns.
        """
        target = period or account.period
        entry_id = await self._insert_entry(account.budget, target.start, posting)
        await self.rebalance(account, target, posting.spent, posting.held, posting.limit)
        return entry_id

    async def rebalance(self, account: Account, target: PeriodRow, spent: int, held: int, limit: int) -> None:
        old = target.balance
        new = Balance(checked_sum(old.limit, limit), checked_sum(old.spent, spent), old.held + held)
        await self.reassess(account, target, new)

    async def reassess(self, account: Account, target: PeriodRow, new: Balance) -> None:
        """Store a period's new balance with the phase and crossed thresholds the rules give."""
        spec = account.budget.spec
        assessed = rules.assess(target.phase, target.crossed, new, spec.paused, spec.thresholds)
        await self.conn.execute(
            Q["update_period"],
            account.budget.id,
            target.start,
            new.limit,
            new.spent,
            new.held,
            sorted(assessed.crossed),
            assessed.phase.value,
        )
        target.balance, target.crossed, target.phase = new, assessed.crossed, assessed.phase
        if target is account.period:
            for event_type, ppm in assessed.events:
                extra: dict[str, Any] = {} if ppm is None else {"threshold_ppm": ppm}
                self.emit(account, event_type, **extra)

    async def expire_due(self, account: Account) -> int:
        """End every hold of this budget whose TTL has run out; returns how many."""
        assert self.now is not None
        rows = await self.conn.fetch(Q["expire_due_holds"], account.budget.id, self.now)
        by_period: dict[datetime, PeriodRow] = {}
        for row in rows:
            start = row["period_start"]
            if start == account.period.start:
                target = account.period
            else:
                target = by_period.get(start) or await self.period_of(account.budget, start)
                by_period[start] = target
            await self.post(
                account,
                Posting("EXPIRY", held=-row["amount_nanos"], reservation_id=row["reservation_id"]),
                period=None if target is account.period else target,
            )
        return len(rows)

    async def _insert_entry(self, budget: BudgetRow, period_start: datetime, p: Posting) -> int:
        d = p.details
        entry_id: int = await self.conn.fetchval(
            Q["insert_entry"],
            budget.id,
            period_start,
            p.entry_type,
            self.now,
            p.spent,
            p.held,
            p.limit,
            p.reservation_id,
            p.request_id,
            p.overrun,
            p.late,
            d.kind,
            d.model,
            d.input_tokens,
            d.output_tokens,
            d.cache_read_tokens,
            d.cache_write_tokens,
            d.sandbox_nanos,
            d.api_name,
            d.api_calls,
            d.task_id,
            d.task_type,
            json.dumps(d.labels, sort_keys=True),
            p.catalog_version,
            p.counterparty,
            p.reason,
            d.reasoning_tokens,
            d.sandbox_class,
            d.provider,
        )
        return entry_id

    # -- events --------------------------------------------------------------------------------

    def emit(self, account: Account, event_type: EventType, **extra: Any) -> None:
        b = account.period.balance
        payload = {
            "phase": account.period.phase.value,
            "limit": b.limit,
            "spent": b.spent,
            "held": b.held,
            "period_start": account.period.start.isoformat(),
            **extra,
        }
        self._events.append((event_type.value, account.budget.id, account.budget.name, json.dumps(payload)))

    async def flush(self) -> None:
        if not self._events:
            return
        types, ids, names, payloads = (list(col) for col in zip(*self._events, strict=True))
        await self.conn.execute(Q["insert_events"], types, ids, names, payloads, self.now)
        self._events.clear()


@asynccontextmanager
async def unit(pool: asyncpg.Pool) -> AsyncIterator[Unit]:
    """One transaction; events are written as its last statement, just before the commit."""
    async with db.connection(pool) as conn, conn.transaction():
        u = Unit(conn)
        yield u
        await u.flush()
