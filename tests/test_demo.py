"""The five-agent demo: its story happens, through the real authority, and the books balance."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
from decimal import Decimal

import asyncpg
from agentbudget_server import demo_story as story
from conftest import ADMIN_DSN
from procs import agentbudget_executable


def test_the_coordinator_tops_up_priority_agents_within_its_means():
    ceo = story.Coordinator()
    priority = {"demo/research": True, "demo/monitor": False}
    assert ceo.on_denial("demo/research", priority, Decimal(30)) == story.TOP_UP
    assert ceo.on_denial("demo/monitor", priority, Decimal(30)) is None  # not a priority: a human decides
    assert ceo.on_denial(story.COORDINATOR, priority | {story.COORDINATOR: True}, Decimal(30)) is None
    assert ceo.on_denial("demo/research", priority, story.KEEP + story.TOP_UP - Decimal("0.01")) is None
    assert ceo.on_denial("demo/research", priority, Decimal(30)) == story.TOP_UP
    assert ceo.on_denial("demo/research", priority, Decimal(30)) is None  # at most MAX_TOP_UPS
    assert ceo.top_ups == {"demo/research": story.MAX_TOP_UPS}


def test_plans_are_the_same_for_a_seed_and_stay_within_their_ranges():
    for agent in story.CAST:
        tasks = story.plan(agent, 7)
        assert tasks == story.plan(agent, 7) and len(tasks) == agent.tasks
        assert tasks != story.plan(agent, 8)
        for u in tasks:
            w = u.work
            assert w.input_tokens[0] <= u.input_tokens <= w.input_tokens[1]
            assert u.output_tokens <= w.max_output  # the hold's worst case covers what is used
            assert u.cache_read_tokens <= u.input_tokens
    rng = random.Random(1)
    assert story.sample(story.LOOKUP, rng).sandbox_seconds == 0


def test_the_bar_shows_the_share_of_the_limit():
    assert story.bar(Decimal(5), Decimal(10), width=10) == "#####....."
    assert story.bar(Decimal(12), Decimal(10), width=10) == "#" * 10  # an overrun fills it, no more


def test_the_demo_tells_its_whole_story_and_the_ledger_agrees(tmp_path):
    run = subprocess.run(
        [agentbudget_executable(), "demo", "--database-url", ADMIN_DSN, "--pace", "0", "--no-live", "--keep"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    checklist = out.split("The story:")[1].strip().splitlines()[: len(story.BEATS)]
    assert len(checklist) == len(story.BEATS) and all(line.startswith("[x]") for line in checklist), checklist
    assert "ALERT     demo/research crossed 80%" in out
    assert "TRANSFER  demo/ceo moved 5.00 USD to demo/research" in out
    assert "OPERATOR  scaled demo/monitor to 0 replicas: the budget is exhausted" in out
    report = out.split("Spend by agent")[1]
    for agent in story.CAST:
        assert agent.budget in report
    dsn = re.search(r"database kept: (\S+)", out).group(1)  # type: ignore[union-attr]
    total = Decimal(re.search(r"Total: ([0-9.]+) USD", out).group(1))  # type: ignore[union-attr]
    asyncio.run(_check_books(dsn, total))


async def _check_books(dsn: str, total: Decimal) -> None:
    from agentbudget_server.sql import QUERIES

    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetch(QUERIES["audit_balances"]) == []
        spent = await conn.fetchval("SELECT sum(spent_nanos) FROM budget_periods")
        assert round(Decimal(spent) / 10**9, 2) == total  # the report's total is the ledger's
        rows = await conn.fetch(
            "SELECT b.name, p.limit_nanos, p.phase FROM budget_periods p JOIN budgets b ON b.id = p.budget_id"
        )
        limits = {r["name"]: (r["limit_nanos"] // 10**9, r["phase"]) for r in rows}
        assert limits["demo/research"][0] == 30 and limits["demo/ceo"][0] == 20  # two top-ups of 5
        assert limits["demo/monitor"] == (4, "EXHAUSTED")
        transfers = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'TRANSFER_IN'")
        assert transfers == 2
        assert await conn.fetchval("SELECT count(*) FROM reservations WHERE state = 'ACTIVE'") == 0
    finally:
        await conn.close()
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()


def test_the_demo_database_sits_beside_the_given_one_even_behind_a_socket_path():
    from agentbudget_server.demo import _dsn_for

    assert _dsn_for("postgresql://postgres@127.0.0.1:5432/postgres", "d1") == "postgresql://postgres@127.0.0.1:5432/d1"
    embedded = "postgresql://postgres:@/postgres?host=/home/me/.agentbudget/pgdata"
    assert _dsn_for(embedded, "d1") == "postgresql://postgres:@/d1?host=/home/me/.agentbudget/pgdata"
