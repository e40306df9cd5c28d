"""Real PostgreSQL, real gRPC over a socket.

A template database is migrated once per test session; every test gets its own database
cloned from it (fast, and fully isolated), and an authority bound to a free port.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app, db
from agentbudget_server.money import parse_decimal, to_parts
from agentbudget_server.settings import Settings
from google.type.money_pb2 import Money

ADMIN_DSN = os.environ.get("AGENTBUDGET_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def dsn_for(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"agentbudget_tpl_{os.getpid()}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(db.migrate(dsn_for(name)))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_db() -> Iterator[str]:
    """An empty database (no schema), for migration tests."""
    name = f"agentbudget_empty_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def dsn(template_db: str) -> Iterator[str]:
    name = f"agentbudget_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Authorities the tests start as processes (procs.py, the CLI) and in-process run without
# authentication or rate limits unless a test sets them (tests/test_auth_*.py do).
os.environ.setdefault("AGENTBUDGET_AUTH", "none")
os.environ.setdefault("AGENTBUDGET_RATE_LIMIT_PER_SECOND", "0")


def server_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "auth": "none",
        "rate_limit_per_second": 0,
        "listen": "127.0.0.1:0",
        "min_ttl_seconds": 0.2,
        "sweep_interval_seconds": 0.2,
        "event_poll_seconds": 0.5,
        "grace_seconds": 1.0,
        "metrics_listen": "127.0.0.1:0",
    }
    values.update(overrides)
    return Settings(**values).validate()  # type: ignore[arg-type]


@pytest.fixture
async def authority(dsn: str) -> AsyncIterator[app.Authority]:
    a = await app.start(server_settings(), dsn)
    yield a
    await a.stop(grace=0.5)


@pytest.fixture
async def channel(authority: app.Authority) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.BudgetAuthorityStub:
    return pb_grpc.BudgetAuthorityStub(channel)


def usd(amount: str | Decimal, currency: str = "USD") -> Money:
    units, nanos = to_parts(parse_decimal(str(amount)))
    return Money(currency_code=currency, units=units, nanos=nanos)


def nanos(m: Money) -> int:
    return m.units * 1_000_000_000 + m.nanos


async def make_budget(
    stub: pb_grpc.BudgetAuthorityStub, name: str = "team/agent", limit: str = "10", **spec: object
) -> pb.Budget:
    resp = await stub.UpsertBudget(pb.UpsertBudgetRequest(name=name, spec=pb.BudgetSpec(limit=usd(limit), **spec)))
    return resp.budget


async def expect_error(call: object, code: grpc.StatusCode, reason: str, field: str | None = None) -> dict[str, str]:
    """Await ``call``; it must fail with ``code`` and one ErrorInfo of ``reason``; returns its metadata."""
    from agentbudget.errors import error_info

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    err = caught.value
    info = error_info(err)
    assert err.code() == code, f"{err.code()} {err.details()}"
    assert info is not None and info.reason == reason, f"{info} {err.details()}"
    assert info.domain == "agentbudget.io"
    if field is not None:
        assert info.metadata.get("field") == field, f"{info.metadata} {err.details()}"
    return dict(info.metadata)


async def ledger_rows(dsn: str, budget: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT e.* FROM ledger_entries e JOIN budgets b ON b.id = e.budget_id WHERE b.name = $1 ORDER BY e.id",
            budget,
        )
    finally:
        await conn.close()


async def audit(dsn: str) -> list[asyncpg.Record]:
    """Every period whose balance differs from its ledger (must be empty)."""
    from agentbudget_server.sql import QUERIES

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(QUERIES["audit_balances"])
    finally:
        await conn.close()


async def until(probe: Any, want: object, deadline: float = 10.0) -> None:
    """Poll ``await probe()`` until it equals ``want``, failing after ``deadline`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        got = await probe()
        if got == want:
            return
        assert loop.time() < end, f"still {got!r}, wanted {want!r}"
        await asyncio.sleep(0.05)
