"""What the spend rollup costs the ledger's writes: 100,000 entries with and without migration 0003.

    .venv/bin/python bench/spend_write.py [--rows 100000] [--rounds 3]

In a dedicated database (``agentbudget_spend_write``, dropped at the end), the same entries (holds
and their commits, half each, over 1,000 budgets; a quarter of the commits carry labels) are
inserted with the statement the authority's units of work use (an ``INSERT ... SELECT FROM
unnest(...)``), under three configurations of the ledger:

- ``before 0003``: no rollup trigger, no BRIN or GIN index (the ledger as migration 0002 left it);
- ``trigger only``: the statement-level rollup trigger, without the two indexes;
- ``0003``: the trigger and both indexes, as the migration creates them;

and in two shapes of write:

- ``1 row / statement``: one entry per statement and per transaction (one Reserve or Commit
  without group commit), ``synchronous_commit = off`` so the WAL flush does not hide the CPU cost;
- ``100 rows / statement``: one statement of 100 entries per transaction (a group-committed batch),
  with the default ``synchronous_commit = on``.

Each run starts from an empty ledger and rollup; the configurations alternate within a round.
On a shared machine the wall-clock times are noisy; the last table is steadier: the server time
of the rollup trigger itself per statement, from ``EXPLAIN ANALYZE`` of the same writes, next to
that of the ledger's two foreign-key checks, which every write has always paid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime

import asyncpg
from agentbudget_server import db
from agentbudget_server.tables import render_table
from spend_gen import DEFAULT_ADMIN_DSN, Q, dsn_for

MODELS = ["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5", "gpt-5-mini"]
TASKS = ["research", "analysis", "lookup", "planning", "reporting"]
CONFIGS = ("before 0003", "trigger only", "0003")


def entries(count: int, budgets: int, period: datetime) -> list[tuple[object, ...]]:
    rng = random.Random(11)
    rows = []
    for k in range(count // 2):
        budget = rng.randint(1, budgets)
        model, task = MODELS[(budget + rng.randint(0, 1)) % 4], TASKS[(budget + rng.randint(0, 2)) % 5]
        cost = rng.randint(10_000, 50_000_000)
        labels = '{"env": "prod"}' if rng.random() < 0.25 else "{}"
        rid = f"r-{k}"
        rows.append((budget, period, "HOLD", 0, cost * 2, rid, model, f"t-{k // 5}", task, "{}"))
        rows.append((budget, period, "COMMIT", cost, -cost * 2, rid, model, f"t-{k // 5}", task, labels))
    return rows


async def configure(conn: asyncpg.Connection, config: str) -> None:
    await conn.execute(Q["reset_ledger"])
    await conn.execute(Q["disable_rollup"] if config == "before 0003" else Q["enable_rollup"])
    await conn.execute(Q["create_report_indexes"] if config == "0003" else Q["drop_report_indexes"])
    await conn.execute("VACUUM ANALYZE ledger_entries")


async def write(conn: asyncpg.Connection, rows: list[tuple[object, ...]], per_statement: int) -> float:
    columns = list(zip(*rows, strict=True))
    began = time.perf_counter()
    for i in range(0, len(rows), per_statement):
        batch = [list(col[i : i + per_statement]) for col in columns]
        async with conn.transaction():
            await conn.execute(Q["write_bench_entries"], *batch)
    return time.perf_counter() - began


async def run(args: argparse.Namespace) -> int:
    database = "agentbudget_spend_write"
    admin = await asyncpg.connect(args.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = dsn_for(args.admin_dsn, database)
    await db.migrate(dsn)
    period = datetime(2026, 12, 1, tzinfo=UTC)
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"}, command_timeout=None)
    results: dict[tuple[str, int], list[float]] = {}
    try:
        await conn.execute(Q["create_budgets"], args.budgets, period, datetime(2027, 1, 1, tzinfo=UTC), period)
        await conn.execute(Q["create_periods"], [period], [datetime(2027, 1, 1, tzinfo=UTC)])
        rows = entries(args.rows, args.budgets, period)
        for round_ in range(args.rounds):
            order = CONFIGS if round_ % 2 == 0 else tuple(reversed(CONFIGS))
            for per_statement, sync in ((1, "off"), (100, "on")):
                await conn.execute("SELECT set_config('synchronous_commit', $1, false)", sync)
                for config in order:
                    await configure(conn, config)
                    seconds = await write(conn, rows, per_statement)
                    results.setdefault((config, per_statement), []).append(seconds)
                    print(
                        f"  round {round_ + 1}: {per_statement:>3} rows / statement, {config:<13} {seconds:7.2f} s",
                        flush=True,
                    )
        triggers = await trigger_times(conn, rows, args.explain)
    finally:
        await conn.close()
        admin = await asyncpg.connect(args.admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
    table = []
    for per_statement in (1, 100):
        base = statistics.median(results[("before 0003", per_statement)])
        for config in CONFIGS:
            seconds = statistics.median(results[(config, per_statement)])
            table.append(
                [
                    f"{per_statement} row{'s' if per_statement > 1 else ''} / statement",
                    config,
                    f"{seconds:.2f}",
                    f"{args.rows / seconds:,.0f}",
                    f"{seconds / args.rows * 1e6:.1f}",
                    f"{(seconds - base) / args.rows * 1e6:+.1f}",
                    f"{(seconds / base - 1) * 100:+.0f}%",
                ]
            )
    print()
    print(f"{args.rows:,} ledger entries over {args.budgets:,} budgets, median of {args.rounds} rounds")
    print(render_table(["WRITES", "LEDGER", "SECONDS", "ROWS/S", "µS/ROW", "Δ µS/ROW", "Δ"], table))
    print(f"nproc {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print(f"server time of the triggers per statement (mean of {args.explain:,} statements each, EXPLAIN ANALYZE):")
    print(render_table(["STATEMENT", "ROLLUP TRIGGER µS", "FOREIGN KEYS µS", "WHOLE STATEMENT µS"], triggers))
    return 0


async def trigger_times(conn: asyncpg.Connection, rows: list[tuple[object, ...]], count: int) -> list[list[str]]:
    """Mean trigger time per statement of one hold, one commit, and 100 entries (50 of each)."""
    await configure(conn, "0003")
    holds = [r for r in rows if r[2] == "HOLD"]
    commits = [r for r in rows if r[2] == "COMMIT"]
    out = []
    for name, batches in (
        ("1 hold", [[holds[i % len(holds)]] for i in range(count)]),
        ("1 commit", [[commits[i % len(commits)]] for i in range(count)]),
        ("100 entries", [rows[(i * 100) % len(rows) :][:100] for i in range(max(1, count // 20))]),
    ):
        rollup = keys = total = 0.0
        for batch in batches:
            columns = [list(col) for col in zip(*batch, strict=True)]
            async with conn.transaction():
                plan = json.loads(await conn.fetchval(Q["explain_bench_entries"], *columns))[0]
            total += plan["Execution Time"]
            for t in plan.get("Triggers", []):
                if t["Trigger Name"] == "ledger_entries_spend_rollup":
                    rollup += t["Time"]
                elif "fkey" in t.get("Constraint Name", ""):
                    keys += t["Time"]
        n = len(batches)
        out.append([name, f"{rollup / n * 1000:.0f}", f"{keys / n * 1000:.0f}", f"{total / n * 1000:.0f}"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--budgets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--explain", type=int, default=2000, help="statements per EXPLAIN ANALYZE measurement")
    parser.add_argument("--admin-dsn", default=os.environ.get("AGENTBUDGET_BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
