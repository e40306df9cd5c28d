"""The agent principals of budgets, read from the database behind a short cache.

Authorization needs them for every call of an agent; a few seconds of cache turn that into one
read per budget per replica every few seconds. A change made through this replica is seen at
once (``forget``), through another within ``AGENTS_SECONDS``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

import asyncpg

from .. import db
from ..sql import QUERIES as Q
from .cache import TtlCache

AGENTS_SECONDS = 2.0
CACHE_SIZE = 10_000


class BudgetAgents:
    def __init__(self, pool: asyncpg.Pool, seconds: float = AGENTS_SECONDS, size: int = CACHE_SIZE) -> None:
        self.pool = pool
        self.seconds = seconds
        self.cache: TtlCache[str, tuple[str, ...]] = TtlCache(size)

    async def of(self, names: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Agent principals by budget name; a budget that does not exist has none (and is cached so)."""
        out: dict[str, tuple[str, ...]] = {}
        missing = []
        for name in names:  # the usual case, without a task per name
            found, value = self.cache.get(name)
            if found and value is not None:
                out[name] = value
            else:
                missing.append(name)
        if missing:
            loads = (self.cache.get_or_load(n, functools.partial(self._read, n)) for n in missing)
            out.update(zip(missing, await asyncio.gather(*loads), strict=True))
        return out

    def forget(self, name: str) -> None:
        self.cache.put(name, (), 0)

    async def _read(self, name: str) -> tuple[tuple[str, ...], float]:
        async with db.connection(self.pool) as conn:
            value = await conn.fetchval(Q["auth_agent_principals"], name)
        return tuple(value or ()), self.seconds
