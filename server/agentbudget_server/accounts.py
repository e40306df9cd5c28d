"""A unit of work on budgets: lock, roll the period, change balances, emit events, in one transaction.

Every change of money goes through :meth:`Unit.post`, which queues the ledger row, moves the
balance of its period and derives the phase and threshold events from the pure rules, so the
balances are the ledger's sums by construction.

Writes are buffered in memory and written by :meth:`Unit.write` in one statement of multi-row
parts, just before the commit; that is what lets group commit apply many calls for one budget in
one transaction at the cost of one. Because the budget row is locked for the whole unit, what this unit read and
changed in memory is the truth. An *unlocked* unit (:meth:`Unit.read`) reads one budget without
its lock and writes only if the budget's version is still the one it read, or not at all (then
the caller applies the calls again under the lock); it reads nothing after its first read and
writes no events or idempotency keys (:class:`NeedsLock`). A unit can also take back what one call changed
(:meth:`Unit.mark` / :meth:`Unit.undo`), so that one call's error does not disturb the others
applied in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from . import db, periods, principal, rules
from .errors import BudgetNotFound
from .model import BudgetRow, Details, PeriodRow, ReservationView
from .money import checked_sum
from .rules import Balance, EventType
from .sql import QUERIES as Q


class NeedsLock(Exception):
    """An unlocked unit came to something only a locked one may do: read more, roll the period,
    write events or idempotency keys. Nothing was written; apply the calls again under the lock."""


@dataclass
class Account:
    """A locked budget and its current period, kept in step with what this unit did."""

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


@dataclass
class EntryRef:
    """A queued ledger row; its id is known once the unit has written it."""

    id: int | None = None


@dataclass(frozen=True)
class Hold:
    """A reservation row as this unit sees it (changes replace it)."""

    budget_id: int
    reservation_id: str
    period_start: datetime
    amount_nanos: int
    state: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    committed_nanos: int | None
    overrun: bool
    late: bool
    details: str
    reserve_fingerprint: bytes
    reserve_response: bytes
    end_fingerprint: bytes | None = None
    end_response: bytes | None = None
    new: bool = False  # granted in this unit: inserted, not updated

    @classmethod
    def from_record(cls, row: asyncpg.Record, budget_id: int) -> Hold:
        details = row["details"]
        return cls(
            budget_id=budget_id,
            reservation_id=row["reservation_id"],
            period_start=row["period_start"],
            amount_nanos=row["amount_nanos"],
            state=row["state"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            ended_at=row["ended_at"],
            committed_nanos=row["committed_nanos"],
            overrun=row["overrun"],
            late=row["late"],
            details=details if isinstance(details, str) else json.dumps(details, sort_keys=True),
            reserve_fingerprint=bytes(row["reserve_fingerprint"]),
            reserve_response=bytes(row["reserve_response"]),
            end_fingerprint=None if row["end_fingerprint"] is None else bytes(row["end_fingerprint"]),
            end_response=None if row["end_response"] is None else bytes(row["end_response"]),
        )

    def view(self, budget: str, currency: str, details: Details | None = None) -> ReservationView:
        """``details``: this hold's own, when the caller has them parsed already."""
        return ReservationView(
            budget=budget,
            currency=currency,
            reservation_id=self.reservation_id,
            amount=self.amount_nanos,
            state=self.state,
            created_at=self.created_at,
            expires_at=self.expires_at,
            ended_at=self.ended_at,
            committed=self.committed_nanos,
            overrun=self.overrun,
            late=self.late,
            period_start=self.period_start,
            details=Details.from_json(self.details) if details is None else details,
        )


@dataclass
class Reply:
    """What one call gets: its response bytes (set at the latest when the unit is written), or an
    error whose changes are kept (a denial keeps its event and the expiries it caused)."""

    data: bytes | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class StoredKey:
    fingerprint: bytes
    reply: Reply


@dataclass(frozen=True)
class Mark:
    entries: int
    events: int
    undo: int
    written: int


_MISSING: Any = object()


