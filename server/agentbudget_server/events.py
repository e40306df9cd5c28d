"""The event stream: the outbox read after an id, woken by LISTEN/NOTIFY from any replica.

Notifications only wake readers; the table is the truth, read by id, so a missed or late
notification costs at most one poll interval and never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from . import commands as c
from . import db
from .model import Event
from .sql import QUERIES as Q

log = logging.getLogger(__name__)
CHANNEL = "agentbudget_events"
BATCH = 500


class EventHub:
    def __init__(self, pool: asyncpg.Pool, dsn: str, poll_seconds: float) -> None:
        self.pool = pool
        self.dsn = dsn
        self.poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    def _wake(self, *_: object) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="event-listener")

    async def _listen(self) -> None:
        while not self._closed.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn)
                await conn.add_listener(CHANNEL, self._wake)
                self._wake()  # anything committed while we were not listening
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                closed = asyncio.create_task(self._closed.wait())
                lost_wait = asyncio.create_task(lost.wait())
                await asyncio.wait({closed, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                lost_wait.cancel()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event listener: %s; retrying", exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self.poll_seconds)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def close(self) -> None:
        self._closed.set()
        self._wake()
        if self._task is not None:
            await self._task

    async def stream(self, flt: c.WatchFilter) -> AsyncIterator[Event]:
        """Events after ``flt.after_id`` matching the filter, forever (until the hub closes)."""
        cursor = flt.after_id
        while not self._closed.is_set():
            changed = self._changed
            async with db.connection(self.pool) as conn:
                rows = await conn.fetch(Q["list_events"], cursor, list(flt.budgets), list(flt.types), BATCH)
            for row in rows:
                event = Event.from_record(row)
                cursor = event.id
                yield event
            if len(rows) == BATCH:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), self.poll_seconds)
