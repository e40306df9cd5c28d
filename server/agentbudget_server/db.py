"""The connection pool, the embedded PostgreSQL, and migrations under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from . import sql
from .errors import DatabaseUnavailable
from .sql import QUERIES as Q

log = logging.getLogger(__name__)
# pg_advisory_lock key: any constant the application owns ("agentbudget" as bytes).
MIGRATION_LOCK = 0x6167656E74627564


class PooledConnection(asyncpg.Connection):
    """A pool connection keeps no session state: LISTEN and session advisory locks live on
    connections of their own (events, webhooks, migrations) and nothing runs SET. So the reset
    query asyncpg sends on every release (unlisten, unlock, reset all, close cursors) would be a
    round trip per hold-path transaction for nothing; an open transaction is still rolled back."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, min_size: int, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        connection_class=PooledConnection,
        command_timeout=30,
        # The ledger's hot statements run thousands of times; keep them prepared.
        statement_cache_size=256,
        server_settings={
            "application_name": "agentbudget",
            "timezone": "UTC",
            # The pool's statements are key lookups and the hold path's multi-row writes, whose
            # plans do not depend on the values; planning the write statement takes about 1 ms
            # (EXPLAIN ANALYZE), and "auto" may plan it anew for its parameters. Generic plans
            # measured 8-20 % more holds per second (hot budget and 1,000 budgets, 64 clients).
            # The reports, whose plans do depend on the values, set force_custom_plan themselves.
            "plan_cache_mode": "force_generic_plan",
        },
    )
    assert pool is not None
    return pool


ACQUIRE_TIMEOUT = 10.0


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[Any]:
    """A pooled connection; failing to get one at all is the database being unavailable."""
    try:
        conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"cannot reach the ledger database ({type(exc).__name__}); retry") from exc
    try:
        yield conn
    finally:
        await pool.release(conn)


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not yet applied, in order; safe from any number of processes at once."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(Q["migration_lock"], MIGRATION_LOCK)
        try:
            await conn.execute(Q["create_migrations_table"])
            done = {r["version"]: r["checksum"] for r in await conn.fetch(Q["applied_migrations"])}
            applied = []
            for version, text in sql.migrations():
                checksum = hashlib.sha256(text.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        raise RuntimeError(f"migration {version} was changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(text)
                    await conn.execute(Q["record_migration"], version, checksum)
                applied.append(version)
                log.info("applied migration %s", version)
            return applied
        finally:
            await conn.execute(Q["migration_unlock"], MIGRATION_LOCK)
    finally:
        await conn.close()


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) a PostgreSQL in ``data_dir`` through pgserver; returns its DSN."""
    import warnings

    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
    uri: str = server.get_uri()
    return uri
