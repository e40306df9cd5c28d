"""Reserve, Commit, Release and RecordCost end to end: real server, real PostgreSQL."""

from __future__ import annotations

import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from conftest import audit, expect_error, ledger_rows, make_budget, nanos, until, usd
from google.protobuf.duration_pb2 import Duration

B = "team/agent"
UNIT = 1_000_000_000
Code = grpc.StatusCode


def reserve(rid: str, amount: str, budget: str = B, **kw: object) -> pb.ReserveRequest:
    return pb.ReserveRequest(budget=budget, reservation_id=rid, amount=usd(amount), **kw)


def commit(rid: str, actual: str, budget: str = B) -> pb.CommitRequest:
    return pb.CommitRequest(budget=budget, reservation_id=rid, actual=usd(actual))


async def budget_of(stub, name: str = B) -> pb.Budget:
    return (await stub.GetBudget(pb.GetBudgetRequest(name=name))).budget


async def test_reserve_holds_and_commit_charges_the_actual_and_frees_the_rest(stub, dsn):
    await make_budget(stub, limit="10")
    held = await stub.Reserve(reserve("r1", "3"))
    assert held.reservation.state == pb.RESERVATION_ACTIVE
    assert nanos(held.remaining) == 7 * UNIT
    assert nanos((await budget_of(stub)).held) == 3 * UNIT

    done = await stub.Commit(commit("r1", "2.25"))
    assert done.reservation.state == pb.RESERVATION_COMMITTED
    assert nanos(done.reservation.committed) == 2_250_000_000
    assert not done.reservation.overrun and not done.reservation.late
    b = await budget_of(stub)
    assert (nanos(b.spent), nanos(b.held), nanos(b.remaining)) == (2_250_000_000, 0, 7_750_000_000)
    types = [r["entry_type"] for r in await ledger_rows(dsn, B)]
    assert types == ["PERIOD_OPENED", "HOLD", "COMMIT"]
    assert await audit(dsn) == []


