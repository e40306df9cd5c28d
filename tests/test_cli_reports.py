"""``agentbudget report``, ``top`` and ``verify`` from the shell, on the seeded fleet (tests/spend_seed.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server import report_ranges
from conftest import usd
from procs import agentbudget_executable
from spend_seed import (  # noqa: F401 (fixtures)
    MONITOR,
    NOVEMBER_BERLIN_USD,
    NOVEMBER_BY_MODEL,
    NOVEMBER_BY_TASK_TYPE,
    NOVEMBER_USD,
    OPUS,
    RESEARCH,
    SUPPORT,
    fleet,
    fleet_authority,
    fleet_dsn,
    fleet_template,
    november_by_day,
)

NOW = ["--now", "2026-11-25T12:00:00Z"]  # a Wednesday
NOV = ["--period", "2026-11"]


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def lines(self) -> list[str]:
        return self.out.splitlines()


async def cli(*args: str, target: str | None = None) -> Run:
    """The real ``agentbudget`` command, as a child process (the authority keeps serving meanwhile)."""
    command = [agentbudget_executable(), *args]
    if target:
        command += ["--target", target]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def report(fleet_authority):
    target = f"127.0.0.1:{fleet_authority.port}"

    async def run(*args: str) -> Run:
        return await cli("report", *args, target=target)

    return run


def rows(run: Run) -> list[list[str]]:
    """The table's rows under its header, split on runs of two or more spaces."""
    import re

    lines = run.lines()
    header = next(i for i, line in enumerate(lines) if "COST" in line)
    return [
        re.split(r"\s{2,}", line.strip())
        for line in lines[header + 1 :]
        if line.strip() and not line.startswith("(the top")
    ]


# -- the five questions ------------------------------------------------------------------------


async def test_how_much_did_the_research_agent_spend_last_week(report):
    run = await report("--budget", RESEARCH, "--period", "last-week", *NOW)
    assert run.code == 0, run.err
    assert run.lines()[0] == "spend of team/research from 2026-11-16 00:00 to 2026-11-23 00:00 (UTC)"
    assert rows(run) == [["TOTAL", "9.90 USD", "100.0%", "5", "20,000", "5,000"]]


async def test_what_is_the_most_expensive_task_type(report):
    run = await report("--period", "2026-11", "--by", "task_type", "--currency", "USD", "--top", "1")
    assert run.code == 0, run.err
    table = rows(run)
    assert table[0][:3] == ["research", "22.65 USD", "65.5%"]
    assert table[1][:2] == ["TOTAL", "34.60 USD"]  # the total still covers every task type
    assert "(the top 1 of 7 groups; the total covers all)" in run.out


async def test_which_model_drives_the_most_cost(report):
    run = await report("--period", "2026-11", "--by", "model", "--currency", "USD")
    table = rows(run)
    assert [r[0] for r in table] == [OPUS, "claude-sonnet-4-5", "claude-haiku-4-5", "(none)", "TOTAL"]
    assert {r[0]: Decimal(r[1].split()[0]) for r in table[:-1]} == {
        (k or "(none)"): v for k, v in NOVEMBER_BY_MODEL.items()
    }
    assert table[0][2] == "64.3%"


async def test_the_total_for_november(report):
    run = await report("--period", "2026-11")
    assert [r[:2] for r in rows(run)] == [["TOTAL", "34.60 USD"], ["TOTAL", "5.00 EUR"]]
    berlin = await report("--period", "2026-11", "--time-zone", "Europe/Berlin", "--currency", "USD")
    assert berlin.lines()[0].endswith("from 2026-11-01 00:00 to 2026-12-01 00:00 (Europe/Berlin)")
    assert rows(berlin)[0][1] == f"{NOVEMBER_BERLIN_USD} USD"


async def test_how_costs_trend_day_by_day(report):
    run = await report("--period", "2026-11", "--by", "day", "--currency", "USD")
    assert run.code == 0, run.err
    table = rows(run)
    days = [r[0] for r in table[:-1]]
    assert days == sorted(november_by_day())  # a trend reads in time order
    assert {r[0]: Decimal(r[1].split()[0]) for r in table[:-1]} == november_by_day()
    bars = {r[0]: r[-1] for r in table[:-1]}
    assert bars["2026-11-23"] == "█" * 30 and bars["2026-11-02"] == "█" * 27  # 6.00 the most, 5.30 / 6.00 of it
    assert table[-1][:2] == ["TOTAL", "34.60 USD"]
    by_cost = await report("--period", "2026-11", "--by", "day", "--currency", "USD", "--sort", "cost", "--top", "3")
    assert [r[:2] for r in rows(by_cost)[:3]] == [
        ["2026-11-23", "6.00 USD"],
        ["2026-11-16", "5.90 USD"],
        ["2026-11-02", "5.30 USD"],
    ]
    as_csv = await report("--period", "2026-11", "--by", "day", "--currency", "USD", "--format", "csv")
    data = list(csv.DictReader(io.StringIO(as_csv.out)))
    assert {r["day"]: Decimal(r["cost"]) for r in data} == november_by_day()
    assert data[0]["bucket_start"] == "2026-11-02T00:00:00Z"


