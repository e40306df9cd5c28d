"""QuerySpend on a month of a fleet's spending (tests/spend_seed.py), seeded through the gRPC API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest
from agentbudget.client import to_decimal
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import sql
from agentbudget_server.spend import Dimension, SpendQuery, plan
from conftest import audit, expect_error, ledger_rows
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spend_seed import (  # noqa: F401 (fixtures)
    COSTS,
    HAIKU,
    MONITOR,
    NOVEMBER_BERLIN_USD,
    NOVEMBER_BY_BUDGET,
    NOVEMBER_BY_MODEL,
    NOVEMBER_BY_TASK_TYPE,
    NOVEMBER_ENTRIES_USD,
    NOVEMBER_EUR,
    NOVEMBER_USD,
    OPUS,
    RESEARCH,
    RESEARCH_LAST_WEEK,
    SONNET,
    SUPPORT,
    fleet,
    fleet_authority,
    fleet_dsn,
    fleet_template,
    november_by_day,
)

Code = grpc.StatusCode
INVALID = (Code.INVALID_ARGUMENT, "INVALID_FIELD")
NOV = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def ts(value: datetime | str) -> Timestamp:
    if isinstance(value, str):
        value = datetime.fromisoformat(value).replace(tzinfo=UTC) if "+" not in value else datetime.fromisoformat(value)
    out = Timestamp()
    out.FromDatetime(value)
    return out


def q(start: datetime | str | None = NOV[0], end: datetime | str | None = NOV[1], **kw: object) -> pb.QuerySpendRequest:
    req = pb.QuerySpendRequest(**kw)  # type: ignore[arg-type]
    if start is not None:
        req.start_time.CopyFrom(ts(start))
    if end is not None:
        req.end_time.CopyFrom(ts(end))
    return req


def costs(groups: object, key: str) -> dict[str, Decimal]:
    return {getattr(g, key): to_decimal(g.cost) for g in groups}  # type: ignore[attr-defined]


def totals(resp: pb.QuerySpendResponse) -> dict[str, Decimal]:
    return {t.cost.currency_code: to_decimal(t.cost) for t in resp.totals}


# -- the five questions ------------------------------------------------------------------------


async def test_how_much_did_the_research_agent_spend_last_week(fleet):
    resp = await fleet.QuerySpend(q("2026-11-16", "2026-11-23", budgets=[RESEARCH]))
    assert totals(resp) == {"USD": RESEARCH_LAST_WEEK}
    assert resp.totals[0].entries == 5 and resp.totals[0].input_tokens == 20_000


async def test_what_is_the_most_expensive_task_type(fleet):
    resp = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_TASK_TYPE], currency="USD"))
    assert resp.groups[0].task_type == "research" and to_decimal(resp.groups[0].cost) == Decimal("22.65")
    assert costs(resp.groups, "task_type") == NOVEMBER_BY_TASK_TYPE
    assert [to_decimal(g.cost) for g in resp.groups] == sorted(NOVEMBER_BY_TASK_TYPE.values(), reverse=True)


async def test_which_model_drives_the_most_cost(fleet):
    resp = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_MODEL], currency="USD"))
    assert resp.groups[0].model == OPUS
    assert costs(resp.groups, "model") == NOVEMBER_BY_MODEL
    opus = resp.groups[0]
    assert opus.entries == 6 and opus.input_tokens == 30_000 and opus.output_tokens == 7_000
    assert opus.cache_read_tokens == 4_000


async def test_the_total_for_november(fleet):
    resp = await fleet.QuerySpend(q())
    assert totals(resp) == {"USD": NOVEMBER_USD, "EUR": NOVEMBER_EUR}  # never added across currencies
    usd_total = next(t for t in resp.totals if t.cost.currency_code == "USD")
    assert usd_total.entries == NOVEMBER_ENTRIES_USD
    assert usd_total.sandbox_time.seconds == 600
    assert [g.cost.currency_code for g in resp.groups] == ["USD", "EUR"]  # no dimension: one group per currency
    assert resp.group_count == 2


async def test_how_costs_trend_day_by_day(fleet):
    resp = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_DAY], currency="USD"))
    by_day = costs(resp.groups, "bucket")
    assert by_day == november_by_day()
    assert by_day["2026-11-02"] == Decimal("5.30") and by_day["2026-11-30"] == Decimal("2.00")
    assert sum(by_day.values()) == NOVEMBER_USD
    day = next(g for g in resp.groups if g.bucket == "2026-11-16")
    assert day.bucket_start.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 16, tzinfo=UTC)


# -- what spend is -----------------------------------------------------------------------------


async def test_only_commits_and_charges_are_spend(fleet, fleet_dsn):
    every = await fleet.QuerySpend(pb.QuerySpendRequest())  # all time
    expected: dict[str, Decimal] = {}
    for c in COSTS:
        expected[c.currency] = expected.get(c.currency, Decimal(0)) + Decimal(c.amount)
    assert totals(every) == expected
    kinds = {r["entry_type"] for r in await ledger_rows(fleet_dsn, RESEARCH)}
    assert {"HOLD", "RELEASE", "EXPIRY", "TRANSFER_OUT", "LIMIT_CHANGED", "PERIOD_OPENED"} <= kinds  # yet not spend
    assert await audit(fleet_dsn) == []


async def test_the_rollup_is_the_sum_of_the_ledger(fleet, fleet_dsn):
    conn = await asyncpg.connect(fleet_dsn)
    try:
        assert await conn.fetch(sql.QUERIES["audit_spend_rollup"]) == []
        assert await conn.fetch(sql.QUERIES["audit_holds"]) == []
        daily = await conn.fetchval("SELECT count(*) FROM spend_daily")
        assert daily > 0
    finally:
        await conn.close()


# -- grouping ----------------------------------------------------------------------------------


async def test_groups_of_several_dimensions(fleet):
    resp = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_BUDGET, pb.SPEND_BY_MODEL], currency="USD"))
    pairs = {(g.budget, g.model): to_decimal(g.cost) for g in resp.groups}
    assert pairs[(RESEARCH, OPUS)] == Decimal("22.25")
    assert pairs[(RESEARCH, "")] == Decimal("1.60")  # the sandbox and the API call
    assert pairs[(SUPPORT, SONNET)] == Decimal("3.10")
    assert pairs[(MONITOR, HAIKU)] == Decimal("0.90")
    assert sum(pairs.values()) == NOVEMBER_USD and resp.group_count == len(pairs)
    for g in resp.groups:  # only the dimensions asked for are set
        assert not g.task_type and not g.bucket and g.kind == pb.COST_KIND_UNSPECIFIED

    by_budget = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_BUDGET], currency="USD"))
    assert costs(by_budget.groups, "budget") == NOVEMBER_BY_BUDGET

    kinds = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_KIND], currency="USD"))
    assert {g.kind: to_decimal(g.cost) for g in kinds.groups} == {
        pb.MODEL_INFERENCE: Decimal("32.70"),
        pb.SANDBOX: Decimal("1.20"),
        pb.EXTERNAL_API: Decimal("0.40"),
        pb.OTHER: Decimal("0.30"),
    }

    three = await fleet.QuerySpend(
        q(group_by=[pb.SPEND_BY_BUDGET, pb.SPEND_BY_TASK_TYPE, pb.SPEND_BY_WEEK], currency="USD")
    )
    key = {(g.budget, g.task_type, g.bucket): to_decimal(g.cost) for g in three.groups}
    assert key[(RESEARCH, "research", "2026-W47")] == Decimal("7.65")  # 5.00 + 0.40 + 2.25
    assert key[(RESEARCH, "research", "2026-W48")] == Decimal("6.00")
    assert key[(RESEARCH, "research", "2026-W49")] == Decimal("2.00")  # Monday the 30th
    assert sum(key.values()) == NOVEMBER_USD


async def test_most_expensive_first_and_ties_by_key(fleet):
    resp = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_DAY], budgets=[RESEARCH]))
    order = [(g.bucket, to_decimal(g.cost)) for g in resp.groups]
    assert order == sorted(order, key=lambda x: (-x[1], x[0]))
    assert [day for day, cost in order if cost == Decimal("2.00")] == ["2026-11-15", "2026-11-30"]


async def test_weeks_and_months(fleet):
    months = await fleet.QuerySpend(pb.QuerySpendRequest(group_by=[pb.SPEND_BY_MONTH], currency="USD"))
    assert costs(months.groups, "bucket") == {
        "2026-11": NOVEMBER_USD,
        "2026-10": Decimal("1.00"),
        "2026-12": Decimal("1.00"),
    }
    weeks = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_WEEK], budgets=[RESEARCH]))
    assert costs(weeks.groups, "bucket")["2026-W47"] == RESEARCH_LAST_WEEK
    first = next(g for g in weeks.groups if g.bucket == "2026-W47")
    assert first.bucket_start.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 16, tzinfo=UTC)


async def test_buckets_in_a_time_zone(fleet):
    berlin = "Europe/Berlin"
    start, end = "2026-10-31T23:00:00+00:00", "2026-11-30T23:00:00+00:00"  # November, in Berlin
    month = await fleet.QuerySpend(q(start, end, group_by=[pb.SPEND_BY_MONTH], time_zone=berlin, currency="USD"))
    assert [(g.bucket, to_decimal(g.cost)) for g in month.groups] == [("2026-11", NOVEMBER_BERLIN_USD)]
    assert month.groups[0].bucket_start.ToDatetime(tzinfo=UTC) == datetime(2026, 10, 31, 23, tzinfo=UTC)
    days = await fleet.QuerySpend(q(start, end, group_by=[pb.SPEND_BY_DAY], time_zone=berlin, budgets=[RESEARCH]))
    by_day = costs(days.groups, "bucket")
    assert by_day["2026-11-01"] == Decimal("1.00")  # 23:30 UTC on October 31
    assert by_day["2026-11-23"] == Decimal("6.75")  # 23:00 UTC on the 22nd is midnight in Berlin
    assert "2026-11-30" not in by_day  # 23:30 UTC on the 30th is December 1st there


# -- filters -----------------------------------------------------------------------------------


async def test_filters(fleet):
    async def total(**kw: object) -> dict[str, Decimal]:
        return totals(await fleet.QuerySpend(q(**kw)))

    assert await total(namespace="ops") == {"USD": Decimal("0.90"), "EUR": NOVEMBER_EUR}
    assert await total(budgets=[SUPPORT, MONITOR]) == {"USD": Decimal("6.00")}
    assert await total(kinds=[pb.SANDBOX]) == {"USD": Decimal("1.20")}
    assert await total(kinds=[pb.EXTERNAL_API, pb.OTHER]) == {"USD": Decimal("0.70")}
    assert await total(models=[""], currency="USD") == {"USD": Decimal("1.90")}  # recorded without a model
    assert await total(models=[SONNET]) == {"USD": Decimal("6.60"), "EUR": NOVEMBER_EUR}
    assert await total(task_types=["lookup", "coding"]) == {"USD": Decimal("2.45")}
    assert await total(labels={"env": "prod"}) == {"USD": Decimal("7.05")}  # 4.00 + 0.80 + 2.25
    assert await total(labels={"env": "prod"}, budgets=[RESEARCH]) == {"USD": Decimal("6.25")}
    assert await total(currency="EUR") == {"EUR": NOVEMBER_EUR}
    assert await total(budgets=[RESEARCH], task_types=["nothing-like-this"]) == {}
    deleted = await fleet.DeleteBudget(pb.DeleteBudgetRequest(name=MONITOR))
    assert deleted.deleted
    assert await total(budgets=[MONITOR]) == {"USD": Decimal("0.90")}  # its spend stays reportable


async def test_sub_day_ranges_read_the_edges_from_the_ledger(fleet):
    resp = await fleet.QuerySpend(q("2026-11-02T12:01:00", "2026-11-16T12:00:01", budgets=[RESEARCH]))
    # 0.50 at 12:05 on the 2nd ... 5.00 at 12:00 on the 16th, both inside; 4.00 at 12:00 on the 2nd not.
    assert totals(resp) == {
        "USD": Decimal("0.50") + Decimal("1.20") + Decimal("3.00") + Decimal("2.00") + Decimal("5.00")
    }


async def test_distinct_tasks_are_counted(fleet):
    resp = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_BUDGET], count_tasks=True, currency="USD"))
    tasks = {g.budget: g.tasks for g in resp.groups}
    assert tasks == {RESEARCH: 7, SUPPORT: 5, MONITOR: 4}  # r-1..r-7, s-1..s-5, m-1..m-4
    assert resp.totals[0].tasks == 16
    by_type = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_TASK_TYPE], count_tasks=True, currency="USD"))
    assert {g.task_type: g.tasks for g in by_type.groups}["research"] == 6  # r-1, r-2, r-4, r-5, r-6, r-7


async def test_top_n_and_pages(fleet):
    top2 = await fleet.QuerySpend(q(group_by=[pb.SPEND_BY_TASK_TYPE], currency="USD", page_size=2))
    assert [g.task_type for g in top2.groups] == ["research", "analysis"]
    assert top2.group_count == 7 and top2.next_page_token
    assert totals(top2) == {"USD": NOVEMBER_USD}  # the total covers every page
    seen = list(top2.groups)
    token = top2.next_page_token
    while token:
        page = await fleet.QuerySpend(
            q(group_by=[pb.SPEND_BY_TASK_TYPE], currency="USD", page_size=2, page_token=token)
        )
        seen.extend(page.groups)
        token = page.next_page_token
    assert costs(seen, "task_type") == NOVEMBER_BY_TASK_TYPE and len(seen) == 7
    await expect_error(
        fleet.QuerySpend(q(group_by=[pb.SPEND_BY_MODEL], page_token=top2.next_page_token)), *INVALID, field="page_token"
    )


# -- the rollup answers what the ledger answers ------------------------------------------------

RANGES = [
    (None, None),
    (NOV[0], NOV[1]),
    ("2026-11-02T12:01:00", "2026-11-16T12:00:01"),
    ("2026-10-31T23:00:00", "2026-12-01T06:00:00"),
    ("2026-11-05", None),
    (None, "2026-11-20T00:00:00.5"),
    ("2026-11-16T11:00:00", "2026-11-16T13:00:00"),
]
GROUPINGS = [
    [],
    [pb.SPEND_BY_BUDGET],
    [pb.SPEND_BY_MODEL, pb.SPEND_BY_KIND],
    [pb.SPEND_BY_DAY],
    [pb.SPEND_BY_BUDGET, pb.SPEND_BY_WEEK],
    [pb.SPEND_BY_TASK_TYPE, pb.SPEND_BY_MONTH],
]


def _sums(resp: pb.QuerySpendResponse) -> list[tuple[object, ...]]:
    return [
        (
            g.budget,
            g.model,
            g.task_type,
            g.kind,
            g.bucket,
            g.cost.currency_code,
            to_decimal(g.cost),
            g.entries,
            g.input_tokens,
            g.output_tokens,
            g.cache_read_tokens,
            g.sandbox_time.seconds,
        )
        for g in list(resp.groups) + list(resp.totals)
    ]


async def test_the_rollup_and_the_ledger_give_the_same_answers(fleet):
    for start, end in RANGES:
        for by in GROUPINGS:
            fast = await fleet.QuerySpend(q(start, end, group_by=by))
            # Counting tasks reads every cost from the ledger itself.
            slow = await fleet.QuerySpend(q(start, end, group_by=by, count_tasks=True))
            assert _sums(fast) == _sums(slow), (start, end, by)


def test_the_plan_splits_a_range_into_ledger_days_and_months():
    utc = UTC
    p = plan(SpendQuery(start=datetime(2026, 9, 20, 6, tzinfo=utc), end=datetime(2026, 12, 3, 1, tzinfo=utc)))
    assert p.months == (datetime(2026, 10, 1).date(), datetime(2026, 12, 1).date())
    assert p.days == (
        (datetime(2026, 9, 21).date(), datetime(2026, 10, 1).date()),
        (datetime(2026, 12, 1).date(), datetime(2026, 12, 3).date()),
    )
    assert p.ledger == (
        (datetime(2026, 9, 20, 6, tzinfo=utc), datetime(2026, 9, 21, tzinfo=utc)),
        (datetime(2026, 12, 3, tzinfo=utc), datetime(2026, 12, 3, 1, tzinfo=utc)),
    )
    by_day = plan(SpendQuery(start=NOV[0], end=NOV[1], group_by=(Dimension.DAY,)))
    assert by_day.days[0] == (NOV[0].date(), NOV[1].date()) and by_day.months[0] == by_day.months[1]
    zoned = plan(SpendQuery(start=NOV[0], end=NOV[1], group_by=(Dimension.DAY,), time_zone="Europe/Berlin"))
    assert zoned.ledger[0] == NOV and zoned.days[0][0] == zoned.days[0][1]
    labelled = plan(SpendQuery(labels=(("env", "prod"),)))
    assert labelled.ledger[0][1] > datetime(9999, 1, 1, tzinfo=utc) and labelled.months[0] == labelled.months[1]
    within_a_day = plan(SpendQuery(start=NOV[0] + timedelta(hours=1), end=NOV[0] + timedelta(hours=2)))
    assert within_a_day.ledger[0] == (NOV[0] + timedelta(hours=1), NOV[0] + timedelta(hours=2))


# -- bad input ---------------------------------------------------------------------------------

BAD = [
    (pb.QuerySpendRequest(budgets=["no-slash"]), "budgets[0]"),
    (pb.QuerySpendRequest(budgets=["team/ok", "Team/Bad"]), "budgets[1]"),
    (pb.QuerySpendRequest(namespace="Not_A_Namespace"), "namespace"),
    (pb.QuerySpendRequest(kinds=[42]), "kinds[0]"),
    (pb.QuerySpendRequest(models=["x" * 201]), "models[0]"),
    (pb.QuerySpendRequest(task_types=["ok", "nul\x00"]), "task_types[1]"),
    (pb.QuerySpendRequest(labels={"bad key!": "v"}), "labels['bad key!']"),
    (pb.QuerySpendRequest(labels={f"k{i}": "v" for i in range(33)}), "labels"),
    (q(NOV[1], NOV[0]), "end_time"),
    (q(NOV[0], NOV[0]), "end_time"),
    (pb.QuerySpendRequest(start_time=Timestamp(seconds=-(10**12))), "start_time"),
    (pb.QuerySpendRequest(end_time=Timestamp(seconds=10**12)), "end_time"),
    (pb.QuerySpendRequest(group_by=[99]), "group_by[0]"),
    (pb.QuerySpendRequest(group_by=[pb.SPEND_DIMENSION_UNSPECIFIED]), "group_by[0]"),
    (pb.QuerySpendRequest(group_by=[pb.SPEND_BY_MODEL, pb.SPEND_BY_MODEL]), "group_by[1]"),
    (pb.QuerySpendRequest(group_by=[pb.SPEND_BY_DAY, pb.SPEND_BY_MONTH]), "group_by"),
    (pb.QuerySpendRequest(time_zone="Mars/Olympus_Mons"), "time_zone"),
    (pb.QuerySpendRequest(time_zone="../../etc/passwd"), "time_zone"),
    (pb.QuerySpendRequest(currency="usd"), "currency"),
    (pb.QuerySpendRequest(page_size=1001), "page_size"),
    (pb.QuerySpendRequest(page_size=-1), "page_size"),
    (pb.QuerySpendRequest(page_token="not-a-token"), "page_token"),
]


@pytest.mark.parametrize(("request_", "field"), BAD, ids=[f for _, f in BAD])
async def test_each_malformed_field_is_named(stub, request_, field):
    await expect_error(stub.QuerySpend(request_), *INVALID, field=field)


async def test_an_unknown_budget_is_not_found(stub):
    meta = await expect_error(
        stub.QuerySpend(pb.QuerySpendRequest(budgets=["team/nobody"])), Code.NOT_FOUND, "BUDGET_NOT_FOUND"
    )
    assert meta["budget"] == "team/nobody"


async def test_an_empty_ledger_reports_nothing(stub):
    resp = await stub.QuerySpend(pb.QuerySpendRequest(group_by=[pb.SPEND_BY_MODEL]))
    assert list(resp.groups) == [] and list(resp.totals) == [] and resp.group_count == 0


DIMENSIONS = st.lists(st.sampled_from(list(pb.SpendDimension.values())), max_size=4)
INSTANTS = st.one_of(st.none(), st.integers(min_value=-(2**40), max_value=2**40).map(lambda s: Timestamp(seconds=s)))
REQUESTS = st.builds(
    pb.QuerySpendRequest,
    group_by=DIMENSIONS,
    start_time=INSTANTS,
    end_time=INSTANTS,
    time_zone=st.sampled_from(["", "UTC", "Asia/Kolkata", "America/St_Johns", "Nowhere/Else", "\x00", "America"]),
    page_size=st.integers(min_value=-5, max_value=1200),
    count_tasks=st.booleans(),
    labels=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
    models=st.lists(st.text(max_size=3), max_size=2),
    kinds=st.lists(st.integers(min_value=0, max_value=6), max_size=2),
    currency=st.sampled_from(["", "USD", "EUR", "usd", "US"]),
)


def test_any_request_is_answered_or_refused_as_invalid(authority, stub):
    loop = asyncio.get_event_loop()
    seen: set[Code] = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(REQUESTS)
    def check(request: pb.QuerySpendRequest) -> None:
        try:
            loop.run_until_complete(stub.QuerySpend(request))
            seen.add(Code.OK)
        except grpc.aio.AioRpcError as err:
            assert err.code() == Code.INVALID_ARGUMENT, f"{err.code()}: {err.details()} for {request}"
            seen.add(err.code())

    check()
    assert seen == {Code.OK, Code.INVALID_ARGUMENT}


async def test_the_migration_rolls_up_a_ledger_that_existed_before_it(fresh_db):
    migrations = sql.migrations()
    conn = await asyncpg.connect(fresh_db)
    try:
        for version, text in migrations:
            if version.startswith("0003"):
                break
            await conn.execute(text)
        await conn.execute(
            "INSERT INTO budgets (name, currency, limit_nanos, period, thresholds_ppm, period_start, period_end)"
            " VALUES ('a/b', 'USD', 10, 'MONTHLY', '{}', '2026-11-01Z', '2026-12-01Z')"
        )
        await conn.execute(
            "INSERT INTO budget_periods (budget_id, period_start, period_end, limit_nanos, phase)"
            " SELECT id, period_start, period_end, 10, 'ACTIVE' FROM budgets"
        )
        await conn.execute(
            "INSERT INTO ledger_entries"
            " (budget_id, period_start, entry_type, created_at, spent_delta, held_delta, model)"
            " SELECT id, period_start, t, at::timestamptz, s, h, 'm' FROM budgets, (VALUES"
            " ('HOLD', '2026-11-02Z', 0, 5), ('COMMIT', '2026-11-02Z', 3, -5), ('CHARGE', '2026-11-03Z', 2, 0))"
            " AS v (t, at, s, h)"
        )
        for version, text in migrations:
            if version >= "0003":
                await conn.execute(text)
        assert await conn.fetch(sql.QUERIES["audit_spend_rollup"]) == []
        rows = await conn.fetch("SELECT day, cost_nanos, entries FROM spend_daily ORDER BY day")
        assert [(str(r["day"]), int(r["cost_nanos"]), r["entries"]) for r in rows] == [
            ("2026-11-02", 3, 1),
            ("2026-11-03", 2, 1),
        ]
        # A multi-row insert after the migration: one statement, one upsert per key.
        await conn.execute(
            "INSERT INTO ledger_entries (budget_id, period_start, entry_type, created_at, spent_delta, model)"
            " SELECT id, period_start, 'CHARGE', '2026-11-03Z', n, 'm' FROM budgets, generate_series(1, 100) n"
        )
        assert await conn.fetchval("SELECT cost_nanos FROM spend_monthly") == 5 + 5050
        assert await conn.fetch(sql.QUERIES["audit_spend_rollup"]) == []
    finally:
        await conn.close()
