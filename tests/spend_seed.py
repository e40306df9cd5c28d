"""A month of an agent fleet's spending, written through the real gRPC API on the database's clock.

Four budgets (three in USD, one in EUR) spend through November 2026 with Reserve + Commit and
RecordCost; around them are costs that are not spend (released and expired holds, a transfer,
a limit change) and spend just outside the month. The database clock is moved to each cost's
time (``agentbudget.clock_offset``), so the ledger rows carry those times.

The answers the reports must give are the constants at the end, worked out by hand.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg
import grpc
import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from conftest import _admin, dsn_for, server_settings, usd
from google.protobuf.duration_pb2 import Duration

RESEARCH, SUPPORT, MONITOR, EU = "team/research", "team/support", "ops/monitor", "ops/eu"
OPUS, SONNET, HAIKU = "claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"


def t(day: str, clock: str = "12:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}:00+00:00")


@dataclass(frozen=True)
class Cost:
    at: datetime
    budget: str
    amount: str
    how: str = "commit"  # commit (Reserve + Commit), charge (RecordCost)
    kind: int = pb.MODEL_INFERENCE
    model: str = ""
    task_type: str = ""
    task_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    sandbox_seconds: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    currency: str = "USD"


def inference(at: datetime, budget: str, amount: str, model: str, task_type: str, task_id: str, **kw: object) -> Cost:
    return Cost(at, budget, amount, model=model, task_type=task_type, task_id=task_id, **kw)  # type: ignore[arg-type]


COSTS = [
    # Before November in UTC, but November 1 in Europe/Berlin.
    inference(t("2026-10-31", "23:30"), RESEARCH, "1.00", OPUS, "research", "r-0"),
    inference(
        t("2026-11-02"),
        RESEARCH,
        "4.00",
        OPUS,
        "research",
        "r-1",
        input_tokens=10_000,
        output_tokens=2_000,
        cache_read_tokens=4_000,
        labels={"env": "prod"},
    ),
    inference(
        t("2026-11-02", "12:05"), RESEARCH, "0.50", HAIKU, "lookup", "r-1", input_tokens=3_000, output_tokens=200
    ),
    inference(t("2026-11-02", "13:00"), SUPPORT, "0.80", SONNET, "support", "s-1", labels={"env": "prod"}),
    Cost(
        t("2026-11-03"), RESEARCH, "1.20", "charge", pb.SANDBOX, task_type="coding", task_id="r-1", sandbox_seconds=600
    ),
    inference(t("2026-11-03", "13:00"), MONITOR, "0.20", HAIKU, "monitoring", "m-1"),
    inference(t("2026-11-05"), SUPPORT, "1.10", HAIKU, "support", "s-2"),
    Cost(
        t("2026-11-05", "13:00"),
        EU,
        "2.00",
        "charge",
        model=SONNET,
        task_type="analysis",
        task_id="e-1",
        currency="EUR",
    ),
    inference(t("2026-11-09"), RESEARCH, "3.00", OPUS, "research", "r-2", labels={"env": "staging"}),
    inference(t("2026-11-10"), SUPPORT, "0.60", HAIKU, "support", "s-3"),
    inference(t("2026-11-12"), MONITOR, "0.25", HAIKU, "monitoring", "m-2"),
    inference(t("2026-11-15"), RESEARCH, "2.00", SONNET, "analysis", "r-3"),  # the Sunday before last week
    # Last week, seen from Wednesday 2026-11-25: Monday 16 to Sunday 22.
    inference(t("2026-11-16"), RESEARCH, "5.00", OPUS, "research", "r-4", input_tokens=20_000, output_tokens=5_000),
    inference(t("2026-11-16", "13:00"), SUPPORT, "0.90", SONNET, "support", "s-4"),
    inference(t("2026-11-17"), RESEARCH, "1.50", SONNET, "analysis", "r-4"),
    Cost(t("2026-11-18"), RESEARCH, "0.40", "charge", pb.EXTERNAL_API, task_type="research", task_id="r-4"),
    Cost(
        t("2026-11-18", "13:00"),
        EU,
        "3.00",
        "charge",
        model=SONNET,
        task_type="analysis",
        task_id="e-2",
        currency="EUR",
    ),
    inference(t("2026-11-20"), RESEARCH, "2.25", OPUS, "research", "r-5", labels={"env": "prod"}),
    inference(t("2026-11-20", "13:00"), MONITOR, "0.30", HAIKU, "monitoring", "m-3"),
    inference(t("2026-11-22", "23:00"), RESEARCH, "0.75", HAIKU, "lookup", "r-5"),
    inference(t("2026-11-23"), RESEARCH, "6.00", OPUS, "research", "r-6"),  # the Monday after
    inference(t("2026-11-24"), SUPPORT, "1.40", SONNET, "reporting", "s-5"),
    Cost(t("2026-11-25"), SUPPORT, "0.30", "charge", pb.OTHER, task_type="reporting", task_id="s-5"),
    inference(t("2026-11-28"), MONITOR, "0.15", HAIKU, "monitoring", "m-4"),
    # November 30 in UTC, December 1 in Berlin.
    inference(t("2026-11-30", "23:30"), RESEARCH, "2.00", OPUS, "research", "r-7"),
    inference(t("2026-12-01"), RESEARCH, "1.00", OPUS, "research", "r-8"),
]

# Not spend: ledger rows of other kinds at these times.
RELEASED_HOLD = (t("2026-11-16", "14:00"), RESEARCH, "9.00")
EXPIRED_HOLD = (t("2026-11-17", "14:00"), RESEARCH, "3.00")
TRANSFER = (t("2026-11-10", "14:00"), RESEARCH, SUPPORT, "10")
LIMIT_CHANGE = (t("2026-11-12", "14:00"), RESEARCH, "600")
CREATED = t("2026-10-30")
NOW = t("2026-11-25")  # "today" for the relative ranges: a Wednesday

# The answers, worked out by hand from COSTS (UTC, November 2026, USD unless said).
RESEARCH_LAST_WEEK = Decimal("9.90")  # 5.00 + 1.50 + 0.40 + 2.25 + 0.75
NOVEMBER_USD = Decimal("34.60")  # research 28.60 + support 5.10 + monitor 0.90
NOVEMBER_EUR = Decimal("5.00")
NOVEMBER_BY_BUDGET = {RESEARCH: Decimal("28.60"), SUPPORT: Decimal("5.10"), MONITOR: Decimal("0.90")}
NOVEMBER_BY_TASK_TYPE = {
    "research": Decimal("22.65"),
    "analysis": Decimal("3.50"),
    "support": Decimal("3.40"),
    "reporting": Decimal("1.70"),
    "lookup": Decimal("1.25"),
    "coding": Decimal("1.20"),
    "monitoring": Decimal("0.90"),
}
NOVEMBER_BY_MODEL = {OPUS: Decimal("22.25"), SONNET: Decimal("6.60"), HAIKU: Decimal("3.85"), "": Decimal("1.90")}
NOVEMBER_ENTRIES_USD = 22
# Europe/Berlin's November: 2026-10-31 23:00 UTC to 2026-11-30 23:00 UTC.
NOVEMBER_BERLIN_USD = NOVEMBER_USD + Decimal("1.00") - Decimal("2.00")


def november_by_day() -> dict[str, Decimal]:
    days: dict[str, Decimal] = {}
    for c in COSTS:
        if c.currency == "USD" and c.at.month == 11:
            key = c.at.date().isoformat()
            days[key] = days.get(key, Decimal(0)) + Decimal(c.amount)
    return days


class Clock:
    """Moves the database's clock (for connections opened afterwards) and the pool with it."""

    def __init__(self, dsn: str, authority: app.Authority) -> None:
        self.dsn = dsn
        self.authority = authority

    async def set(self, when: datetime) -> None:
        database = self.dsn.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.dsn)
        try:
            offset = await conn.fetchval("SELECT ($1::timestamptz - clock_timestamp())::text", when)
            await conn.execute(f"ALTER DATABASE \"{database}\" SET agentbudget.clock_offset = '{offset}'")
        finally:
            await conn.close()
        await self.authority.pool.expire_connections()

    async def reset(self) -> None:
        database = self.dsn.rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'ALTER DATABASE "{database}" RESET agentbudget.clock_offset')
        finally:
            await conn.close()
        await self.authority.pool.expire_connections()