class Unit:
    def __init__(self, conn: asyncpg.Connection, principal: str | None = None) -> None:
        self._conn = conn
        self._version: int | None = None  # an unlocked unit's: the budget version it read
        self.now: datetime | None = None
        # Who the changes are for (recorded on each ledger row and event); a batch sets it per call.
        self.principal = principal
        self._events: list[tuple[str, int, str, str, str | None]] = []
        self._entries: list[tuple[int, datetime, Posting, EntryRef, str | None]] = []
        self._periods: dict[tuple[int, datetime], PeriodRow] = {}
        self._dirty_periods: dict[tuple[int, datetime], PeriodRow] = {}
        self._holds: dict[tuple[int, str], Hold | None] = {}
        self._dirty_holds: dict[tuple[int, str], Hold] = {}
        self._keys: dict[tuple[str, str], StoredKey | None] = {}
        self._new_keys: dict[tuple[str, str], StoredKey] = {}
        self._on_written: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []

    @property
    def conn(self) -> asyncpg.Connection:
        """The connection, for reads and writes under the lock; an unlocked unit has read all it may."""
        if self._version is not None:
            raise NeedsLock("this needs the budget's lock")
        return self._conn

    # -- locking -------------------------------------------------------------------------------

    async def lock(self, name: str, *, include_deleted: bool = False, holds: Iterable[str] = ()) -> Account:
        """Lock a budget and read its period and the reservations ``holds`` names, in one round trip."""
        wanted = sorted(set(holds))
        rows = await self.conn.fetch(Q["lock_budget_and_read"], name, include_deleted, wanted)
        return await self._opened(self._take(name, wanted, rows))

    async def read(self, name: str, *, holds: Iterable[str] = ()) -> Account:
        """Read a budget as :meth:`lock` does, without the lock: this unit then writes only if the
        budget's version has not moved (see :meth:`write`), and may read nothing more."""
        wanted = sorted(set(holds))
        account = self._take(name, wanted, await self.conn.fetch(Q["read_budget_and_holds"], name, wanted))
        self._version = account.budget.version
        return await self._opened(account)

    def _take(self, name: str, wanted: list[str], rows: list[asyncpg.Record]) -> Account:
        """The account from the rows of lock_budget_and_read or read_budget_and_holds."""
        first = next((r for r in rows if r["budget"] is not None), None)
        if first is None:
            raise BudgetNotFound(name)
        self.now = first["now"]
        budget = BudgetRow.from_record(first["budget"])
        assert first["period"] is not None, "every budget has its current period row"
        for rid in wanted:
            self._holds[(budget.id, rid)] = None
        for r in rows:
            if (hold := r["hold"]) is not None:
                self._holds[(budget.id, hold["reservation_id"])] = Hold.from_record(hold, budget.id)
        period = self._periods[(budget.id, budget.period_start)] = PeriodRow.from_record(first["period"])
        return Account(budget, period)

    async def try_lock(self, name: str) -> Account | None:
        """For the sweeper: skip a budget another transaction is working on."""
        row = await self.conn.fetchrow(Q["lock_budget_skip_locked"], name)
        return None if row is None else await self._account(row)

    async def lock_optional(self, name: str) -> Account | None:
        try:
            return await self.lock(name, include_deleted=True)
        except BudgetNotFound:
            return None

    async def _account(self, row: asyncpg.Record) -> Account:
        self.now = row["now"]
        budget = BudgetRow.from_record(row)
        return await self._opened(Account(budget, await self.period_of(budget, budget.period_start)))

    async def _opened(self, account: Account) -> Account:
        """The account in its current period: a new one opened if the clock has passed the last."""
        budget = account.budget
        if budget.deleted_at is None and self.now is not None and self.now >= budget.period_end:
            await self.roll(account, *periods.bounds(budget.spec.period, budget.spec.time_zone, self.now))
        return account

    async def period_of(self, budget: BudgetRow, start: datetime) -> PeriodRow:
        """A period of a locked budget; read once per unit, then kept in step in memory."""
        key = (budget.id, start)
        known = self._periods.get(key)
        if known is not None:
            return known
        prow = await self.conn.fetchrow(Q["get_period"], budget.id, start)
        assert prow is not None, "every budget has its current period row"
        period = self._periods[key] = PeriodRow.from_record(prow)
        return period

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
        self._queue_entry(budget.id, start, Posting("PERIOD_OPENED", limit=spec.limit))
        await self.conn.execute(Q["move_budget_period"], budget.id, start, end)
        budget.period_start, budget.period_end = start, end
        period = self._periods[(budget.id, start)] = PeriodRow(start, end, balance, assessed.crossed, assessed.phase)
        return period

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

    def post(self, account: Account, posting: Posting, period: PeriodRow | None = None) -> EntryRef:
        """Queue one ledger row and move its period's balance by the same deltas.

        ``period`` is an earlier period (a late commit of an old hold); events are emitted only
        for the current one, apart from overruns.
        """
        target = period or account.period
        ref = self._queue_entry(account.budget.id, target.start, posting)
        self.rebalance(account, target, posting.spent, posting.held, posting.limit)
        return ref

    def rebalance(self, account: Account, target: PeriodRow, spent: int, held: int, limit: int) -> None:
        old = target.balance
        new = Balance(checked_sum(old.limit, limit), checked_sum(old.spent, spent), old.held + held)
        self.reassess(account, target, new)

    def reassess(self, account: Account, target: PeriodRow, new: Balance) -> None:
        """Give a period its new balance with the phase and crossed thresholds the rules give."""
        spec = account.budget.spec
        assessed = rules.assess(target.phase, target.crossed, new, spec.paused, spec.thresholds)
        key = (account.budget.id, target.start)
        before = (target.balance, target.crossed, target.phase)
        was_dirty = key in self._dirty_periods

        def undo() -> None:
            target.balance, target.crossed, target.phase = before
            if not was_dirty:
                self._dirty_periods.pop(key, None)

        self._undo.append(undo)
        target.balance, target.crossed, target.phase = new, assessed.crossed, assessed.phase
        self._dirty_periods[key] = target
        if target is account.period:
            for event_type, ppm in assessed.events:
                extra: dict[str, Any] = {} if ppm is None else {"threshold_ppm": ppm}
                self.emit(account, event_type, **extra)

    # -- holds ---------------------------------------------------------------------------------

    async def load_holds(self, account: Account, reservation_ids: Iterable[str]) -> None:
        """Read the named reservations in one query (those this unit does not know yet)."""
        bid = account.budget.id
        wanted = sorted({r for r in reservation_ids if (bid, r) not in self._holds})
        if not wanted:
            return
        for rid in wanted:
            self._holds[(bid, rid)] = None
        for row in await self.conn.fetch(Q["get_reservations"], bid, wanted):
            self._holds[(bid, row["reservation_id"])] = Hold.from_record(row, bid)

    async def hold(self, account: Account, reservation_id: str) -> Hold | None:
        await self.load_holds(account, (reservation_id,))
        return self._holds[(account.budget.id, reservation_id)]

    def put_hold(self, hold: Hold) -> None:
        key = (hold.budget_id, hold.reservation_id)
        before, dirty_before = self._holds.get(key, _MISSING), self._dirty_holds.get(key, _MISSING)

        def undo() -> None:
            _restore(self._holds, key, before)
            _restore(self._dirty_holds, key, dirty_before)

        self._undo.append(undo)
        self._holds[key] = self._dirty_holds[key] = hold

    async def expire_due(self, account: Account) -> int:
        """End every hold of this budget whose TTL has run out; returns how many."""
        assert self.now is not None
        bid = account.budget.id
        expired = 0
        for row in await self.conn.fetch(Q["due_holds"], bid, self.now):
            key = (bid, row["reservation_id"])
            if key not in self._holds:
                self._holds[key] = Hold.from_record(row, bid)
            hold = self._holds[key]
            if hold is None or hold.state != "ACTIVE":  # ended earlier in this unit
                continue
            target = await self.period_of(account.budget, hold.period_start)
            self.post(
                account,
                Posting("EXPIRY", held=-hold.amount_nanos, reservation_id=hold.reservation_id),
                period=None if target is account.period else target,
            )
            self.put_hold(replace(hold, state="EXPIRED", ended_at=self.now))
            expired += 1
        return expired

    # -- idempotency keys ----------------------------------------------------------------------

    async def load_keys(self, scope: str, request_ids: Iterable[str]) -> None:
        wanted = sorted({r for r in request_ids if (scope, r) not in self._keys})
        if not wanted:
            return
        for rid in wanted:
            self._keys[(scope, rid)] = None
        for row in await self.conn.fetch(Q["get_idempotency_keys"], scope, wanted):
            reply = Reply(bytes(row["response"]))
            self._keys[(scope, row["request_id"])] = StoredKey(bytes(row["fingerprint"]), reply)

    async def key(self, scope: str, request_id: str) -> StoredKey | None:
        await self.load_keys(scope, (request_id,))
        return self._keys[(scope, request_id)]

    def put_key(self, scope: str, request_id: str, stored: StoredKey) -> None:
        """Store a response for replays; its bytes may be filled in when the unit is written."""
        key = (scope, request_id)
        before = self._keys.get(key, _MISSING)

        def undo() -> None:
            _restore(self._keys, key, before)
            self._new_keys.pop(key, None)

        self._undo.append(undo)
        self._keys[key] = self._new_keys[key] = stored

    def when_written(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the ledger rows have their ids (to encode a response naming one)."""
        self._on_written.append(callback)

    # -- one call's changes, taken back ----------------------------------------------------------

    def mark(self) -> Mark:
        return Mark(len(self._entries), len(self._events), len(self._undo), len(self._on_written))

    def undo(self, mark: Mark) -> None:
        while len(self._undo) > mark.undo:
            self._undo.pop()()
        del self._entries[mark.entries :]
        del self._events[mark.events :]
        del self._on_written[mark.written :]

    # -- writing ---------------------------------------------------------------------------------

    def _queue_entry(self, budget_id: int, period_start: datetime, posting: Posting) -> EntryRef:
        ref = EntryRef()
        self._entries.append((budget_id, period_start, posting, ref, self.principal))
        return ref

    async def write(self) -> bool:
        """Everything queued, in one statement; then the idempotency keys, whose responses may name
        the ledger rows' ids; the events last. An unlocked unit writes only if its budget's version
        is still the one it read, and says whether it wrote (False: nothing was written)."""
        if self._version is not None and (self._events or self._new_keys):
            raise NeedsLock("events and idempotency keys are written under the lock")
        if self._entries or self._dirty_holds or self._dirty_periods:
            touched = {e[0] for e in self._entries} | {k[0] for k in (*self._dirty_holds, *self._dirty_periods)}
            if len(touched) > 2:  # write_unit moves the versions of two budgets at most
                raise RuntimeError(f"a unit of work changed {len(touched)} budgets; at most two are written at once")
            first, second = sorted(touched) + [None] * (2 - len(touched))
            records = await self._conn.fetch(
                Q["write_unit"],
                self.now,
                *_columns([_entry_row(b, start, p) for b, start, p, _, _ in self._entries], 28),
                *_columns([_granted_row(h) for h in self._dirty_holds.values() if h.new], 16),
                *_columns([_ended_row(h) for h in self._dirty_holds.values() if not h.new], 10),
                *_columns([_balance_row(key, p) for key, p in self._dirty_periods.items()], 7),
                [e[4] for e in self._entries],
                first,
                self._version,
                second,
            )
            if len(records) != len(self._entries):  # only unlocked: the version had moved
                assert self._version is not None and not records
                return False
            # Identity values are drawn row by row in the order of the arrays: sorted, they are in order.
            for entry, entry_id in zip(self._entries, sorted(r["id"] for r in records), strict=True):
                entry[3].id = entry_id
        for callback in self._on_written:
            callback()
        if self._new_keys:
            rows = [(s, r, k.fingerprint, k.reply.data) for (s, r), k in self._new_keys.items()]
            await self.conn.execute(Q["insert_idempotency_keys"], *_columns(rows, 4))
        if self._events:
            types, ids, names, payloads, principals = _columns(self._events, 5)
            await self.conn.execute(Q["insert_events"], types, ids, names, payloads, self.now, principals)
        for pending in (self._entries, self._on_written, self._undo, self._events):
            pending.clear()
        for changed in (self._dirty_holds, self._dirty_periods, self._new_keys):
            changed.clear()
        return True

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
        self._events.append(
            (event_type.value, account.budget.id, account.budget.name, json.dumps(payload), self.principal)
        )


def _restore(mapping: dict[Any, Any], key: Any, value: Any) -> None:
    if value is _MISSING:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _entry_row(budget_id: int, start: datetime, p: Posting) -> tuple[Any, ...]:
    d = p.details
    return (
        budget_id,
        start,
        p.entry_type,
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


def _granted_row(h: Hold) -> tuple[Any, ...]:
    return (
        h.budget_id,
        h.reservation_id,
        h.period_start,
        h.amount_nanos,
        h.state,
        h.created_at,
        h.expires_at,
        h.ended_at,
        h.committed_nanos,
        h.overrun,
        h.late,
        h.details,
        h.reserve_fingerprint,
        h.reserve_response,
        h.end_fingerprint,
        h.end_response,
    )


def _ended_row(h: Hold) -> tuple[Any, ...]:
    return (
        h.budget_id,
        h.reservation_id,
        h.state,
        h.ended_at,
        h.committed_nanos,
        h.overrun,
        h.late,
        h.details,
        h.end_fingerprint,
        h.end_response,
    )


def _balance_row(key: tuple[int, datetime], p: PeriodRow) -> tuple[Any, ...]:
    b = p.balance
    crossed = "{" + ",".join(str(c) for c in sorted(p.crossed)) + "}"
    return (*key, b.limit, b.spent, b.held, crossed, p.phase.value)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Row tuples as one list per column: the arrays a multi-row ``unnest`` statement takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


@asynccontextmanager
async def unit(pool: asyncpg.Pool) -> AsyncIterator[Unit]:
    """One transaction; everything queued is written just before the commit."""
    async with db.connection(pool) as conn, conn.transaction():
        u = Unit(conn, principal.current_name())
        yield u
        await u.write()
