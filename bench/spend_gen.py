"""A large synthetic ledger for the report benchmarks, bulk-loaded into a dedicated database.

    .venv/bin/python bench/spend_gen.py                      # 10,000,000 rows over 10,000 budgets
    .venv/bin/python bench/spend_gen.py --rows 1000000 --budgets 1000 --days 30

The database (default ``agentbudget_spend_bench``) is dropped and created, migrated, and filled
with ``INSERT ... SELECT`` over ``generate_series`` (bench/spend_gen.sql), one day of operations
per statement, in time order: holds with their commit, release or expiry, and direct charges,
spread over ``--days`` days before ``--end``. The spend rollup is kept by its trigger as the rows
go in, one statement at a time, exactly as for the authority's own writes; foreign keys are not
checked during the load (they hold by construction) and the ledger's secondary indexes are built
after it. Every period's balance is then set to the sum of its ledger rows, so ``agentbudget
verify`` passes on the result. The database is kept for ``bench/spend_report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from agentbudget_server import db, sql

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DATABASE = "agentbudget_spend_bench"
Q = sql._parse((Path(__file__).with_name("spend_gen.sql")).read_text("utf-8"))


def dsn_for(admin_dsn: str, database: str) -> str:
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{database}"


def months(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out = []
    first = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while first < end:
        following = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=UTC)
        out.append((first, following))
        first = following
    return out


def step(label: str, started: float) -> float:
    now = time.perf_counter()
    print(f"  {label:<44} {now - started:8.1f} s", flush=True)
    return now


async def generate(args: argparse.Namespace) -> str:
    admin = await asyncpg.connect(args.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{args.database}"')
    finally:
        await admin.close()
    dsn = dsn_for(args.admin_dsn, args.database)
    await db.migrate(dsn)

    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)
    start = end - timedelta(days=args.days)
    spans = months(start, end)
    operations = args.rows // 2
    seconds_per_op = args.days * 86400 / operations
    per_day = -(-operations // args.days)
    print(
        f"{args.rows:,} ledger rows ({operations:,} operations) over {args.budgets:,} budgets, "
        f"{start:%Y-%m-%d} to {end:%Y-%m-%d}, into {args.database}",
        flush=True,
    )
    began = t = time.perf_counter()
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"}, command_timeout=None)
    try:
        await conn.execute("SELECT setseed(0.42)")
        current = spans[-1]
        await conn.execute(Q["create_budgets"], args.budgets, current[0], current[1], start)
        await conn.execute(Q["create_periods"], [s for s, _ in spans], [e for _, e in spans])
        t = step("budgets and periods", t)
        await conn.execute(Q["drop_ledger_indexes"])
        await conn.execute(Q["rollup_always"])
        await conn.execute("SET session_replication_role = replica")
        opened = set()
        first = 0
        while first < operations:
            last = min(operations, first + per_day) - 1
            at = start + timedelta(seconds=first * seconds_per_op)
            for s, _ in spans:  # each month's PERIOD_OPENED rows go in when the month begins
                if s <= at and s not in opened:
                    await conn.execute(Q["open_periods"], s)
                    opened.add(s)
            await conn.execute(Q["load_operations"], first, last, start, seconds_per_op, args.budgets)
            first = last + 1
            if first * 10 // operations != (first - per_day) * 10 // operations or first == operations:
                print(f"  ... {first / operations:4.0%} of the rows ({time.perf_counter() - t:6.1f} s)", flush=True)
        t = step("ledger rows (rollup kept by the trigger)", t)
        await conn.execute("SET session_replication_role = origin")
        await conn.execute(Q["rollup_as_usual"])
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(Q["restore_ledger_indexes"])
        t = step("ledger indexes", t)
        await conn.execute(Q["settle_balances"])
        t = step("period balances", t)
        await conn.execute("VACUUM (ANALYZE)")
        t = step("vacuum analyze", t)
        sizes = await conn.fetchrow(Q["sizes"])
        assert sizes is not None
        print(f"  {'total':<44} {time.perf_counter() - began:8.1f} s")
        print(
            f"ledger: {sizes['entries']:,} rows ({sizes['cost_entries']:,} cost entries), {sizes['ledger_size']}; "
            f"spend_daily: {sizes['daily_rows']:,} rows, {sizes['daily_size']}; "
            f"spend_monthly: {sizes['monthly_rows']:,} rows, {sizes['monthly_size']}"
        )
    finally:
        await conn.close()
    return dsn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="ledger rows (two per operation)")
    parser.add_argument("--budgets", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90, help="spread over this many days before --end")
    parser.add_argument("--end", default="2026-12-01", help="the first day after the data (UTC)")
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("AGENTBUDGET_BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN),
        help="may CREATE DATABASE",
    )
    args = parser.parse_args()
    if args.rows < 2 or args.budgets < 1 or args.days < 1:
        parser.error("--rows, --budgets and --days must be positive")
    asyncio.run(generate(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
