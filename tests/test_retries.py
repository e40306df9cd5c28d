"""Responses lost after the commit, client retries: nothing is charged twice.

A small TCP proxy sits between the client and the authority. On a connection it was told to
spoil, it lets the request through but withholds the server's response frames, and cuts the
connection the moment the server has finished its response: the server did the work and
committed it, the client only sees a broken connection (UNAVAILABLE). The client then retries the
very same request on a new connection and must receive the very bytes it missed, while the ledger
shows the effect once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from agentbudget.errors import IdempotencyKeyReusedError, ReservationEndedError, from_rpc_error
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from agentbudget_server.sql import QUERIES
from conftest import make_budget, nanos, usd
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
FRAME_DATA, FRAME_HEADERS = 0x0, 0x1
FLAG_END_STREAM, FLAG_PADDED = 0x1, 0x8


class LossyProxy:
    """TCP forwarding to the authority that, on connections opened while ``lose`` is set, lets
    requests through and loses the responses."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lose = False
        self.lost: list[bytes] = []  # the serialized response messages that never arrived
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        lose = self.lose
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        up = asyncio.create_task(self._pipe(client_r, server_w))
        down = asyncio.create_task(self._lose_responses(server_r, client_w) if lose else self._pipe(server_r, client_w))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await t
            for w in (client_w, server_w):
                w.transport.abort()  # a reset, as when a network path or a load balancer fails
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    async def _lose_responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward the connection's own HTTP/2 frames (stream 0: settings, pings, window updates),
        withhold every stream's frames, and return (cutting the connection) once a response ends."""
        buf = b""
        bodies: dict[int, bytearray] = {}
        while chunk := await reader.read(65536):
            buf += chunk
            out = bytearray()
            while len(buf) >= 9:
                length = int.from_bytes(buf[0:3], "big")
                if len(buf) < 9 + length:
                    break
                kind, flags = buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                frame, payload, buf = buf[: 9 + length], buf[9 : 9 + length], buf[9 + length :]
                if stream == 0:
                    out += frame
                    continue
                if kind == FRAME_DATA:
                    if flags & FLAG_PADDED:
                        payload = payload[1 : len(payload) - payload[0]]
                    bodies.setdefault(stream, bytearray()).extend(payload)
                if kind in (FRAME_DATA, FRAME_HEADERS) and flags & FLAG_END_STREAM:
                    body = bytes(bodies.get(stream, b""))
                    # gRPC message framing: 1 byte compressed flag, 4 bytes length, the message.
                    self.lost.append(body[5 : 5 + int.from_bytes(body[1:5], "big")] if body else b"")
                    writer.write(out)
                    return
            writer.write(out)
            await writer.drain()


