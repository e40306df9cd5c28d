"""The ledger and the event outbox counted into metrics exactly once across replicas, at scrape time.

Why read the ledger rather than count calls: a replayed Commit answers the same bytes and must
not count twice, an expiry happens in whichever replica's sweeper (or Reserve, or late Commit)
gets there first, and the ledger is where those facts already are, exactly once each. So each
scrape claims a position per source in ``read_cursors`` (``FOR UPDATE SKIP LOCKED``: a replica
that finds it claimed skips the round), counts the rows after it into this replica's counters and
moves it on. Every row lands in exactly one replica's counters: sums over replicas are totals.

Event ids increase in commit order without gaps, so their position is plain. Ledger ids come
from a sequence: a transaction may commit row N after another committed N+1, and a rolled-back
one leaves N missing for good. The position therefore stops before a gap until the gap is known
final: when every transaction that was running as the ids after it were seen has ended (the
snapshot's xmin has passed the xmax recorded then), a row still missing never comes — or, should
a long transaction elsewhere hold xmin back, once the gap has waited ``GAP_WAIT`` seconds.

Budget gauges (limit, spent, held, utilization, thresholds, phase) are read from the current
periods on the same scrape: each replica reports the same values (take ``max``, not ``sum``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import db
from .metrics import Metrics
from .money import NANOS_PER_UNIT
from .rules import PPM, Balance, EventType, Phase
from .sql import QUERIES as Q

log = logging.getLogger(__name__)
LEDGER = "metrics:ledger"
EVENTS = "metrics:events"
BATCH = 5000
ROUNDS = 20  # per scrape and source; a backlog beyond that is counted on the next scrapes
TIMEOUT = 5.0  # seconds a scrape may spend reading; the exposition then shows what was read
# xmin is the whole cluster's: any long writing transaction, in any database, holds it back. A gap
# that has held the position this long is taken as final anyway (a ledger transaction that stays
# open that long after a later row committed would go uncounted, in the metrics only).
GAP_WAIT = 60.0


def advance(last_id: int, ids: Sequence[int], gaps_final_to: int) -> int:
    """The position after ``ids`` (ascending, all above ``last_id``): over every id that follows
    without a gap, and over a gap only if it lies at or below ``gaps_final_to``."""
    position = last_id
    for i in ids:
        if i != position + 1 and i - 1 > gaps_final_to:
            break
        position = i
    return position


@dataclass(frozen=True)
class BudgetGauge:
    name: str
    currency: str
    thresholds_ppm: tuple[int, ...]
    balance: Balance
    phase: str


class BudgetCollector(Collector):
    """The budgets' gauges from the last read, one series set per existing budget."""

    def __init__(self) -> None:
        self.budgets: list[BudgetGauge] = []

    def collect(self) -> Iterator[Metric]:
        cur = ["budget", "currency"]
        limit = GaugeMetricFamily("agentbudget_budget_limit", "Effective limit of the current period.", labels=cur)
        spent = GaugeMetricFamily("agentbudget_budget_spent", "Committed spend in the current period.", labels=cur)
        held = GaugeMetricFamily("agentbudget_budget_held", "Open holds in the current period.", labels=cur)
        remaining = GaugeMetricFamily(
            "agentbudget_budget_remaining", "What a new hold may still take (limit - spent - held).", labels=cur
        )
        used = GaugeMetricFamily(
            "agentbudget_budget_utilization_ratio", "Spent / effective limit of the current period.", labels=["budget"]
        )
        thresholds = GaugeMetricFamily(
            "agentbudget_budget_alert_threshold_ratio",
            "The budget's alert thresholds (1.0, exhaustion, is implicit).",
            labels=["budget", "threshold"],
        )
        phase = GaugeMetricFamily(
            "agentbudget_budget_phase", "1 for the budget's current phase, else 0.", labels=["budget", "phase"]
        )
        for b in self.budgets:
            units = float(NANOS_PER_UNIT)
            limit.add_metric([b.name, b.currency], b.balance.limit / units)
            spent.add_metric([b.name, b.currency], b.balance.spent / units)
            held.add_metric([b.name, b.currency], b.balance.held / units)
            remaining.add_metric([b.name, b.currency], b.balance.remaining / units)
            used.add_metric([b.name], b.balance.utilization_ppm() / PPM)
            for t in b.thresholds_ppm:
                thresholds.add_metric([b.name, f"{t / PPM:g}"], t / PPM)
            for p in Phase:
                phase.add_metric([b.name, p.value], 1.0 if p.value == b.phase else 0.0)
        yield from (limit, spent, held, remaining, used, thresholds, phase)