# -- formats, filters, ranges ------------------------------------------------------------------


async def test_json_output(report):
    run = await report("--period", "2026-11", "--by", "task_type,budget", "--currency", "USD", "--json", "--tasks")
    data = json.loads(run.out)
    assert data["group_by"] == ["task_type", "budget"]
    assert data["start"] == "2026-11-01T00:00:00+00:00" and data["end"] == "2026-12-01T00:00:00+00:00"
    first = data["groups"][0]
    assert first == {
        "task_type": "research",
        "budget": RESEARCH,
        "cost": "22.65",
        "currency": "USD",
        "entries": 7,
        "tasks": 6,
        "input_tokens": 30000,
        "output_tokens": 7000,
        "cache_read_tokens": 4000,
        "cache_write_tokens": 0,
        "sandbox_seconds": "0",
    }
    assert data["totals"][0]["cost"] == "34.60" and data["totals"][0]["tasks"] == 16
    per_type: dict[str, Decimal] = {}
    for g in data["groups"]:
        per_type[g["task_type"]] = per_type.get(g["task_type"], Decimal(0)) + Decimal(g["cost"])
    assert per_type == NOVEMBER_BY_TASK_TYPE
    same = await report("--period", "2026-11", "--by", "task_type,budget", "--currency", "USD", "--format", "json")
    assert json.loads(same.out)["groups"][0]["cost"] == "22.65"


@pytest.mark.parametrize(
    ("args", "total"),
    [
        (["--namespace", "ops", "--currency", "USD", *NOV], "0.90 USD"),
        (["--budget", SUPPORT, "--budget", MONITOR, *NOV], "6.00 USD"),
        (["--kind", "sandbox", *NOV], "1.20 USD"),
        (["--kind", "api", "--kind", "other", *NOV], "0.70 USD"),
        (["--model", OPUS, *NOV], "22.25 USD"),
        (["--task-type", "lookup", "--task-type", "coding", *NOV], "2.45 USD"),
        (["--label", "env=prod", *NOV], "7.05 USD"),
        (["--since", "2026-11-16", "--until", "2026-11-23", "--budget", RESEARCH], "9.90 USD"),
        (["--period", "2026-W47", "--budget", RESEARCH], "9.90 USD"),
        (["--period", "2026-11-02", "--currency", "USD"], "5.30 USD"),
        (["--period", "yesterday", "--currency", "USD", *NOW], "1.40 USD"),  # the 24th
        (["--period", "this-week", "--currency", "USD", *NOW], "7.85 USD"),  # the 23rd to the 29th
        (["--since", "36h", "--currency", "USD", *NOW], "4.85 USD"),  # from the 24th, to now
        (["--period", "2026", "--currency", "USD"], "36.60 USD"),
    ],
)
async def test_filters_and_ranges(report, args, total):
    run = await report(*args)
    assert run.code == 0, run.err
    assert rows(run)[0][1] == total, run.out


async def test_bad_input_exits_2_and_says_why(report):
    for args, said in [
        (["--period", "2026-13"], "--period: '2026-13' is not"),
        (["--period", "2026-11", "--since", "7d"], "cannot be combined"),
        (["--since", "yesterday-ish"], "--since"),
        (["--since", "2026-11-20", "--until", "2026-11-10"], "--until must be after --since"),
        (["--by", "flavour"], "unknown dimension 'flavour'"),
        (["--by", "day,month"], "at most one of SPEND_BY_DAY"),
        (["--kind", "magic"], "unknown kind"),
        (["--label", "no-equals"], "not key=value"),
        (["--time-zone", "Mars/Olympus"], "--time-zone"),
        (["--model", "x" * 300], "models[0]"),
        (["--currency", "usd"], "currency"),
        (["--review", "2026-11"], "--review needs --html"),
    ]:
        run = await report(*args)
        assert run.code == 2 and said in run.err, (args, run.code, run.err)
    missing = await report("--budget", "team/nobody")
    assert missing.code == 1 and "BUDGET_NOT_FOUND" in missing.err