def _details(c: Cost, *, usage: bool) -> pb.CostDetails:
    d = pb.CostDetails(kind=c.kind, model=c.model, task_type=c.task_type, task_id=c.task_id, labels=c.labels)
    if usage:
        for name in ("input_tokens", "output_tokens", "cache_read_tokens"):
            if getattr(c, name):
                setattr(d, name, getattr(c, name))
        if c.sandbox_seconds:
            d.sandbox_time.CopyFrom(Duration(seconds=c.sandbox_seconds))
    return d


async def seed(stub: pb_grpc.BudgetAuthorityStub, dsn: str, authority: app.Authority) -> None:
    clock = Clock(dsn, authority)
    await clock.set(CREATED)
    for name, limit, currency, labels in (
        (RESEARCH, "500", "USD", {"team": "research"}),
        (SUPPORT, "200", "USD", {"team": "support"}),
        (MONITOR, "20", "USD", {}),
        (EU, "100", "EUR", {}),
    ):
        spec = pb.BudgetSpec(limit=usd(limit, currency), labels=labels)
        await stub.UpsertBudget(pb.UpsertBudgetRequest(name=name, spec=spec))
    events: list[tuple[datetime, int, object]] = [(c.at, i, c) for i, c in enumerate(COSTS)]
    events += [(RELEASED_HOLD[0], 100, "release"), (EXPIRED_HOLD[0], 101, "expire")]
    events += [(TRANSFER[0], 102, "transfer"), (LIMIT_CHANGE[0], 103, "limit")]
    for when, i, what in sorted(events, key=lambda e: (e[0], e[1])):
        await clock.set(when)
        if isinstance(what, Cost):
            await _spend(stub, what, i)
        elif what == "release":
            r = pb.ReserveRequest(budget=RELEASED_HOLD[1], reservation_id="released", amount=usd(RELEASED_HOLD[2]))
            await stub.Reserve(r)
            await stub.Release(pb.ReleaseRequest(budget=RELEASED_HOLD[1], reservation_id="released"))
        elif what == "expire":
            r = pb.ReserveRequest(
                budget=EXPIRED_HOLD[1],
                reservation_id="expired",
                amount=usd(EXPIRED_HOLD[2]),
                ttl=Duration(nanos=300_000_000),
            )
            await stub.Reserve(r)
            await _expired(dsn)
        elif what == "transfer":
            _, source, target, amount = TRANSFER
            await stub.Transfer(
                pb.TransferRequest(request_id="move-1", from_budget=source, to_budget=target, amount=usd(amount))
            )
        else:
            spec = pb.BudgetSpec(limit=usd(LIMIT_CHANGE[2]), labels={"team": "research"})
            await stub.UpsertBudget(pb.UpsertBudgetRequest(name=LIMIT_CHANGE[1], spec=spec))
    await clock.reset()


