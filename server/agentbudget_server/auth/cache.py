"""A small in-process cache: bounded, an expiry per entry, and one load per key at a time.

Used for token reviews (a burst of calls with a new token asks the API server once) and for the
agent principals of budgets (one read per budget per few seconds, whatever the call rate).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()  # key -> (expires at, value)
        self._loading: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> tuple[bool, V | None]:
        """(found, value) of a live entry."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self.clock():
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        """Keep ``value`` for ``ttl`` seconds (not at all if ``ttl <= 0``), evicting the least recently used."""
        if ttl <= 0 or self.size <= 0:
            self._entries.pop(key, None)
            return
        self._entries[key] = (self.clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        """The cached value, or ``load()``'s (value, ttl); callers missing the same key meanwhile
        wait for the same load. A load that fails is not cached: every waiter gets its error."""
        found, value = self.get(key)
        if found:
            return value  # type: ignore[return-value]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, load))
            self._loading[key] = task
            task.add_done_callback(_retrieve)
        # A caller that goes away (its RPC cancelled) must not cancel the load the others wait for.
        return await asyncio.shield(task)

    async def _load(self, key: K, load: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        try:
            value, ttl = await load()
            self.put(key, value, ttl)
            return value
        finally:
            self._loading.pop(key, None)


def _retrieve(task: asyncio.Task[V]) -> None:
    if not task.cancelled():
        task.exception()  # read, so that a failure every waiter gave up on is not reported as lost