def test_calendar_ranges_follow_the_zone():
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    berlin = report_ranges.period("2026-03", now, "Europe/Berlin")  # DST begins on March 29
    assert berlin == (datetime(2026, 2, 28, 23, tzinfo=UTC), datetime(2026, 3, 31, 22, tzinfo=UTC))
    assert report_ranges.period("2026-W01", now) == (
        datetime(2025, 12, 29, tzinfo=UTC),
        datetime(2026, 1, 5, tzinfo=UTC),
    )
    assert report_ranges.period("last-month", now) == (
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 11, 1, tzinfo=UTC),
    )
    assert report_ranges.period("today", now, "Asia/Kolkata")[0] == datetime(2026, 11, 24, 18, 30, tzinfo=UTC)
    assert report_ranges.instant("12h", now) == datetime(2026, 11, 25, tzinfo=UTC)
    assert report_ranges.instant("2026-11-20T08:00", now, "Europe/Berlin") == datetime(2026, 11, 20, 7, tzinfo=UTC)
    assert report_ranges.resolve(None, None, None, now) == (None, None)
    for bad in ("2026-00", "2026-W54", "someday", "2026-02-30"):
        with pytest.raises(ValueError):
            report_ranges.period(bad, now)


# -- top ---------------------------------------------------------------------------------------


async def test_top_shows_every_budget_with_a_utilization_bar(fleet, fleet_authority):
    # Spend in the current period, so the bars have something to show.
    await fleet.RecordCost(pb.RecordCostRequest(budget=SUPPORT, request_id="now-1", amount=usd("170")))
    await fleet.RecordCost(pb.RecordCostRequest(budget=MONITOR, request_id="now-2", amount=usd("25")))
    await fleet.Reserve(pb.ReserveRequest(budget=RESEARCH, reservation_id="now-3", amount=usd("150")))
    run = await cli("top", "--once", target=f"127.0.0.1:{fleet_authority.port}")
    assert run.code == 0, run.err
    lines = run.lines()
    assert "4 budgets" in lines[0] and "1 warning, 1 exhausted" in lines[0]
    body = {line.split()[0]: line for line in lines[2:]}
    assert list(body) == [MONITOR, SUPPORT, RESEARCH, "ops/eu"]  # most used first
    assert "EXHAUSTED" in body[MONITOR] and "[" + "█" * 24 + "]!" in body[MONITOR] and "125%" in body[MONITOR]
    assert "WARNING" in body[SUPPORT] and "█" * 20 + "░" * 4 in body[SUPPORT] and "85%" in body[SUPPORT]
    assert "▒" * 6 in body[RESEARCH] and "150.00 USD" in body[RESEARCH]  # held, not spent
    assert "\x1b[" not in run.out  # a single frame: no screen control codes


# -- verify ------------------------------------------------------------------------------------


async def test_verify_finds_nothing_wrong_in_a_sound_ledger(fleet, fleet_dsn):
    run = await cli("verify", "--database-url", fleet_dsn)
    assert run.code == 0, run.out + run.err
    assert run.out.startswith("ok: every balance, hold and spend sum matches the ledger")


async def test_verify_catches_a_corrupted_balance(fleet, fleet_dsn):
    conn = await asyncpg.connect(fleet_dsn)
    try:
        await conn.execute(
            "UPDATE budget_periods SET spent_nanos = spent_nanos - 1000000000"
            " WHERE budget_id = (SELECT id FROM budgets WHERE name = $1) AND period_start = '2026-11-01Z'",
            SUPPORT,
        )
    finally:
        await conn.close()
    run = await cli("verify", "--database-url", fleet_dsn)
    assert run.code == 1
    assert "1 period balances differ from their ledger" in run.out
    line = next(line for line in run.out.splitlines() if line.startswith(SUPPORT))
    assert "2026-11-01" in line and "4.10 / 5.10" in line  # stored / ledger
    assert "MISMATCH" in run.out.splitlines()[-1]
    as_json = json.loads((await cli("verify", "--database-url", fleet_dsn, "--json")).out)
    assert as_json["ok"] is False and as_json["balances"][0]["name"] == SUPPORT


async def test_verify_catches_a_hold_and_a_rollup_that_disagree_with_the_ledger(fleet, fleet_dsn):
    conn = await asyncpg.connect(fleet_dsn)
    try:
        await conn.execute("UPDATE reservations SET state = 'ACTIVE' WHERE reservation_id = 'released'")
        await conn.execute("UPDATE spend_daily SET cost_nanos = cost_nanos + 1 WHERE day = '2026-11-05'")
    finally:
        await conn.close()
    run = await cli("verify", "--database-url", fleet_dsn)
    assert run.code == 1
    assert "holds disagree with their ledger rows" in run.out and "released" in run.out
    assert "spend rollup rows differ from the ledger" in run.out and "2026-11-05" in run.out
