"""Reports filter by the principal that caused each cost (issue: who may spend what, audit)."""

from __future__ import annotations

import asyncpg
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import ledger, principal
from conftest import expect_error, make_budget, nanos, usd
from test_group_commit import as_call

B = "team/shared"


def planned_as(who: str | None, req: pb.ReserveRequest | pb.CommitRequest) -> ledger.Call:
    token = principal.bind(None if who is None else principal.Principal(who, principal.AGENT))
    try:
        return as_call(req)
    finally:
        principal.unbind(token)


async def test_spend_can_be_filtered_by_the_principal_that_caused_it(stub, dsn):
    await make_budget(stub, name=B, limit="100")
    calls = []
    for who, rid, actual in (("apikey:alice", "a", "3"), ("system:serviceaccount:team:bob", "b", "5")):
        calls.append(planned_as(who, pb.ReserveRequest(budget=B, reservation_id=rid, amount=usd("10"))))
        calls.append(planned_as(who, pb.CommitRequest(budget=B, reservation_id=rid, actual=usd(actual))))
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        replies = await ledger.apply(pool, B, calls)
    finally:
        await pool.close()
    assert all(r.error is None for r in replies)
    await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("0.5")))  # no principal

    async def spent_by(*who: str) -> int:
        resp = await stub.QuerySpend(pb.QuerySpendRequest(principals=list(who)))
        return nanos(resp.totals[0].cost) if resp.totals else 0

    unit = 1_000_000_000
    assert await spent_by("apikey:alice") == 3 * unit
    assert await spent_by("system:serviceaccount:team:bob") == 5 * unit
    assert await spent_by("apikey:alice", "system:serviceaccount:team:bob") == 8 * unit
    assert await spent_by("") == unit // 2  # costs recorded without authentication
    assert await spent_by() == 8 * unit + unit // 2
    entries = [e async for e in _entries(stub)]
    assert {e.principal for e in entries if e.type == pb.ENTRY_COMMIT} == {
        "apikey:alice",
        "system:serviceaccount:team:bob",
    }
    await expect_error(
        stub.QuerySpend(pb.QuerySpendRequest(principals=["x" * 300])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "principals[0]",
    )


async def _entries(stub):  # type: ignore[no-untyped-def]
    resp = await stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B, page_size=100))
    for e in resp.entries:
        yield e
