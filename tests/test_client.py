"""The thin typed client: holds as context managers, exceptions per reason, safe retries."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal

import grpc
import pytest
from agentbudget import client as ab
from agentbudget import errors
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import app
from conftest import audit, ledger_rows, server_settings

B = "team/agent"


@pytest.fixture
async def client(authority):
    async with ab.connect(f"127.0.0.1:{authority.port}") as c:
        await c.upsert_budget(B, "10")
        yield c


async def test_a_hold_block_commits_what_the_agent_says(client, dsn):
    async with client.reserve(B, "2.50", details=pb.CostDetails(task_id="t-1", task_type="research")) as hold:
        assert hold.reservation is not None and hold.reservation.state == pb.RESERVATION_ACTIVE
        done = await hold.commit(Decimal("1.75"), pb.CostDetails(model="claude-haiku", input_tokens=1200))
    assert done.reservation.state == pb.RESERVATION_COMMITTED
    assert done.reservation.details.task_type == "research" and done.reservation.details.input_tokens == 1200
    budget = await client.get_budget(B)
    assert ab.to_decimal(budget.spent) == Decimal("1.75") and ab.to_decimal(budget.held) == 0


async def test_an_exception_inside_the_block_releases_the_hold(client, dsn):
    with pytest.raises(RuntimeError, match="tool failed"):
        async with client.reserve(B, "3"):
            raise RuntimeError("tool failed")
    assert ab.to_decimal((await client.get_budget(B)).held) == 0
    assert [r["entry_type"] for r in await ledger_rows(dsn, B)][-2:] == ["HOLD", "RELEASE"]


async def test_each_error_reason_has_its_exception(client):
    with pytest.raises(errors.BudgetExceededError) as exceeded:
        await client.reserve(B, "11")
    assert exceeded.value.remaining == "10.00"
    with pytest.raises(errors.BudgetNotFoundError):
        await client.get_budget("team/nobody")
    with pytest.raises(errors.InvalidRequestError) as invalid:
        await client.reserve(B, "1", currency="EUR")
    assert invalid.value.reason == "CURRENCY_MISMATCH" and invalid.value.field == "amount.currency_code"
    hold = await client.reserve(B, "1", reservation_id="r1")
    await hold.release()
    with pytest.raises(errors.ReservationEndedError) as ended:
        await hold.commit("1")
    assert ended.value.state == "RELEASED"
    with pytest.raises(errors.IdempotencyKeyReusedError):
        await client.reserve(B, "2", reservation_id="r1")
    await client.upsert_budget(B, "10", paused=True)
    with pytest.raises(errors.BudgetPausedError):
        await client.reserve(B, "1")


def test_money_is_exact_and_never_a_float():
    assert ab.money("0.000000001").nanos == 1
    assert ab.money(Decimal("-1.5")) == ab.money("-1.5")
    assert (ab.money("-1.5").units, ab.money("-1.5").nanos) == (-1, -500_000_000)
    with pytest.raises(TypeError):
        ab.money(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nano"):
        ab.money("0.0000000001")


async def test_calls_retry_through_an_authority_restart_with_the_same_id(dsn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    async with ab.BudgetClient(channel, retries=30, backoff=0.05) as c:
        pending = asyncio.ensure_future(c.upsert_budget(B, "5"))
        state = channel.get_state()
        while state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:  # the first attempt has failed
            await asyncio.wait_for(channel.wait_for_state_change(state), 10)
            state = channel.get_state()
        assert not pending.done()
        authority = await app.start(server_settings(listen=f"127.0.0.1:{port}"), dsn)
        try:
            made = await asyncio.wait_for(pending, 30)
            assert made.created
            hold = await c.reserve(B, "1", reservation_id="r1")
            assert hold.reservation is not None
        finally:
            await authority.stop(grace=0.1)
    assert await audit(dsn) == []


async def test_pages_are_followed_for_lists(client):
    for i in range(5):
        await client.upsert_budget(f"team/agent-{i}", "1")
    names = [b.name async for b in client.list_budgets("team", page_size=2)]
    assert names == [B] + [f"team/agent-{i}" for i in range(5)]
    for i in range(3):
        await client.record_cost(B, "0.1", request_id=f"c{i}")
    entries = [e async for e in client.ledger_entries(B, page_size=2)]
    assert [e.type for e in entries] == [pb.ENTRY_PERIOD_OPENED] + [pb.ENTRY_CHARGE] * 3