@pytest.fixture
async def proxy(authority: app.Authority) -> AsyncIterator[LossyProxy]:
    p = LossyProxy(authority.port)
    await p.start()
    yield p
    await p.close()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[pb_grpc.BudgetAuthorityStub]:
    """A stub on a channel of its own: a new TCP connection, never one shared with another test."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
        yield pb_grpc.BudgetAuthorityStub(ch)


def wire(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


# -- the operations under test ---------------------------------------------------------------------

Balances = dict[str, tuple[int, int, int]]  # budget -> (effective limit, spent, held), in nanos


@dataclass
class Op:
    method: str
    key: str  # the reservation_id / request_id
    prepare: Callable[[pb_grpc.BudgetAuthorityStub], Awaitable[None]]
    request: Message
    effect: Counter[str]  # the ledger rows carrying ``key`` after the call, exactly once
    balances: Balances  # after the call
    other_parameters: list[Message]  # same id, something else asked: ALREADY_EXISTS


def D(amount: str) -> int:
    return nanos(usd(amount))


async def _budget(stub: pb_grpc.BudgetAuthorityStub, name: str = "team/agent", limit: str = "10") -> None:
    await make_budget(stub, name, limit)


async def _held(stub: pb_grpc.BudgetAuthorityStub, rid: str = "r-1", amount: str = "4") -> None:
    await _budget(stub)
    await stub.Reserve(pb.ReserveRequest(budget="team/agent", reservation_id=rid, amount=usd(amount)))


async def _two_budgets(stub: pb_grpc.BudgetAuthorityStub) -> None:
    await _budget(stub, "team/giver", "10")
    await _budget(stub, "team/taker", "10")


def reserve_op() -> Op:
    req = pb.ReserveRequest(budget="team/agent", reservation_id="r-1", amount=usd("4"), ttl=Duration(seconds=300))
    other_amount = pb.ReserveRequest()
    other_amount.CopyFrom(req)
    other_amount.amount.CopyFrom(usd("4.000000001"))
    other_ttl = pb.ReserveRequest()
    other_ttl.CopyFrom(req)
    other_ttl.ttl.seconds = 301
    return Op(
        "Reserve", "r-1", _budget, req, Counter(HOLD=1), {"team/agent": (D("10"), 0, D("4"))}, [other_amount, other_ttl]
    )


def commit_op() -> Op:
    req = pb.CommitRequest(budget="team/agent", reservation_id="r-1", actual=usd("1.25"))
    other = pb.CommitRequest(budget="team/agent", reservation_id="r-1", actual=usd("1.26"))
    return Op("Commit", "r-1", _held, req, Counter(HOLD=1, COMMIT=1), {"team/agent": (D("10"), D("1.25"), 0)}, [other])


def release_op() -> Op:
    # A Release has no parameters besides its id: there is no "other" Release of the same hold.
    req = pb.ReleaseRequest(budget="team/agent", reservation_id="r-1")
    return Op("Release", "r-1", _held, req, Counter(HOLD=1, RELEASE=1), {"team/agent": (D("10"), 0, 0)}, [])


def record_cost_op() -> Op:
    req = pb.RecordCostRequest(
        budget="team/agent",
        request_id="c-1",
        amount=usd("0.75"),
        details=pb.CostDetails(kind=pb.EXTERNAL_API, api_name="search", api_calls=3),
    )
    other = pb.RecordCostRequest()
    other.CopyFrom(req)
    other.details.api_calls = 4
    return Op("RecordCost", "c-1", _budget, req, Counter(CHARGE=1), {"team/agent": (D("10"), D("0.75"), 0)}, [other])


def transfer_op() -> Op:
    req = pb.TransferRequest(
        request_id="t-1", from_budget="team/giver", to_budget="team/taker", amount=usd("3"), reason="rebalance"
    )
    other_amount = pb.TransferRequest()
    other_amount.CopyFrom(req)
    other_amount.amount.CopyFrom(usd("2"))
    reversed_direction = pb.TransferRequest(
        request_id="t-1", from_budget="team/taker", to_budget="team/giver", amount=usd("3"), reason="rebalance"
    )
    return Op(
        "Transfer",
        "t-1",
        _two_budgets,
        req,
        Counter(TRANSFER_OUT=1, TRANSFER_IN=1),
        {"team/giver": (D("7"), 0, 0), "team/taker": (D("13"), 0, 0)},
        [other_amount, reversed_direction],
    )


OPS = [reserve_op, commit_op, release_op, record_cost_op, transfer_op]
OP_IDS = ["Reserve", "Commit", "Release", "RecordCost", "Transfer"]


async def ledger_state(dsn: str, key: str) -> tuple[Counter[str], Balances, list[Any]]:
    """Rows carrying the id, every budget's balances, and what the audit query finds wrong."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT entry_type, count(*) AS n FROM ledger_entries "
            "WHERE reservation_id = $1 OR request_id = $1 GROUP BY 1",
            key,
        )
        balances = await conn.fetch(
            "SELECT b.name, p.limit_nanos, p.spent_nanos, p.held_nanos FROM budgets b "
            "JOIN budget_periods p ON p.budget_id = b.id AND p.period_start = b.period_start"
        )
        audit = await conn.fetch(QUERIES["audit_balances"])
    finally:
        await conn.close()
    return (
        Counter({r["entry_type"]: r["n"] for r in rows}),
        {r["name"]: (r["limit_nanos"], r["spent_nanos"], r["held_nanos"]) for r in balances},
        [dict(r) for r in audit],
    )