async def test_a_hold_that_does_not_fit_is_denied_with_the_remaining_amount(stub, dsn):
    await make_budget(stub, limit="10")
    await stub.Reserve(reserve("r1", "6"))
    meta = await expect_error(stub.Reserve(reserve("r2", "4.000000001")), Code.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert meta["remaining"] == "4.00" and meta["remaining_nanos"] == str(4 * UNIT) and meta["currency"] == "USD"
    exact = await stub.Reserve(reserve("r3", "4"))  # exactly what is left fits
    assert nanos(exact.remaining) == 0
    b = await budget_of(stub)
    assert b.phase == pb.ACTIVE  # holds alone never exhaust or pause the agent
    assert nanos(b.held) == 10 * UNIT
    assert [r["entry_type"] for r in await ledger_rows(dsn, B)].count("HOLD") == 2


async def test_a_paused_budget_answers_failed_precondition(stub):
    await make_budget(stub, limit="10", paused=True)
    await expect_error(stub.Reserve(reserve("r1", "1")), Code.FAILED_PRECONDITION, "BUDGET_PAUSED")
    assert (await budget_of(stub)).phase == pb.PAUSED


async def test_an_actual_above_the_hold_is_charged_in_full_and_flagged_as_overrun(stub, dsn):
    await make_budget(stub, limit="10")
    await stub.Reserve(reserve("r1", "9"))
    done = await stub.Commit(commit("r1", "12"))
    assert done.reservation.overrun
    b = await budget_of(stub)
    assert nanos(b.spent) == 12 * UNIT and b.phase == pb.EXHAUSTED
    rows = await ledger_rows(dsn, B)
    assert rows[-1]["entry_type"] == "COMMIT" and rows[-1]["overrun"] and rows[-1]["spent_delta"] == 12 * UNIT
    await expect_error(stub.Reserve(reserve("r2", "0.01")), Code.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")


async def test_a_commit_after_expiry_is_still_charged_and_flagged_late(stub, dsn):
    await make_budget(stub, limit="10")
    await stub.Reserve(reserve("r1", "2", ttl=Duration(nanos=300_000_000)))
    await until(lambda: _state(dsn, "r1"), "EXPIRED")
    assert nanos((await budget_of(stub)).held) == 0
    done = await stub.Commit(commit("r1", "1.5"))
    assert done.reservation.late and done.reservation.state == pb.RESERVATION_COMMITTED
    assert nanos((await budget_of(stub)).spent) == 1_500_000_000
    types = [(r["entry_type"], r["late"]) for r in await ledger_rows(dsn, B)][1:]
    assert types == [("HOLD", False), ("EXPIRY", False), ("CHARGE", True)]
    assert await audit(dsn) == []


async def test_release_voids_the_hold_and_every_hold_ends_exactly_once(stub, dsn):
    await make_budget(stub, limit="10")
    await stub.Reserve(reserve("r1", "5"))
    first = await stub.Release(pb.ReleaseRequest(budget=B, reservation_id="r1"))
    again = await stub.Release(pb.ReleaseRequest(budget=B, reservation_id="r1"))
    assert first.SerializeToString(deterministic=True) == again.SerializeToString(deterministic=True)
    assert first.reservation.state == pb.RESERVATION_RELEASED
    meta = await expect_error(stub.Commit(commit("r1", "1")), Code.FAILED_PRECONDITION, "RESERVATION_ENDED")
    assert meta["state"] == "RELEASED"

    await stub.Reserve(reserve("r2", "5"))
    await stub.Commit(commit("r2", "1"))
    meta = await expect_error(
        stub.Release(pb.ReleaseRequest(budget=B, reservation_id="r2")),
        Code.FAILED_PRECONDITION,
        "RESERVATION_ENDED",
    )
    assert meta["state"] == "COMMITTED"
    await expect_error(stub.Commit(commit("r2", "2")), Code.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    b = await budget_of(stub)
    assert (nanos(b.spent), nanos(b.held)) == (UNIT, 0)
    endings = [r["entry_type"] for r in await ledger_rows(dsn, B) if r["entry_type"] in ("COMMIT", "RELEASE", "EXPIRY")]
    assert endings == ["RELEASE", "COMMIT"]


async def test_release_after_expiry_names_the_final_state(stub, dsn):
    await make_budget(stub, limit="10")
    await stub.Reserve(reserve("r1", "2", ttl=Duration(nanos=300_000_000)))
    await until(lambda: _state(dsn, "r1"), "EXPIRED")
    meta = await expect_error(
        stub.Release(pb.ReleaseRequest(budget=B, reservation_id="r1")),
        Code.FAILED_PRECONDITION,
        "RESERVATION_ENDED",
    )
    assert meta["state"] == "EXPIRED"


async def test_replays_return_the_identical_response_and_charge_nothing_twice(stub, dsn):
    await make_budget(stub, limit="10")
    r1 = await stub.Reserve(reserve("r1", "3"))
    r2 = await stub.Reserve(reserve("r1", "3"))
    assert r1.SerializeToString(deterministic=True) == r2.SerializeToString(deterministic=True)
    await expect_error(stub.Reserve(reserve("r1", "4")), Code.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    c1 = await stub.Commit(commit("r1", "2"))
    c2 = await stub.Commit(commit("r1", "2"))
    assert c1 == c2
    cost = pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("1"))
    k1, k2 = await stub.RecordCost(cost), await stub.RecordCost(cost)
    assert k1 == k2 and k1.entry.id > 0
    await expect_error(
        stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("2"))),
        Code.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert nanos((await budget_of(stub)).spent) == 3 * UNIT
    types = [r["entry_type"] for r in await ledger_rows(dsn, B)]
    assert types == ["PERIOD_OPENED", "HOLD", "COMMIT", "CHARGE"]


async def test_record_cost_charges_directly_and_flags_an_overrun_past_the_limit(stub, dsn):
    await make_budget(stub, limit="1")
    ok = await stub.RecordCost(
        pb.RecordCostRequest(
            budget=B,
            request_id="c1",
            amount=usd("0.75"),
            details=pb.CostDetails(kind=pb.EXTERNAL_API, api_name="stripe", api_calls=3, task_id="t-1"),
        )
    )
    assert not ok.entry.overrun and nanos(ok.remaining) == 250_000_000
    assert ok.entry.details.api_name == "stripe" and ok.entry.type == pb.ENTRY_CHARGE
    over = await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c2", amount=usd("0.5")))
    assert over.entry.overrun
    b = await budget_of(stub)
    assert nanos(b.spent) == 1_250_000_000 and b.phase == pb.EXHAUSTED and nanos(b.remaining) == 0


async def test_unknown_budget_and_reservation_are_not_found(stub):
    await expect_error(stub.Reserve(reserve("r1", "1", budget="team/nobody")), Code.NOT_FOUND, "BUDGET_NOT_FOUND")
    await make_budget(stub)
    await expect_error(stub.Commit(commit("nope", "1")), Code.NOT_FOUND, "RESERVATION_NOT_FOUND")
    await expect_error(
        stub.Release(pb.ReleaseRequest(budget=B, reservation_id="nope")),
        Code.NOT_FOUND,
        "RESERVATION_NOT_FOUND",
    )


async def test_a_currency_other_than_the_budgets_is_rejected_and_nothing_is_written(stub, dsn):
    await make_budget(stub)
    before = len(await ledger_rows(dsn, B))
    req = pb.ReserveRequest(budget=B, reservation_id="r1", amount=usd("1", "EUR"))
    await expect_error(stub.Reserve(req), Code.INVALID_ARGUMENT, "CURRENCY_MISMATCH", "amount.currency_code")
    await stub.Reserve(reserve("r2", "1"))
    bad_commit = pb.CommitRequest(budget=B, reservation_id="r2", actual=usd("1", "EUR"))
    await expect_error(stub.Commit(bad_commit), Code.INVALID_ARGUMENT, "CURRENCY_MISMATCH", "actual.currency_code")
    assert len(await ledger_rows(dsn, B)) == before + 1


async def test_ttl_outside_the_configured_bounds_is_rejected(stub):
    await make_budget(stub)
    for ttl in (Duration(nanos=1000), Duration(seconds=10**6), Duration(seconds=-5)):
        await expect_error(stub.Reserve(reserve("r1", "1", ttl=ttl)), Code.INVALID_ARGUMENT, "INVALID_FIELD", "ttl")
    held = await stub.Reserve(reserve("r1", "1"))
    lifetime = held.reservation.expire_time.ToDatetime() - held.reservation.create_time.ToDatetime()
    assert lifetime.total_seconds() == 600  # the default TTL: 10 minutes


async def test_a_reserve_that_would_be_denied_first_expires_the_budgets_due_holds(dsn):
    from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
    from agentbudget_server import app
    from conftest import server_settings

    # No sweeper to speak of: only the denied Reserve can end the due hold.
    authority = await app.start(server_settings(sweep_interval_seconds=3600), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)
            await make_budget(stub, limit="10")
            await stub.Reserve(reserve("old", "8", ttl=Duration(nanos=200_000_000)))
            await until(lambda: _past_expiry(dsn, "old"), True)
            granted = await stub.Reserve(reserve("new", "5"))
            assert nanos(granted.remaining) == 5 * UNIT
            assert await _state(dsn, "old") == "EXPIRED"
            assert await audit(dsn) == []
    finally:
        await authority.stop(grace=0.1)


async def _state(dsn: str, rid: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT state FROM reservations WHERE reservation_id = $1", rid)
    finally:
        await conn.close()


async def _past_expiry(dsn: str, rid: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT expires_at <= agentbudget_now() FROM reservations WHERE reservation_id = $1", rid
        )
    finally:
        await conn.close()