async def _spend(stub: pb_grpc.BudgetAuthorityStub, c: Cost, i: int) -> None:
    amount = usd(c.amount, c.currency)
    if c.how == "charge":
        req = pb.RecordCostRequest(
            budget=c.budget, request_id=f"cost-{i}", amount=amount, details=_details(c, usage=True)
        )
        await stub.RecordCost(req)
        return
    hold = usd(str(Decimal(c.amount) + Decimal("0.50")), c.currency)
    rid = f"hold-{i}"
    await stub.Reserve(
        pb.ReserveRequest(budget=c.budget, reservation_id=rid, amount=hold, details=_details(c, usage=False))
    )
    await stub.Commit(
        pb.CommitRequest(budget=c.budget, reservation_id=rid, actual=amount, details=_details(c, usage=True))
    )


async def _expired(dsn: str, deadline: float = 10.0) -> None:
    """Until the sweeper has expired the hold (an EXPIRY row: not spend either)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(int(deadline / 0.05)):
            if await conn.fetchval("SELECT state FROM reservations WHERE reservation_id = 'expired'") == "EXPIRED":
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the hold did not expire")
    finally:
        await conn.close()


# -- fixtures: seeded once per session, cloned per test (import them into a test module) ------


async def _seed_database(dsn: str) -> None:
    authority = await app.start(server_settings(), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            await seed(pb_grpc.BudgetAuthorityStub(channel), dsn, authority)
    finally:
        await authority.stop(grace=0.5)


@pytest.fixture(scope="session")
def fleet_template(template_db: str) -> Iterator[str]:
    name = f"agentbudget_fleet_{os.getpid()}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    asyncio.run(_seed_database(dsn_for(name)))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fleet_dsn(fleet_template: str) -> Iterator[str]:
    name = f"agentbudget_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{fleet_template}"'))
    yield dsn_for(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def fleet_authority(fleet_dsn: str) -> AsyncIterator[app.Authority]:
    authority = await app.start(server_settings(), fleet_dsn)
    yield authority
    await authority.stop(grace=0.5)


@pytest.fixture
async def fleet(fleet_authority: app.Authority) -> AsyncIterator[pb_grpc.BudgetAuthorityStub]:
    """A stub of an authority over the seeded ledger."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fleet_authority.port}") as channel:
        yield pb_grpc.BudgetAuthorityStub(channel)
