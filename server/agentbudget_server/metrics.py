"""Prometheus metrics of the authority: their names, the RPC interceptor and the /metrics endpoint.

What the ledger did (holds granted, committed, released, expired; committed cost) and the events
emitted are counted by ``tally`` from the ledger and the event outbox themselves, at scrape time,
behind positions shared by every replica: each row is counted by exactly one replica, so summing
a counter over the replicas gives the ledger's total, and replayed (idempotent) calls count once.
RPC counts and latencies come from the interceptor, per replica. Labels stay bounded: services,
methods, codes, budgets (existing ones), models (capped), kinds, event types; never a reservation,
request or task id.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .layers import Unary

if TYPE_CHECKING:
    from .groupcommit import GroupCommit

# From a cached replay (~100 µs) to a call stuck behind a lock or a slow database (seconds).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OTHER = "_other"


class CappedLabel:
    """At most ``limit`` distinct values of a label per process; later ones are reported as ``_other``.

    A caller may name any model when it gives the amount itself; this keeps such names from
    growing the number of series without bound.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(value)
        return value


class Metrics:
    """One registry per authority (tests run several in one process)."""

    def __init__(self) -> None:
        # No *_created series: they double the count of series, and no panel or alert uses them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpc_handled = Counter(
            "agentbudget_rpc_handled",
            "RPCs completed, by service, method and status code (this replica).",
            ["service", "method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "agentbudget_rpc_duration_seconds",
            "Time to answer a unary RPC, by service, method and status code (this replica).",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.holds_granted = Counter(
            "agentbudget_holds_granted", "Holds granted (HOLD ledger rows).", ["budget"], registry=r
        )
        self.holds_denied = Counter(
            "agentbudget_holds_denied",
            "Reserve calls denied: BUDGET_EXCEEDED (the RESERVATION_DENIED events) or BUDGET_PAUSED.",
            ["budget", "reason"],
            registry=r,
        )
        self.holds_committed = Counter(
            "agentbudget_holds_committed", "Holds committed in time (COMMIT ledger rows).", ["budget"], registry=r
        )
        self.holds_released = Counter(
            "agentbudget_holds_released", "Holds released (RELEASE ledger rows).", ["budget"], registry=r
        )
        self.holds_expired = Counter(
            "agentbudget_holds_expired",
            "Holds that ran out their TTL (EXPIRY ledger rows; a late commit is an expiry and a charge).",
            ["budget"],
            registry=r,
        )
        self.committed_cost = Counter(
            "agentbudget_committed_cost",
            "Committed cost in currency units: commits of holds and direct charges (COMMIT and CHARGE rows).",
            ["budget", "currency", "model", "kind"],
            registry=r,
        )
        self.events = Counter("agentbudget_events", "Events emitted, by type.", ["type"], registry=r)
        self.webhook_attempts = Counter(
            "agentbudget_webhook_attempts",
            "HTTP attempts to post an alert, by webhook and result (ok, error).",
            ["webhook", "kind", "result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "agentbudget_webhook_deliveries",
            "Alerts whose delivery ended, by outcome: delivered, failed (retries exhausted), "
            "rejected (4xx), uncertain (no answer; not retried, to post at most once).",
            ["webhook", "kind", "outcome"],
            registry=r,
        )
        self.refresh_errors = Counter(
            "agentbudget_metrics_refresh_errors",
            "Scrapes whose read of the ledger, events or budgets failed (the values shown are the last ones read).",
            registry=r,
        )
        self.budget_label = CappedLabel(10_000)
        self.model_label = CappedLabel(500)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PoolCollector(Collector):
    """The asyncpg pool's connections, read at scrape time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        p = self.pool
        yield GaugeMetricFamily("agentbudget_db_pool_size", "Connections open in the pool.", value=p.get_size())
        yield GaugeMetricFamily("agentbudget_db_pool_idle", "Open connections not in use.", value=p.get_idle_size())
        yield GaugeMetricFamily("agentbudget_db_pool_max", "The pool's maximum size.", value=p.get_max_size())


class GroupCommitCollector(Collector):
    """How many hold-path calls went into how many transactions (their ratio: the batch size)."""

    def __init__(self, holds: GroupCommit) -> None:
        self.holds = holds

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "agentbudget_group_commit_transactions",
            "Batches of the hold path (Reserve, Commit, Release, RecordCost) in this process: one transaction"
            " each, two when the attempt without the lock wrote nothing.",
            value=self.holds.transactions,
        )
        yield CounterMetricFamily(
            "agentbudget_group_commit_calls",
            "Hold-path calls applied by those transactions (calls / transactions = the mean batch).",
            value=self.holds.calls,
        )
        unlocked = CounterMetricFamily(
            "agentbudget_group_commit_unlocked",
            "Batches tried without the budget's lock, by how that ended: written; moved (another process "
            "changed the budget meanwhile); needs_lock (events, keys, a new period): the last two were "
            "applied again under the lock.",
            labels=["outcome"],
        )
        for outcome, count in self.holds.unlocked.items():
            unlocked.add_metric([outcome.value], count)
        yield unlocked


def _code(context: Any, error: BaseException | None) -> str:
    code = context.code()
    if code is not None:
        return str(code.name)
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError | GeneratorExit) else "UNKNOWN"


class RpcMetrics:
    """Counts and times every RPC by method and final status code (a layer: see ``layers``)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        # The labelled series of each (service, method, code), looked up once: ``labels()`` takes a
        # lock and builds a key on every call, twice per RPC. Bounded: methods x status codes.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def unary(self, service: str, method: str, inner: Unary) -> Unary:
        return self._unary(inner, service, method)

    def stream(self, service: str, method: str, inner: Any) -> Any:
        # Streams last as long as their watchers want: counted, not timed. A stream handler
        # either yields its messages or writes them itself (health's Watch does).
        if inspect.isasyncgenfunction(inner):
            return self._stream(inner, service, method)
        return self._unary(inner, service, method, timed=False)

    def _done(self, service: str, method: str, code: str, request: Any, started: float | None) -> None:
        key = (service, method, code)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (self.m.rpc_handled.labels(*key), self.m.rpc_duration.labels(*key))
        series[0].inc()
        if started is not None:
            series[1].observe(time.perf_counter() - started)
        if method == "Reserve" and code == "FAILED_PRECONDITION":
            # A paused budget's denial rolls back and leaves no event; Reserve fails this way for nothing else.
            self.m.holds_denied.labels(self.m.budget_label(request.budget), "BUDGET_PAUSED").inc()

    def _unary(self, inner: Any, service: str, method: str, timed: bool = True) -> Callable[[Any, Any], Awaitable[Any]]:
        async def behavior(request: Any, context: Any) -> Any:
            started = time.perf_counter() if timed else None
            try:
                response = await inner(request, context)
            except BaseException as exc:
                self._done(service, method, _code(context, exc), request, started)
                raise
            self._done(service, method, _code(context, None), request, started)
            return response

        return behavior

    def _stream(self, inner: Any, service: str, method: str) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                self._done(service, method, _code(context, exc), request, None)
                raise
            self._done(service, method, _code(context, None), request, None)

        return behavior


class Exporter:
    """``GET /metrics`` on its own port; ``refresh`` (the tally) runs first, bounded in time."""

    def __init__(self, metrics: Metrics, refresh: Callable[[], Awaitable[None]]) -> None:
        self.metrics = metrics
        self.refresh = refresh
        self._runner: web.AppRunner | None = None

    async def start(self, address: str) -> int:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound port."""
        host, _, port = address.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or None, int(port))
        await site.start()
        bound: int = self._runner.addresses[0][1]
        return bound

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        # A scraper that hangs up must not cut a read short between moving a position and counting.
        await asyncio.shield(self.refresh())
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