class Tally:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.budgets = BudgetCollector()
        metrics.register(self.budgets)
        self._lock = asyncio.Lock()  # concurrent scrapes take turns instead of racing for the positions
        self._stuck: tuple[int, float] | None = None  # (position held by a gap, since when: monotonic)

    async def start(self) -> None:
        """Before the first call, so that nothing after it goes uncounted."""
        async with db.connection(self.pool) as conn:
            await self._init(conn)

    async def _init(self, conn: Any) -> None:
        """Positions start at the ends of the ledger and the outbox if this database has none (yet, or any more)."""
        await conn.execute(Q["metrics_init_ledger_cursor"], LEDGER)
        await conn.execute(Q["metrics_init_events_cursor"], EVENTS)

    async def refresh(self) -> None:
        async with self._lock:
            try:
                await asyncio.wait_for(self._refresh(), TIMEOUT)
            except Exception as exc:  # a scrape still answers, with the values last read
                self.metrics.refresh_errors.inc()
                log.warning("metrics: reading the ledger failed: %s: %s", type(exc).__name__, exc)

    async def _refresh(self) -> None:
        async with db.connection(self.pool) as conn:
            await self._init(conn)
            for _ in range(ROUNDS):
                if not await self._ledger_round(conn):
                    break
            for _ in range(ROUNDS):
                if not await self._events_round(conn):
                    break
            rows = await conn.fetch(Q["metrics_budget_gauges"])
        self.budgets.budgets = [
            BudgetGauge(
                r["name"],
                r["currency"],
                tuple(r["thresholds_ppm"]),
                Balance(r["limit_nanos"], r["spent_nanos"], r["held_nanos"]),
                r["phase"],
            )
            for r in rows
        ]

    async def _ledger_round(self, conn: Any) -> bool:
        """Count one batch of ledger rows; True if there may be more right away."""
        async with conn.transaction():
            cur = await conn.fetchrow(Q["metrics_claim_cursor"], LEDGER)
            if cur is None:  # another replica is counting
                return False
            seen = await conn.fetchrow(Q["metrics_ledger_ids_after"], cur["last_id"], BATCH)
            ids: list[int] = seen["ids"]
            gaps_final_to = cur["seen_id"] if seen["xmin"] >= cur["horizon_xid"] else cur["last_id"]
            position = self._past_old_gap(cur["last_id"], ids, advance(cur["last_id"], ids, gaps_final_to))
            rows = []
            if position > cur["last_id"]:
                rows = await conn.fetch(Q["metrics_tally_ledger"], cur["last_id"], position)
            seen_id = max(cur["seen_id"], ids[-1] if ids else 0)
            await conn.execute(Q["metrics_move_cursor"], LEDGER, position, seen_id, seen["xmax"])
        self._count_ledger(rows)  # only once the move is committed
        return len(ids) == BATCH and position > cur["last_id"]

    def _past_old_gap(self, last_id: int, ids: Sequence[int], position: int) -> int:
        """``position``, or past the gap after it if that gap has held it for ``GAP_WAIT`` seconds."""
        after = next((i for i in ids if i > position), None)
        if after is None:  # not held by a gap
            self._stuck = None
            return position
        now = time.monotonic()
        if self._stuck is None or self._stuck[0] != position:
            self._stuck = (position, now)
            return position
        if now - self._stuck[1] < GAP_WAIT:
            return position
        log.warning("metrics: ledger ids %d..%d taken as rolled back after %.0fs", position + 1, after - 1, GAP_WAIT)
        self._stuck = None
        return advance(last_id, ids, after - 1)

    def _count_ledger(self, rows: list[asyncpg.Record]) -> None:
        m = self.metrics
        for r in rows:
            budget, n, entry = m.budget_label(r["budget"]), r["entries"], r["entry_type"]
            if entry == "HOLD":
                m.holds_granted.labels(budget).inc(n)
            elif entry == "RELEASE":
                m.holds_released.labels(budget).inc(n)
            elif entry == "EXPIRY":
                m.holds_expired.labels(budget).inc(n)
            else:  # COMMIT or CHARGE
                if entry == "COMMIT":
                    m.holds_committed.labels(budget).inc(n)
                cost = max(0, int(r["spent_nanos"])) / NANOS_PER_UNIT
                labels = (budget, r["currency"], m.model_label(r["model"] or "none"), r["kind"] or "UNSPECIFIED")
                m.committed_cost.labels(*labels).inc(cost)

    async def _events_round(self, conn: Any) -> bool:
        async with conn.transaction():
            cur = await conn.fetchrow(Q["metrics_claim_cursor"], EVENTS)
            if cur is None:
                return False
            rows = await conn.fetch(Q["metrics_tally_events"], cur["last_id"], BATCH)
            if not rows:
                return False
            position = max(r["last_id"] for r in rows)
            await conn.execute(Q["metrics_move_cursor"], EVENTS, position, 0, 0)
        m = self.metrics
        for r in rows:
            m.events.labels(r["event_type"]).inc(r["events"])
            if r["event_type"] == EventType.RESERVATION_DENIED:
                m.holds_denied.labels(m.budget_label(r["budget_name"]), "BUDGET_EXCEEDED").inc(r["events"])
        return sum(int(r["events"]) for r in rows) == BATCH
