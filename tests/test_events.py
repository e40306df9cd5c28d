"""WatchEvents: the outbox streamed after an id, live across replicas, resumable without loss."""

from __future__ import annotations

import asyncio

import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from conftest import expect_error, make_budget, server_settings, usd

B = "team/agent"
Code = grpc.StatusCode


async def take(stub: pb_grpc.BudgetAuthorityStub, n: int, timeout: float = 5.0, **req: object) -> list[pb.Event]:
    call = stub.WatchEvents(pb.WatchEventsRequest(**req))
    out: list[pb.Event] = []
    try:
        async with asyncio.timeout(timeout):
            async for resp in call:
                out.append(resp.event)
                if len(out) == n:
                    break
    finally:
        call.cancel()
    return out


async def test_events_stream_from_the_start_and_resume_after_an_id(stub):
    await make_budget(stub, limit="10")
    await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("9")))
    first = await take(stub, 2)
    assert [e.type for e in first] == [pb.EVENT_BUDGET_CREATED, pb.EVENT_THRESHOLD_CROSSED]
    assert first[1].threshold == 0.8 and first[1].phase == pb.WARNING and first[1].spent.units == 9
    await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c2", amount=usd("1")))
    rest = await take(stub, 1, after_id=first[-1].id)
    assert [e.type for e in rest] == [pb.EVENT_BUDGET_EXHAUSTED] and rest[0].id > first[-1].id


async def test_events_filter_by_budget_and_type(stub):
    await make_budget(stub, "team/a", limit="1")
    await make_budget(stub, "team/b", limit="1")
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget="team/b", reservation_id="r", amount=usd("2"))),
        Code.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
    )
    only_b = await take(stub, 2, budgets=["team/b"])
    assert {e.budget for e in only_b} == {"team/b"}
    denied = await take(stub, 1, types=[pb.EVENT_RESERVATION_DENIED])
    assert denied[0].budget == "team/b" and denied[0].amount.units == 2 and denied[0].reservation_id == "r"
    await expect_error(take(stub, 1, types=[999]), Code.INVALID_ARGUMENT, "INVALID_FIELD", "types[0]")
    await expect_error(take(stub, 1, after_id=-1), Code.INVALID_ARGUMENT, "INVALID_FIELD", "after_id")


async def test_a_watcher_on_one_replica_sees_a_change_on_another_within_a_second(authority, stub, dsn):
    other = await app.start(server_settings(event_poll_seconds=30), dsn)  # only NOTIFY can wake it in time
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            watcher = pb_grpc.BudgetAuthorityStub(channel)
            await make_budget(stub, limit="10")
            seen = await take(watcher, 1)
            assert seen[0].type == pb.EVENT_BUDGET_CREATED
            # The other replica polls only every 30 s: an event in well under that came by NOTIFY.
            pending = asyncio.ensure_future(take(watcher, 1, timeout=3.0, after_id=seen[0].id))
            await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("10")))
            got = await pending
            assert got[0].type == pb.EVENT_THRESHOLD_CROSSED
    finally:
        await other.stop(grace=0.1)


async def test_concurrent_writers_produce_gapless_increasing_ids_seen_exactly_once(stub):
    names = [f"team/agent-{i}" for i in range(8)]
    for name in names:
        await make_budget(stub, name, limit="1")

    async def deny(name: str, i: int) -> None:
        try:
            await stub.Reserve(pb.ReserveRequest(budget=name, reservation_id=f"r{i}", amount=usd("5")))
        except grpc.aio.AioRpcError as err:
            assert err.code() == Code.RESOURCE_EXHAUSTED

    watcher = asyncio.ensure_future(take(stub, 8 + 80, timeout=20.0))
    await asyncio.gather(*(deny(n, i) for n in names for i in range(10)))
    events = await watcher
    ids = [e.id for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert sum(e.type == pb.EVENT_RESERVATION_DENIED for e in events) == 80


async def test_a_stream_ends_with_shutting_down_when_its_server_stops(dsn):
    other = await app.start(server_settings(), dsn)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        watcher = pb_grpc.BudgetAuthorityStub(channel)
        await make_budget(watcher)
        call = watcher.WatchEvents(pb.WatchEventsRequest())
        stream = call.__aiter__()
        assert (await stream.__anext__()).event.type == pb.EVENT_BUDGET_CREATED  # the stream is open
        stopping = asyncio.ensure_future(other.stop(grace=2.0))
        await expect_error(stream.__anext__(), Code.UNAVAILABLE, "SHUTTING_DOWN")
        await stopping
