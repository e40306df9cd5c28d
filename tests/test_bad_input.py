"""Bad input gets a clear INVALID_ARGUMENT naming the field, never UNKNOWN / INTERNAL, and loses nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from agentbudget.errors import error_info
from agentbudget.v1 import budget_authority_pb2 as pb
from conftest import expect_error, ledger_rows, make_budget, usd
from google.protobuf.duration_pb2 import Duration
from google.type.money_pb2 import Money
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

B = "team/agent"
Code = grpc.StatusCode
INVALID = (Code.INVALID_ARGUMENT, "INVALID_FIELD")


def r(**kw: object) -> pb.ReserveRequest:
    base: dict[str, object] = {"budget": B, "reservation_id": "r1", "amount": usd("1")}
    base.update(kw)
    return pb.ReserveRequest(**base)


RESERVE_CASES = [
    (r(amount=Money(currency_code="USD", units=-1)), "amount"),
    (r(amount=Money(currency_code="USD")), "amount"),
    (r(amount=Money(currency_code="USD", units=1, nanos=-5)), "amount"),
    (r(amount=Money(currency_code="USD", nanos=1_000_000_000)), "amount"),
    (r(amount=Money(currency_code="usd", units=1)), "amount.currency_code"),
    (r(amount=Money(currency_code="", units=1)), "amount.currency_code"),
    (pb.ReserveRequest(budget=B, reservation_id="r1"), "amount"),
    (r(budget=""), "budget"),
    (r(budget="no-slash"), "budget"),
    (r(budget="Team/Agent"), "budget"),
    (r(budget="team/" + "a" * 300), "budget"),
    (r(reservation_id=""), "reservation_id"),
    (r(reservation_id="has space"), "reservation_id"),
    (r(reservation_id="x" * 129), "reservation_id"),
    (r(reservation_id="nul\x00byte"), "reservation_id"),
    (r(ttl=Duration(seconds=0)), "ttl"),
    (r(details=pb.CostDetails(input_tokens=-1)), "details.input_tokens"),
    (r(details=pb.CostDetails(output_tokens=10**13)), "details.output_tokens"),
    (r(details=pb.CostDetails(task_id="t" * 257)), "details.task_id"),
    (r(details=pb.CostDetails(model="gpt\x00")), "details.model"),
    (r(details=pb.CostDetails(kind=42)), "details.kind"),
    (r(details=pb.CostDetails(sandbox_time=Duration(seconds=-1))), "details.sandbox_time"),
    (r(details=pb.CostDetails(labels={"bad key!": "v"})), "details.labels['bad key!']"),
    (r(details=pb.CostDetails(labels={f"k{i}": "v" for i in range(33)})), "details.labels"),
]


@pytest.mark.parametrize(("request_", "field"), RESERVE_CASES, ids=[f for _, f in RESERVE_CASES])
async def test_each_malformed_reserve_field_is_named(stub, dsn, request_, field):
    await make_budget(stub)
    await expect_error(stub.Reserve(request_), *INVALID, field=field)
    assert len(await ledger_rows(dsn, B)) == 1  # nothing but the period's opening


async def test_amounts_beyond_the_exact_range_are_an_overflow(stub):
    await make_budget(stub)
    huge = Money(currency_code="USD", units=10**10)
    await expect_error(stub.Reserve(r(amount=huge)), Code.INVALID_ARGUMENT, "AMOUNT_OVERFLOW", "amount")
    spec = pb.BudgetSpec(limit=Money(currency_code="USD", units=9_223_372_036))
    await expect_error(
        stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=spec)),
        Code.INVALID_ARGUMENT,
        "AMOUNT_OVERFLOW",
        "spec.limit",
    )


async def test_overrun_sums_that_would_overflow_the_ledger_are_refused(stub, dsn):
    await make_budget(stub, limit="1")
    big = Money(currency_code="USD", units=999_999_999)
    for i in range(9):
        await stub.RecordCost(pb.RecordCostRequest(budget=B, request_id=f"c{i}", amount=big))
    before = len(await ledger_rows(dsn, B))
    await expect_error(
        stub.RecordCost(pb.RecordCostRequest(budget=B, request_id="c9", amount=big)),
        Code.INVALID_ARGUMENT,
        "AMOUNT_OVERFLOW",
    )
    assert len(await ledger_rows(dsn, B)) == before


SPEC_CASES = [
    (pb.BudgetSpec(), "spec.limit"),
    (pb.BudgetSpec(limit=usd("1"), period=9), "spec.period"),
    (pb.BudgetSpec(limit=usd("1"), alert_thresholds=[1.0]), "spec.alert_thresholds"),
    (pb.BudgetSpec(limit=usd("1"), alert_thresholds=[0.0]), "spec.alert_thresholds"),
    (pb.BudgetSpec(limit=usd("1"), alert_thresholds=[float("nan")]), "spec.alert_thresholds"),
    (pb.BudgetSpec(limit=usd("1"), time_zone="../../etc/passwd"), "spec.time_zone"),
    (pb.BudgetSpec(limit=Money(currency_code="USD", units=-1)), "spec.limit"),
]


@pytest.mark.parametrize(("spec", "field"), SPEC_CASES, ids=[f for _, f in SPEC_CASES])
async def test_each_malformed_spec_field_is_named(stub, spec, field):
    await expect_error(stub.UpsertBudget(pb.UpsertBudgetRequest(name=B, spec=spec)), *INVALID, field=field)


async def test_other_rpcs_name_their_bad_fields(stub):
    await expect_error(stub.UpsertBudget(pb.UpsertBudgetRequest(name=B)), *INVALID, field="spec")
    await expect_error(stub.GetBudget(pb.GetBudgetRequest(name="x")), *INVALID, field="name")
    await expect_error(stub.DeleteBudget(pb.DeleteBudgetRequest(name="")), *INVALID, field="name")
    await expect_error(
        stub.Commit(pb.CommitRequest(budget=B, reservation_id="r1", actual=Money(currency_code="USD", units=-1))),
        *INVALID,
        field="actual",
    )
    await expect_error(stub.Release(pb.ReleaseRequest(budget=B)), *INVALID, field="reservation_id")
    await expect_error(stub.RecordCost(pb.RecordCostRequest(budget=B, amount=usd("1"))), *INVALID, field="request_id")
    await expect_error(
        stub.Transfer(pb.TransferRequest(request_id="t", from_budget=B, to_budget="x/y")),
        *INVALID,
        field="amount",
    )
    await expect_error(stub.ListBudgets(pb.ListBudgetsRequest(page_size=5000)), *INVALID, field="page_size")
    await expect_error(stub.ListBudgets(pb.ListBudgetsRequest(namespace="Bad_NS")), *INVALID, field="namespace")
    await expect_error(
        stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=B, page_size=-1)),
        *INVALID,
        field="page_size",
    )


texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["team/agent", "", "a/b", "team/agent\x00", "x" * 400, "r-1", "ü/ß"]),
)
moneys = st.builds(
    Money,
    currency_code=st.sampled_from(["USD", "EUR", "", "usd", "US"]),
    units=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    nanos=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
durations = st.builds(
    Duration,
    seconds=st.integers(min_value=-(10**6), max_value=10**6),
    nanos=st.integers(min_value=-999_999_999, max_value=999_999_999),
)
cost_details = st.builds(
    pb.CostDetails,
    kind=st.integers(min_value=0, max_value=6),
    model=texts,
    input_tokens=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    output_tokens=st.integers(min_value=-5, max_value=10**13),
    task_id=texts,
    labels=st.dictionaries(texts, texts, max_size=3),
)
requests = st.one_of(
    st.builds(
        pb.ReserveRequest,
        budget=texts,
        reservation_id=texts,
        amount=moneys,
        ttl=durations,
        details=cost_details,
    ),
    st.builds(pb.CommitRequest, budget=texts, reservation_id=texts, actual=moneys, details=cost_details),
    st.builds(pb.ReleaseRequest, budget=texts, reservation_id=texts),
    st.builds(pb.RecordCostRequest, budget=texts, request_id=texts, amount=moneys, details=cost_details),
    st.builds(pb.TransferRequest, request_id=texts, from_budget=texts, to_budget=texts, amount=moneys, reason=texts),
    st.builds(
        pb.UpsertBudgetRequest,
        name=texts,
        spec=st.builds(
            pb.BudgetSpec,
            limit=moneys,
            period=st.integers(min_value=0, max_value=5),
            time_zone=texts,
            alert_thresholds=st.lists(st.floats(allow_nan=True), max_size=3),
        ),
    ),
    st.builds(pb.ListLedgerEntriesRequest, budget=texts, page_size=st.integers(-10, 2000), page_token=texts),
    st.builds(pb.ListBudgetsRequest, namespace=texts, page_size=st.integers(-10, 2000), page_token=texts),
)
METHODS = {
    pb.ReserveRequest: "Reserve",
    pb.CommitRequest: "Commit",
    pb.ReleaseRequest: "Release",
    pb.RecordCostRequest: "RecordCost",
    pb.TransferRequest: "Transfer",
    pb.UpsertBudgetRequest: "UpsertBudget",
    pb.ListLedgerEntriesRequest: "ListLedgerEntries",
    pb.ListBudgetsRequest: "ListBudgets",
}
ALLOWED = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION,
    Code.ALREADY_EXISTS,
}


def test_random_request_fields_never_surface_as_unknown_or_internal(authority, stub):
    """Hypothesis drives random fields through the real server; every failure is a caller error with one ErrorInfo."""
    loop = asyncio.get_event_loop()
    loop.run_until_complete(make_budget(stub))
    seen: set[Code] = set()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(requests)
    def check(request: object) -> None:
        method = getattr(stub, METHODS[type(request)])
        try:
            loop.run_until_complete(method(request))
            seen.add(Code.OK)
        except grpc.aio.AioRpcError as err:
            assert err.code() in ALLOWED, f"{err.code()}: {err.details()} for {request}"
            info = error_info(err)
            assert info is not None and info.reason and info.domain == "agentbudget.io"
            seen.add(err.code())

    check()
    assert Code.INVALID_ARGUMENT in seen
