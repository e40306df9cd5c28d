"""Alert webhooks: threshold, exhausted and denied events posted to Slack-compatible or JSON endpoints.

Each webhook is delivered by one replica at a time — the holder of a session advisory lock on the
webhook's own connection, so a replica that dies hands over to another — in event order, from
the webhook's position in ``read_cursors``. The position moves past an event *before* its first
attempt: an event is posted at most once, across restarts, crashes and replicas. Attempts that
certainly did not deliver (an HTTP error status, no connection) are retried with exponential
backoff; an attempt with no answer is not, since the receiver may have taken it. At shutdown a
claimed event that cannot have arrived is handed back, so the next deliverer sends it.

Delivery reads the outbox on its own connection, in bounded batches, in its own task: it never
takes a pooled connection or touches the request path, so a hanging receiver delays only its own
alerts, never a Reserve.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg

from .events import CHANNEL
from .metrics import Metrics
from .model import Event
from .money import format_nanos
from .rules import PPM, EventType
from .settings import Webhook
from .sql import QUERIES as Q

log = logging.getLogger(__name__)
ALERTS = (EventType.THRESHOLD_CROSSED, EventType.BUDGET_EXHAUSTED, EventType.RESERVATION_DENIED)
BATCH = 100
LOCK_CLASS = 0x61627768  # pg_advisory_lock(class, hashtext(position name)): "abwh"
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 10.0
# Statuses that say the receiver did not take the request and may take it later.
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class Backoff:
    first: float = 0.5
    factor: float = 2.0
    cap: float = 60.0
    attempts: int = 8

    def delays(self) -> Iterator[float]:
        """The waits before attempts 2, 3, ...: exponential, capped, with jitter."""
        delay = self.first
        for _ in range(self.attempts - 1):
            yield delay * random.uniform(0.8, 1.2)
            delay = min(self.cap, delay * self.factor)


BACKOFF = Backoff()


class LostPosition(Exception):
    """The position moved under us: another deliverer holds it now."""


def _amount(nanos: int, currency: str) -> str:
    return f"{format_nanos(nanos)} {currency}"


def alert_text(e: Event) -> str:
    p, cur = e.payload, e.currency
    remaining = max(0, p["limit"] - p["spent"] - p["held"])
    spent = f"{_amount(p['spent'], cur)} of {_amount(p['limit'], cur)} spent"
    if e.event_type == EventType.THRESHOLD_CROSSED:
        return f"AgentBudget: {e.budget} crossed {p.get('threshold_ppm', 0) / PPM:.0%} of its budget: {spent}."
    if e.event_type == EventType.BUDGET_EXHAUSTED:
        return f"AgentBudget: {e.budget} is exhausted: {spent}; new holds are denied."
    hold = f" of {_amount(p['amount'], cur)}" if "amount" in p else ""
    rid = f" (reservation {p['reservation_id']})" if p.get("reservation_id") else ""
    return f"AgentBudget: {e.budget} was denied a hold{hold}{rid}: {_amount(remaining, cur)} remaining, {spent}."


def alert_json(e: Event) -> dict[str, Any]:
    """The event with exact decimal strings for money (never a float)."""
    p, cur = e.payload, e.currency
    out: dict[str, Any] = {
        "id": e.id,
        "type": e.event_type,
        "budget": e.budget,
        "time": e.created_at.isoformat(),
        "phase": p["phase"],
        "currency": cur,
        "limit": format_nanos(p["limit"]),
        "spent": format_nanos(p["spent"]),
        "held": format_nanos(p["held"]),
        "remaining": format_nanos(max(0, p["limit"] - p["spent"] - p["held"])),
        "period_start": p["period_start"],
        "text": alert_text(e),
    }
    if "threshold_ppm" in p:
        out["threshold"] = p["threshold_ppm"] / PPM
    if "amount" in p:
        out["amount"] = format_nanos(p["amount"])
    if p.get("reservation_id"):
        out["reservation_id"] = p["reservation_id"]
    return out


def body(kind: str, e: Event) -> bytes:
    payload = {"text": alert_text(e)} if kind == "slack" else alert_json(e)
    return json.dumps(payload).encode()


def position_name(target: Webhook) -> str:
    """Stable across restarts and replicas; a digest, since webhook URLs often carry a secret."""
    return "webhook:" + hashlib.sha256(f"{target.kind} {target.url}".encode()).hexdigest()[:16]


class Delivery:
    """One webhook: lead, read alerts after the position, post each at most once."""

    def __init__(self, target: Webhook, dsn: str, poll_seconds: float, metrics: Metrics) -> None:
        self.target = target
        self.dsn = dsn
        self.poll_seconds = poll_seconds
        self.metrics = metrics
        self.backoff = BACKOFF
        self.name = position_name(target)
        self.label = self.name.removeprefix("webhook:")[:8]

    async def run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=ANSWER_TIMEOUT),
                    headers={"User-Agent": "agentbudget-webhook"},
                ) as session:
                    await self._lead(conn, session)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, LostPosition) as exc:
                log.warning("webhook %s: %s: %s; retrying", self.label, type(exc).__name__, exc)
                await asyncio.sleep(self.poll_seconds)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _lead(self, conn: asyncpg.Connection, session: aiohttp.ClientSession) -> None:
        woken = asyncio.Event()
        await conn.add_listener(CHANNEL, lambda *_: woken.set())
        while not await conn.fetchval(Q["webhook_try_lock"], LOCK_CLASS, self.name):
            # Another replica delivers; its session ending frees the lock.
            woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), self.poll_seconds)
        await conn.execute(Q["webhook_init_cursor"], self.name)  # in case the row was deleted: start anew
        position: int = await conn.fetchval(Q["webhook_position"], self.name)
        while True:
            woken.clear()
            async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot for both
                rows = await conn.fetch(Q["webhook_alerts"], position, [t.value for t in ALERTS], BATCH)
                head: int = await conn.fetchval(Q["webhook_head"])
            for row in rows:
                event = Event.from_record(row)
                await self._deliver(conn, session, position, event)
                position = event.id
            if len(rows) == BATCH:
                continue
            if head > position:  # past the other events too, so the next read starts near the end
                await self._move(conn, position, head)
                position = head
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), self.poll_seconds)

    async def _move(self, conn: asyncpg.Connection, old: int, new: int) -> None:
        if await conn.execute(Q["webhook_move"], self.name, old, new) != "UPDATE 1":
            raise LostPosition(f"position {self.name} is no longer at {old}")

    async def _deliver(self, conn: asyncpg.Connection, session: aiohttp.ClientSession, before: int, e: Event) -> None:
        await self._move(conn, before, e.id)  # claimed: from here on nobody posts it again
        data = body(self.target.kind, e)
        headers = {"Content-Type": "application/json", "Idempotency-Key": f"agentbudget-event-{e.id}"}
        delays = self.backoff.delays()
        answered = True  # nothing can have reached the receiver yet
        try:
            while True:
                answered = False
                try:
                    async with session.post(self.target.url, data=data, headers=headers) as resp:
                        status = resp.status
                    answered = True
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                    answered = True  # no connection: nothing was sent
                    status, reason = 0, f"{type(exc).__name__}: {exc}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._attempted("error")
                    self._ended("uncertain")
                    log.warning("webhook %s: event %d: no answer (%s); not retried", self.label, e.id, exc)
                    return
                else:
                    reason = f"HTTP {status}"
                if 200 <= status < 300:
                    self._attempted("ok")
                    self._ended("delivered")
                    return
                self._attempted("error")
                if status and status not in RETRY_STATUSES:
                    self._ended("rejected")
                    log.warning("webhook %s: event %d: %s; not retried", self.label, e.id, reason)
                    return
                delay = next(delays, None)
                if delay is None:
                    self._ended("failed")
                    log.warning("webhook %s: event %d: %s; giving up", self.label, e.id, reason)
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if answered:  # shutting down between attempts: hand the event back
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._move(conn, e.id, before))
            raise

    def _attempted(self, result: str) -> None:
        self.metrics.webhook_attempts.labels(self.label, self.target.kind, result).inc()

    def _ended(self, outcome: str) -> None:
        self.metrics.webhook_deliveries.labels(self.label, self.target.kind, outcome).inc()


class Webhooks:
    """Every configured webhook's delivery, each in its own task."""

    def __init__(self, targets: tuple[Webhook, ...], dsn: str, poll_seconds: float, metrics: Metrics) -> None:
        self.deliveries = [Delivery(t, dsn, poll_seconds, metrics) for t in dict.fromkeys(targets)]
        self.dsn = dsn
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Positions first (a new webhook starts at the newest event), so no alert after start is missed."""
        if not self.deliveries:
            return
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
        try:
            for d in self.deliveries:
                await conn.execute(Q["webhook_init_cursor"], d.name)
        finally:
            await conn.close()
        self._tasks = [asyncio.create_task(d.run(), name=f"webhook-{d.label}") for d in self.deliveries]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
