"""Group commit: many calls for one budget in one transaction, each answered as if it ran alone."""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app, ledger, pricing, validate, wire
from agentbudget_server.accounts import Reply
from conftest import audit, dsn_for, expect_error, make_budget, server_settings, until, usd
from google.protobuf.message import Message

B = "team/hot"
Code = grpc.StatusCode
CATALOG = pricing.load("")
SETTINGS = server_settings()

Request = pb.ReserveRequest | pb.CommitRequest | pb.ReleaseRequest | pb.RecordCostRequest


def as_call(req: Request) -> ledger.Call:
    """What the servicer builds from a request (the same validate / ledger / wire functions)."""
    s = SETTINGS
    if isinstance(req, pb.ReserveRequest):
        enc = functools.partial(wire.hold_response, pb.ReserveResponse)
        return ledger.reserve(validate.reserve(req, s.default_ttl, s.min_ttl, s.max_ttl), enc, CATALOG)
    if isinstance(req, pb.CommitRequest):
        return ledger.commit(validate.commit(req), functools.partial(wire.hold_response, pb.CommitResponse), CATALOG)
    if isinstance(req, pb.ReleaseRequest):
        return ledger.release(validate.release(req), functools.partial(wire.hold_response, pb.ReleaseResponse))
    return ledger.record_cost(validate.record_cost(req), wire.charge_response, CATALOG)


RESPONSES: dict[type, type[Message]] = {
    pb.ReserveRequest: pb.ReserveResponse,
    pb.CommitRequest: pb.CommitResponse,
    pb.ReleaseRequest: pb.ReleaseResponse,
    pb.RecordCostRequest: pb.RecordCostResponse,
}


def script(seed: int, n: int = 160) -> list[Request]:
    """Interleaved reserves, commits (under, equal, over), releases, direct charges, exact replays,
    conflicting replays and calls on unknown or ended reservations, on a budget they overrun."""
    rng = random.Random(seed)
    out: list[Request] = []
    rids: list[str] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.35 or not rids:
            rid = f"r{i}"
            rids.append(rid)
            out.append(pb.ReserveRequest(budget=B, reservation_id=rid, amount=usd(f"{rng.randint(1, 300) / 100}")))
        elif roll < 0.55:
            actual = f"{rng.choice([0, 50, 100, 150, 400]) / 100}"
            out.append(pb.CommitRequest(budget=B, reservation_id=rng.choice(rids), actual=usd(actual)))
        elif roll < 0.65:
            out.append(pb.ReleaseRequest(budget=B, reservation_id=rng.choice(rids)))
        elif roll < 0.75:
            rid = f"c{rng.randint(0, 8)}"  # some request ids come back: replays and conflicts
            out.append(pb.RecordCostRequest(budget=B, request_id=rid, amount=usd(f"{rng.randint(0, 60) / 100}")))
        elif roll < 0.9 and out:
            out.append(rng.choice(out))  # an exact retry of any earlier call
        elif roll < 0.95:
            out.append(pb.ReserveRequest(budget=B, reservation_id=rng.choice(rids), amount=usd("0.01")))
        else:
            out.append(pb.CommitRequest(budget=B, reservation_id=f"missing{i}", actual=usd("1")))
    return out


TIMES = ("create_time", "expire_time", "end_time")


def normalised(req: Request, reply: Reply) -> tuple[Any, ...]:
    """A reply with its timestamps cleared: one transaction and many have different clocks."""
    if reply.error is not None:
        return ("error", type(reply.error).__name__, str(reply.error))
    assert reply.data is not None
    msg = RESPONSES[type(req)].FromString(reply.data)
    for holder in ("reservation", "entry"):
        if holder in msg.DESCRIPTOR.fields_by_name and msg.HasField(holder):
            part = getattr(msg, holder)
            for t in TIMES:
                if t in part.DESCRIPTOR.fields_by_name:
                    part.ClearField(t)
    return ("ok", msg.SerializeToString(deterministic=True))


@dataclass
class Outcome:
    replies: list[tuple[Any, ...]]
    entries: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    holds: list[tuple[Any, ...]]
    balance: tuple[Any, ...]


