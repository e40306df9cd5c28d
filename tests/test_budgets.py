"""Budget administration end to end: upsert, get, list, delete, transfer, thresholds, periods."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from conftest import audit, expect_error, ledger_rows, make_budget, nanos, server_settings, usd
from google.protobuf.timestamp_pb2 import Timestamp

B = "team/agent"
UNIT = 1_000_000_000
Code = grpc.StatusCode


async def events_of(dsn: str, budget: str | None = None) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT event_type FROM events WHERE $1::text IS NULL OR budget_name = $1 ORDER BY id", budget
        )
        return [r["event_type"] for r in rows]
    finally:
        await conn.close()


async def test_upsert_creates_then_is_idempotent_and_records_limit_changes(stub, dsn):
    first = await stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("20"))))
    assert first.created and first.changed
    b = first.budget
    assert b.spec.period == pb.MONTHLY and list(b.spec.alert_thresholds) == [0.8]
    start = b.period_start.ToDatetime(tzinfo=UTC)
    assert (start.day, start.hour, start.minute) == (1, 0, 0)
    again = await stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("20"))))
    assert not again.created and not again.changed
    assert len(await ledger_rows(dsn, B)) == 1 and await events_of(dsn) == ["BUDGET_CREATED"]

    raised = await stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("25.5"))))
    assert raised.changed and nanos(raised.budget.effective_limit) == 25_500_000_000
    rows = await ledger_rows(dsn, B)
    assert [(r["entry_type"], r["limit_delta"]) for r in rows] == [
        ("PERIOD_OPENED", 20 * UNIT),
        ("LIMIT_CHANGED", 5_500_000_000),
    ]
    assert await events_of(dsn) == ["BUDGET_CREATED", "LIMIT_CHANGED"]


async def test_the_currency_of_a_budget_cannot_change(stub):
    await make_budget(stub)
    req = pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("20", "EUR")))
    await expect_error(stub.UpsertBudget(req), Code.FAILED_PRECONDITION, "BUDGET_CONFLICT")


async def test_thresholds_fire_once_and_exhaustion_then_a_raise_resumes(stub, dsn):
    await make_budget(stub, limit="10", alert_thresholds=[0.5, 0.8])
    for i, amount in enumerate(["4", "1", "3", "1"]):  # 40 %, 50 %, 80 %, 90 %
        await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id=f"c{i}", amount=usd(amount)))
    b = (await stub.GetBudget(pb.GetBudgetRequest(name=B))).budget
    assert b.phase == pb.WARNING and list(b.crossed_thresholds) == [0.5, 0.8]
    assert (await events_of(dsn)).count("THRESHOLD_CROSSED") == 2

    await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c9", amount=usd("1")))  # exactly 100 %
    b = (await stub.GetBudget(pb.GetBudgetRequest(name=B))).budget
    assert b.phase == pb.EXHAUSTED and nanos(b.remaining) == 0
    await make_budget(stub, limit="40", alert_thresholds=[0.5, 0.8])  # 25 %: both thresholds re-arm
    b = (await stub.GetBudget(pb.GetBudgetRequest(name=B))).budget
    assert b.phase == pb.ACTIVE and list(b.crossed_thresholds) == []
    assert await events_of(dsn) == [
        "BUDGET_CREATED",
        "THRESHOLD_CROSSED",
        "THRESHOLD_CROSSED",
        "BUDGET_EXHAUSTED",
        "BUDGET_RESUMED",
        "LIMIT_CHANGED",
    ]


async def test_pausing_and_unpausing_are_events(stub, dsn):
    await make_budget(stub)
    await make_budget(stub, paused=True)
    await make_budget(stub, paused=False)
    assert await events_of(dsn) == ["BUDGET_CREATED", "BUDGET_PAUSED", "BUDGET_RESUMED"]


async def test_transfer_moves_limit_and_never_below_spent_plus_held(stub, dsn):
    await make_budget(stub, "team/ceo", limit="30")
    await make_budget(stub, "team/research", limit="2")
    await stub.RecordCost(pb.RecordCostRequest(budget="team/research", request_id="c1", amount=usd("2")))
    await stub.RecordCost(pb.RecordCostRequest(budget="team/ceo", request_id="c1", amount=usd("20")))
    await stub.Reserve(pb.ReserveRequest(budget="team/ceo", reservation_id="r1", amount=usd("5")))

    req = pb.TransferRequest(
        request_id="t1", from_budget="team/ceo", to_budget="team/research", amount=usd("5.000000001")
    )
    meta = await expect_error(stub.Transfer(req), Code.FAILED_PRECONDITION, "TRANSFER_EXCEEDS_AVAILABLE")
    assert meta["available"] == "5.00"
    req = pb.TransferRequest(
        request_id="t1",
        from_budget="team/ceo",
        to_budget="team/research",
        amount=usd("5"),
        reason="research deadline",
    )
    moved = await stub.Transfer(req)
    assert nanos(moved.from_budget.effective_limit) == 25 * UNIT and nanos(moved.from_budget.remaining) == 0
    assert nanos(moved.to_budget.effective_limit) == 7 * UNIT and moved.to_budget.phase == pb.ACTIVE
    assert (await stub.Transfer(req)) == moved  # replay
    other = pb.TransferRequest(request_id="t1", from_budget="team/ceo", to_budget="team/research", amount=usd("1"))
    await expect_error(stub.Transfer(other), Code.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert "BUDGET_RESUMED" in await events_of(dsn, "team/research")
    rows = await ledger_rows(dsn, "team/research")
    assert (rows[-1]["entry_type"], rows[-1]["counterparty"], rows[-1]["reason"]) == (
        "TRANSFER_IN",
        "team/ceo",
        "research deadline",
    )
    assert await audit(dsn) == []


async def test_transfer_rejects_same_budget_and_other_currency(stub):
    await make_budget(stub, "team/a")
    await make_budget(stub, "team/b")
    same = pb.TransferRequest(request_id="t1", from_budget="team/a", to_budget="team/a", amount=usd("1"))
    await expect_error(stub.Transfer(same), Code.INVALID_ARGUMENT, "INVALID_FIELD", "to_budget")
    eur = pb.TransferRequest(request_id="t2", from_budget="team/a", to_budget="team/b", amount=usd("1", "EUR"))
    await expect_error(stub.Transfer(eur), Code.INVALID_ARGUMENT, "CURRENCY_MISMATCH")
    missing = pb.TransferRequest(request_id="t3", from_budget="team/a", to_budget="team/zz", amount=usd("1"))
    await expect_error(stub.Transfer(missing), Code.NOT_FOUND, "BUDGET_NOT_FOUND")


async def test_delete_stops_spending_but_keeps_the_ledger(stub, dsn):
    await make_budget(stub)
    await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("1")))
    assert (await stub.DeleteBudget(pb.DeleteBudgetRequest(name=B))).deleted
    await expect_error(stub.GetBudget(pb.GetBudgetRequest(name=B)), Code.NOT_FOUND, "BUDGET_NOT_FOUND")
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget=B, reservation_id="r", amount=usd("1"))),
        Code.NOT_FOUND,
        "BUDGET_NOT_FOUND",
    )
    await expect_error(stub.DeleteBudget(pb.DeleteBudgetRequest(name=B)), Code.NOT_FOUND, "BUDGET_NOT_FOUND")
    assert not (await stub.DeleteBudget(pb.DeleteBudgetRequest(name=B, allow_missing=True))).deleted
    trail = await stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B))
    assert [e.type for e in trail.entries] == [pb.ENTRY_PERIOD_OPENED, pb.ENTRY_CHARGE]
    revived = await stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("10"))))
    assert revived.created and nanos(revived.budget.spent) == UNIT  # the period's spend is not forgotten


async def test_list_budgets_pages_and_filters_by_namespace(stub):
    for ns in ("alpha", "beta"):
        for i in range(3):
            await make_budget(stub, f"{ns}/agent-{i}")
    page = await stub.ListBudgets(pb.ListBudgetsRequest(page_size=4))
    assert [b.name for b in page.budgets] == [
        "alpha/agent-0",
        "alpha/agent-1",
        "alpha/agent-2",
        "beta/agent-0",
    ]
    rest = await stub.ListBudgets(pb.ListBudgetsRequest(page_size=4, page_token=page.next_page_token))
    assert [b.name for b in rest.budgets] == ["beta/agent-1", "beta/agent-2"] and not rest.next_page_token
    beta = await stub.ListBudgets(pb.ListBudgetsRequest(namespace="beta"))
    assert [b.name for b in beta.budgets] == ["beta/agent-0", "beta/agent-1", "beta/agent-2"]
    await expect_error(
        stub.ListBudgets(pb.ListBudgetsRequest(page_token="garbage")),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "page_token",
    )


async def test_ledger_entries_page_through_a_time_range(stub):
    await make_budget(stub, limit="100")
    for i in range(7):
        await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id=f"c{i}", amount=usd("1")))
    seen, token = [], ""
    while True:
        page = await stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B, page_size=3, page_token=token))
        seen += list(page.entries)
        token = page.next_page_token
        if not token:
            break
    assert [e.type for e in seen] == [pb.ENTRY_PERIOD_OPENED] + [pb.ENTRY_CHARGE] * 7
    assert [e.id for e in seen] == sorted(e.id for e in seen)
    cut = seen[4].create_time
    later = await stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B, start_time=cut))
    assert [e.id for e in later.entries] == [e.id for e in seen if e.create_time.ToNanoseconds() >= cut.ToNanoseconds()]
    empty = Timestamp(seconds=1)
    before = await stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B, end_time=empty))
    assert list(before.entries) == []
    await expect_error(
        stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B, start_time=cut, end_time=empty)),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "end_time",
    )


async def _offset_clock(dsn: str, interval: str) -> None:
    database = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER DATABASE \"{database}\" SET agentbudget.clock_offset = '{interval}'")
    finally:
        await conn.close()


async def test_a_new_period_starts_by_itself_with_nothing_spent(authority, stub, dsn):
    await make_budget(stub, limit="10", period=pb.DAILY)
    await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c1", amount=usd("10")))
    first = (await stub.GetBudget(pb.GetBudgetRequest(name=B))).budget
    assert first.phase == pb.EXHAUSTED

    await _offset_clock(dsn, "1 day")  # a day passes: new connections see tomorrow
    later = await app.start(server_settings(sweep_interval_seconds=3600), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{later.port}") as channel:
            tomorrow = pb_grpc.BudgetAuthorityStub(channel)
            shown = (await tomorrow.GetBudget(pb.GetBudgetRequest(name=B))).budget  # a read: nothing written
            assert shown.phase == pb.ACTIVE and nanos(shown.spent) == 0
            assert shown.period_start == first.period_end
            granted = await tomorrow.Reserve(pb.ReserveRequest(budget=B, reservation_id="r1", amount=usd("4")))
            assert granted.reservation.period_start == first.period_end
            assert nanos(granted.remaining) == 6 * UNIT
    finally:
        await later.stop(grace=0.1)
    rows = await ledger_rows(dsn, B)
    assert [r["entry_type"] for r in rows] == ["PERIOD_OPENED", "CHARGE", "PERIOD_OPENED", "HOLD"]
    assert (await events_of(dsn))[-2:] == ["PERIOD_ROLLED", "BUDGET_RESUMED"]
    assert await audit(dsn) == []


async def test_the_sweeper_opens_a_due_period_without_any_call(dsn):
    start = await app.start(server_settings(), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{start.port}") as channel:
            await make_budget(pb_grpc.BudgetAuthorityStub(channel), limit="10", period=pb.WEEKLY)
    finally:
        await start.stop(grace=0.1)
    await _offset_clock(dsn, "7 days")
    later = await app.start(server_settings(), dsn)
    try:
        from conftest import until

        async def rolled() -> bool:
            return "PERIOD_ROLLED" in await events_of(dsn)

        await until(rolled, True)
    finally:
        await later.stop(grace=0.1)
    assert [r["entry_type"] for r in await ledger_rows(dsn, B)] == ["PERIOD_OPENED", "PERIOD_OPENED"]


async def test_time_zones_set_the_period_bounds(stub):
    b = await make_budget(stub, limit="10", period=pb.DAILY, time_zone="Asia/Kolkata")
    start = b.period_start.ToDatetime(tzinfo=UTC)
    assert (start.hour, start.minute) == (18, 30)  # local midnight at +05:30
    assert (b.period_end.ToDatetime(tzinfo=UTC) - start).total_seconds() == 86400
    await expect_error(
        stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=pb.BudgetSpec(limit=usd("1"), time_zone="Mars/Olympus"))),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.time_zone",
    )
    assert datetime.now(UTC) < b.period_end.ToDatetime(tzinfo=UTC)


async def test_agent_principals_are_stored_sorted_and_validated(stub):
    spec = pb.BudgetSpec(
        limit=usd("5"), agent_principals=["system:serviceaccount:team:agent", "apikey:ci", "apikey:ci"]
    )
    await stub.UpsertBudget(pb.UpsertBudgetRequest(name="team/agent", spec=spec))
    got = (await stub.GetBudget(pb.GetBudgetRequest(name="team/agent"))).budget
    assert list(got.spec.agent_principals) == ["apikey:ci", "system:serviceaccount:team:agent"]
    bad = pb.BudgetSpec(limit=usd("5"), agent_principals=["has space"])
    await expect_error(
        stub.UpsertBudget(pb.UpsertBudgetRequest(name="team/agent", spec=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "spec.agent_principals",
    )