async def assert_effect_once(dsn: str, op: Op) -> None:
    effect, balances, audit = await ledger_state(dsn, op.key)
    assert effect == op.effect
    assert balances == op.balances
    assert audit == []


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_op", OPS, ids=OP_IDS)
async def test_lost_response_then_retry_gets_the_same_answer(
    make_op: Callable[[], Op], dsn: str, authority: app.Authority, proxy: LossyProxy, stub: pb_grpc.BudgetAuthorityStub
) -> None:
    op = make_op()
    await op.prepare(stub)

    proxy.lose = True
    async with connection(proxy.port) as lossy:
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await getattr(lossy, op.method)(op.request, timeout=10)
    proxy.lose = False
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE, lost.value
    assert len(proxy.lost) == 1 and proxy.lost[0], "the server answered, and the answer was lost"
    await assert_effect_once(dsn, op)  # the server had committed before answering

    async with connection(proxy.port) as fresh:
        retried = await getattr(fresh, op.method)(op.request, timeout=10)
    assert wire(retried) == proxy.lost[0]
    async with connection(authority.port) as direct:
        again = await getattr(direct, op.method)(op.request, timeout=10)
    assert wire(again) == proxy.lost[0]
    await assert_effect_once(dsn, op)


async def test_lost_reserve_replays_the_grant_even_when_the_budget_has_since_filled(
    dsn: str, proxy: LossyProxy, stub: pb_grpc.BudgetAuthorityStub
) -> None:
    await make_budget(stub, "team/agent", "10")
    req = pb.ReserveRequest(budget="team/agent", reservation_id="r-1", amount=usd("4"))
    proxy.lose = True
    async with connection(proxy.port) as lossy:
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await lossy.Reserve(req, timeout=10)
    proxy.lose = False
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE

    # Meanwhile another task takes everything that is left.
    await stub.Reserve(pb.ReserveRequest(budget="team/agent", reservation_id="r-2", amount=usd("6")))
    retried = await stub.Reserve(req)
    assert wire(retried) == proxy.lost[0]
    assert nanos(retried.remaining) == D("6")  # as it was when the hold was granted
    budget = (await stub.GetBudget(pb.GetBudgetRequest(name="team/agent"))).budget
    assert nanos(budget.held) == D("10") and nanos(budget.remaining) == 0


@pytest.mark.parametrize("make_op", OPS, ids=OP_IDS)
async def test_concurrent_identical_calls_have_one_effect(
    make_op: Callable[[], Op], dsn: str, authority: app.Authority, stub: pb_grpc.BudgetAuthorityStub
) -> None:
    op = make_op()
    await op.prepare(stub)

    async def call() -> bytes:
        async with connection(authority.port) as s:
            response = await getattr(s, op.method)(op.request, timeout=10)
        return wire(response)

    answers = await asyncio.gather(call(), call(), call())
    assert answers[0] and answers.count(answers[0]) == 3
    await assert_effect_once(dsn, op)
    # And a late retry still replays the same answer.
    assert await call() == answers[0]
    await assert_effect_once(dsn, op)


@pytest.mark.parametrize("make_op", [m for m in OPS if m is not release_op], ids=[i for i in OP_IDS if i != "Release"])
async def test_same_id_with_other_parameters_is_rejected(
    make_op: Callable[[], Op], dsn: str, stub: pb_grpc.BudgetAuthorityStub
) -> None:
    op = make_op()
    await op.prepare(stub)
    first = await getattr(stub, op.method)(op.request)
    for other in op.other_parameters:
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await getattr(stub, op.method)(other)
        assert rejected.value.code() == grpc.StatusCode.ALREADY_EXISTS
        error = from_rpc_error(rejected.value)
        assert isinstance(error, IdempotencyKeyReusedError)
        assert error.reason == "IDEMPOTENCY_KEY_REUSED"
    await assert_effect_once(dsn, op)
    # The rejection did not spoil the key: the original request still replays.
    assert wire(await getattr(stub, op.method)(op.request)) == wire(first)


async def test_a_retried_release_never_becomes_a_commit(dsn: str, stub: pb_grpc.BudgetAuthorityStub) -> None:
    op = release_op()
    await op.prepare(stub)
    await stub.Release(op.request)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.Commit(pb.CommitRequest(budget="team/agent", reservation_id="r-1", actual=usd("1")))
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = from_rpc_error(ended.value)
    assert isinstance(error, ReservationEndedError) and error.state == "RELEASED"
    await assert_effect_once(dsn, op)