async def outcome(dsn: str, replies: list[tuple[Any, ...]]) -> Outcome:
    conn = await asyncpg.connect(dsn)
    try:
        entries = await conn.fetch(
            "SELECT id, entry_type, spent_delta, held_delta, limit_delta, reservation_id, request_id, overrun, late"
            " FROM ledger_entries ORDER BY id"
        )
        events = await conn.fetch("SELECT id, event_type, payload - 'period_start' AS p FROM events ORDER BY id")
        holds = await conn.fetch(
            "SELECT reservation_id, state, amount_nanos, committed_nanos, overrun, late, end_response IS NULL"
            " FROM reservations ORDER BY reservation_id"
        )
        balance = await conn.fetchrow(
            "SELECT limit_nanos, spent_nanos, held_nanos, crossed_ppm, phase FROM budget_periods"
        )
    finally:
        await conn.close()
    assert balance is not None
    return Outcome(
        replies,
        [tuple(r) for r in entries],
        [tuple(r) for r in events],
        [tuple(r) for r in holds],
        tuple(balance),
    )


async def twin_db(dsn: str) -> str:
    """A second database with the same content (a clone of the first, before any call)."""
    name = dsn.rsplit("/", 1)[1] + "_twin"
    conn = await asyncpg.connect(dsn_for("postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{dsn.rsplit("/", 1)[1]}"')
    finally:
        await conn.close()
    return dsn_for(name)


async def drop_db(dsn: str) -> None:
    conn = await asyncpg.connect(dsn_for("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def apply(pool: asyncpg.Pool, calls: list[ledger.Call], unlocked: bool) -> list[Reply]:
    """As group commit applies a batch: without the lock first (``unlocked``), else under it."""
    if unlocked:
        how, replies = await ledger.try_unlocked(pool, B, calls)
        if how is ledger.Unlocked.WRITTEN:
            return replies
    return await ledger.apply(pool, B, calls)


@pytest.mark.parametrize("unlocked", [False, True], ids=["locked", "unlocked-first"])
@pytest.mark.parametrize("seed", range(6))
async def test_one_transaction_answers_every_call_as_the_same_calls_one_by_one(dsn, seed, unlocked):
    a = await app.start(server_settings(), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
            await make_budget(pb_grpc.BudgetAuthorityStub(ch), name=B, limit="25")
    finally:
        await a.stop(grace=0.5)
    twin = await twin_db(dsn)
    try:
        requests = script(seed)
        one = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        many = await asyncpg.create_pool(twin, min_size=1, max_size=2)
        try:
            batched = await apply(one, [as_call(r) for r in requests], unlocked)
            sequential = [(await apply(many, [as_call(r)], unlocked))[0] for r in requests]
        finally:
            await one.close()
            await many.close()
        together = await outcome(dsn, [normalised(r, x) for r, x in zip(requests, batched, strict=True)])
        alone = await outcome(twin, [normalised(r, x) for r, x in zip(requests, sequential, strict=True)])
        kinds = {x[0] if x[0] == "ok" else x[1] for x in together.replies}
        # The script reaches every path: grants, denials, replays, conflicts, unknown and ended holds.
        assert {"ok", "BudgetExceeded", "IdempotencyKeyReused", "ReservationNotFound", "ReservationEnded"} <= kinds
        for i, (x, y) in enumerate(zip(together.replies, alone.replies, strict=True)):
            assert x == y, f"call {i} ({type(requests[i]).__name__}) answered differently"
        assert together.entries == alone.entries
        assert together.events == alone.events
        assert together.holds == alone.holds
        assert together.balance == alone.balance
        assert await audit(dsn) == [] and await audit(twin) == []
    finally:
        await drop_db(twin)


async def test_concurrent_reserves_on_one_budget_share_transactions_and_never_overspend(authority, stub, dsn):
    await make_budget(stub, name=B, limit="40")
    before = authority.holds.transactions
    calls = [stub.Reserve(pb.ReserveRequest(budget=B, reservation_id=f"r{i}", amount=usd("1"))) for i in range(64)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    granted = [r for r in results if isinstance(r, pb.ReserveResponse)]
    denied = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(granted) == 40 and len(denied) == 24
    assert {e.code() for e in denied} == {Code.RESOURCE_EXHAUSTED}
    assert sorted(g.remaining.units for g in granted) == list(range(40))  # each saw the ones before it
    assert authority.holds.transactions - before < 64  # calls were grouped
    assert await audit(dsn) == []


async def hold_budget_lock(dsn: str, name: str) -> tuple[asyncpg.Connection, Any]:
    """Another transaction holding a budget's row lock, as a slow writer on another replica would."""
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT 1 FROM budgets WHERE name = $1 FOR UPDATE", name)
    return conn, tx


async def waiting_on_lock(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    finally:
        await conn.close()


async def test_a_budget_waiting_for_its_lock_does_not_hold_up_another(authority, stub, dsn):
    await make_budget(stub, name="team/slow", limit="10")
    await make_budget(stub, name="team/fast", limit="10")
    conn, tx = await hold_budget_lock(dsn, "team/slow")
    try:
        slow = asyncio.ensure_future(
            stub.Reserve(pb.ReserveRequest(budget="team/slow", reservation_id="s", amount=usd("1")))
        )
        await until(lambda: waiting_on_lock(dsn), 1)
        fast = await stub.Reserve(pb.ReserveRequest(budget="team/fast", reservation_id="f", amount=usd("1")))
        assert fast.reservation.state == pb.RESERVATION_ACTIVE
        assert not slow.done()
    finally:
        await tx.rollback()
        await conn.close()
    assert (await slow).reservation.state == pb.RESERVATION_ACTIVE


async def test_no_call_is_answered_before_its_transaction_commits(authority, stub, dsn):
    """Calls queued behind a blocked transaction get their answers only once theirs has committed."""
    await make_budget(stub, name=B, limit="10")
    conn, tx = await hold_budget_lock(dsn, B)
    try:
        first = asyncio.ensure_future(stub.Reserve(pb.ReserveRequest(budget=B, reservation_id="a", amount=usd("1"))))
        await until(lambda: waiting_on_lock(dsn), 1)
        queued = [
            asyncio.ensure_future(stub.Reserve(pb.ReserveRequest(budget=B, reservation_id=f"q{i}", amount=usd("1"))))
            for i in range(5)
        ]
        await until(lambda: _queued(authority, B), 5)
        assert not first.done() and not any(q.done() for q in queued)
        assert await conn.fetchval("SELECT count(*) FROM reservations") == 0
    finally:
        await tx.rollback()
        await conn.close()
    replies = [await first, *[await q for q in queued]]
    assert [r.reservation.state for r in replies] == [pb.RESERVATION_ACTIVE] * 6
    check = await asyncpg.connect(dsn)
    try:  # everything answered is durable
        assert await check.fetchval("SELECT count(*) FROM reservations WHERE state = 'ACTIVE'") == 6
    finally:
        await check.close()


async def _queued(authority: app.Authority, budget: str) -> int:
    queue = authority.holds._queues.get(budget)
    return 0 if queue is None else len(queue)


async def test_grouping_off_is_one_transaction_per_call(dsn):
    a = await app.start(server_settings(max_batch=1), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
            stub = pb_grpc.BudgetAuthorityStub(ch)
            await make_budget(stub, name=B, limit="5")
            calls = [
                stub.Reserve(pb.ReserveRequest(budget=B, reservation_id=f"r{i}", amount=usd("1"))) for i in range(8)
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert sum(isinstance(r, pb.ReserveResponse) for r in results) == 5
            assert a.holds.transactions == 8
            await expect_error(
                stub.Reserve(pb.ReserveRequest(budget=B, reservation_id="x", amount=usd("1"))),
                Code.RESOURCE_EXHAUSTED,
                "BUDGET_EXCEEDED",
            )
    finally:
        await a.stop(grace=0.5)
    assert await audit(dsn) == []


async def test_each_call_of_a_batch_records_its_own_principal(dsn):
    from agentbudget_server import principal

    a = await app.start(server_settings(), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
            await make_budget(pb_grpc.BudgetAuthorityStub(ch), name=B, limit="10")
    finally:
        await a.stop(grace=0.5)
    calls = []
    for who, rid in (("apikey:alice", "a"), ("system:serviceaccount:team:bob", "b"), (None, "c")):
        token = principal.bind(None if who is None else principal.Principal(who, principal.AGENT))
        try:  # planned in the caller's context, applied later by the batch
            calls.append(as_call(pb.ReserveRequest(budget=B, reservation_id=rid, amount=usd("4"))))
        finally:
            principal.unbind(token)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        replies = await ledger.apply(pool, B, calls)
        async with pool.acquire() as conn:
            holds = await conn.fetch(
                "SELECT reservation_id, principal FROM ledger_entries WHERE entry_type = 'HOLD' ORDER BY id"
            )
            denied = await conn.fetch("SELECT principal FROM events WHERE event_type = 'RESERVATION_DENIED'")
    finally:
        await pool.close()
    assert [type(r.error).__name__ if r.error else "ok" for r in replies] == ["ok", "ok", "BudgetExceeded"]
    assert [(h["reservation_id"], h["principal"]) for h in holds] == [
        ("a", "apikey:alice"),
        ("b", "system:serviceaccount:team:bob"),
    ]
    assert [d["principal"] for d in denied] == [None]  # the third call ran unauthenticated


# -- batches read without the lock ------------------------------------------------------------------


def test_after_attempts_without_the_lock_miss_the_next_batches_take_it_longer_each_time():
    from agentbudget_server.groupcommit import FIRST_MISS, MOST_MISS, Backoff, after_batch

    u = ledger.Unlocked
    assert after_batch(Backoff(), u.WRITTEN) == Backoff()
    assert after_batch(Backoff(), u.MOVED) == Backoff(FIRST_MISS, FIRST_MISS)
    assert after_batch(Backoff(), u.NEEDS_LOCK) == Backoff(FIRST_MISS, FIRST_MISS)
    assert after_batch(Backoff(3, 8), None) == Backoff(2, 8)  # a batch that took the lock counts down
    assert after_batch(Backoff(0, 8), None) == Backoff(0, 8)

    def locked_runs(outcomes: list[Any]) -> list[int]:
        """How many batches took the lock straight away after each attempt, when attempts went so."""
        state, runs = Backoff(), []
        for outcome in outcomes:
            state = after_batch(state, outcome)
            n = 0
            while state.left:
                state, n = after_batch(state, None), n + 1
            runs.append(n)
        return runs

    # Misses in a row: longer and longer runs under the lock, up to the most.
    assert locked_runs([u.MOVED] * 9) == [8, 16, 32, 64, 128, 256, 512, MOST_MISS, MOST_MISS]
    # A write without the lock starts over.
    assert locked_runs([u.MOVED, u.MOVED, u.WRITTEN, u.MOVED]) == [8, 16, 0, FIRST_MISS]


def after_a_change(change: Any, request: pb.ReserveRequest) -> ledger.Call:
    """``request``'s call, which the first time it is decided — after its batch has read the budget,
    before it writes — first awaits ``change()``: what another replica does in between."""
    mine, changed = as_call(request), False

    async def run(u: Any, account: Any) -> Reply:
        nonlocal changed
        if not changed:
            changed = True
            await change()
        return await mine.apply(u, account)

    return ledger.Call(request.budget, run, reservation_id=request.reservation_id)


CHANGES: dict[str, Any] = {
    # What another replica does between this batch's read and its write, and what the batch's
    # Reserve of 5 (limit 10) must then get: the answer it gets when applied after that change.
    "a reserve": (
        lambda s: s.Reserve(pb.ReserveRequest(budget=B, reservation_id="theirs", amount=usd("8"))),
        "BudgetExceeded",
    ),
    "a pause": (
        lambda s: s.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("10"), paused=True))),
        "BudgetPaused",
    ),
    "a transfer out": (
        lambda s: s.Transfer(
            pb.TransferRequest(request_id="t", from_budget=B, to_budget="team/other", amount=usd("6"))
        ),
        "BudgetExceeded",
    ),
    "a deletion": (lambda s: s.DeleteBudget(pb.DeleteBudgetRequest(name=B)), "BudgetNotFound"),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_batch_read_without_the_lock_writes_nothing_if_the_budget_changed_meanwhile(
    authority, stub, dsn, change
):
    await make_budget(stub, name=B, limit="10")
    await make_budget(stub, name="team/other", limit="10")
    other_replica, expected = CHANGES[change]
    call = after_a_change(
        lambda: other_replica(stub), pb.ReserveRequest(budget=B, reservation_id="mine", amount=usd("5"))
    )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        how, replies = await ledger.try_unlocked(pool, B, [call])
        assert (how, replies) == (ledger.Unlocked.MOVED, [])
        async with pool.acquire() as conn:  # the attempt wrote nothing
            assert await conn.fetchval("SELECT count(*) FROM reservations WHERE reservation_id = 'mine'") == 0
        [reply] = await ledger.apply(pool, B, [call])  # under the lock, as group commit goes on
        async with pool.acquire() as conn:
            held = await conn.fetchval(
                "SELECT coalesce(sum(held_nanos), 0) FROM budget_periods p JOIN budgets b ON b.id = p.budget_id"
                " WHERE b.name = $1",
                B,
            )
    finally:
        await pool.close()
    assert type(reply.error).__name__ == expected
    assert held == (8_000_000_000 if change == "a reserve" else 0)
    assert await audit(dsn) == []


async def test_group_commit_applies_a_batch_under_the_lock_when_the_budget_moved(authority, stub, dsn):
    from agentbudget_server.groupcommit import GroupCommit

    await make_budget(stub, name=B, limit="10")
    theirs = pb.ReserveRequest(budget=B, reservation_id="theirs", amount=usd("4"))
    call = after_a_change(
        lambda: stub.Reserve(theirs), pb.ReserveRequest(budget=B, reservation_id="mine", amount=usd("5"))
    )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    holds = GroupCommit(pool)  # a second process's group commit, in effect
    try:
        data = await holds.submit(call)
        after = await holds.submit(as_call(pb.ReserveRequest(budget=B, reservation_id="next", amount=usd("1"))))
    finally:
        await holds.close()
        await pool.close()
    granted = pb.ReserveResponse.FromString(data)
    assert granted.remaining.units == 1  # 10 - 4 (theirs) - 5: decided after their hold, under the lock
    assert pb.ReserveResponse.FromString(after).remaining.units == 0
    assert holds.unlocked[ledger.Unlocked.MOVED] == 1
    assert holds.unlocked[ledger.Unlocked.WRITTEN] == 0  # the batch after a miss took the lock directly
    assert (holds.transactions, holds.calls) == (2, 2)
    assert await audit(dsn) == []


async def test_every_change_of_a_budget_moves_its_version(authority, stub, dsn):
    """What lets a batch read without the lock: nothing changes a budget without moving its version."""
    await make_budget(stub, name=B, limit="10")
    await make_budget(stub, name="team/other", limit="10")
    changes = [
        lambda: stub.Reserve(pb.ReserveRequest(budget=B, reservation_id="r", amount=usd("2"))),
        lambda: stub.Commit(pb.CommitRequest(budget=B, reservation_id="r", actual=usd("1"))),
        lambda: stub.Reserve(pb.ReserveRequest(budget=B, reservation_id="q", amount=usd("1"))),
        lambda: stub.Release(pb.ReleaseRequest(budget=B, reservation_id="q")),
        lambda: stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c", amount=usd("1"))),
        lambda: stub.UpsertBudget(
            pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("10"), labels={"a": "b"}))
        ),
        lambda: stub.UpsertBudget(
            pb.UpsertBudgetRequest(
                name=B,
                spec=pb.BudgetSpec(
                    limit=usd("10"), labels={"a": "b"}, routing=pb.Routing(tiers={"cheap": "claude-haiku-4-5"})
                ),
            )
        ),
        lambda: stub.Transfer(
            pb.TransferRequest(request_id="t", from_budget=B, to_budget="team/other", amount=usd("1"))
        ),
        lambda: stub.DeleteBudget(pb.DeleteBudgetRequest(name=B)),
    ]
    conn = await asyncpg.connect(dsn)
    try:
        seen = [await conn.fetchval("SELECT version FROM budgets WHERE name = $1", B)]
        for change in changes:
            await change()
            seen.append(await conn.fetchval("SELECT version FROM budgets WHERE name = $1", B))
    finally:
        await conn.close()
    assert all(b > a for a, b in itertools.pairwise(seen)), seen
