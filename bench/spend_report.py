"""Spend report latency on the ledger bench/spend_gen.py made: p50 / p99 against the targets.

    .venv/bin/python bench/spend_report.py                 # on agentbudget_spend_bench, month 2026-11
    .venv/bin/python bench/spend_report.py --runs 100 --json results.json

Each report is a ``QuerySpend`` call over gRPC to an authority started in this process on that
database (metrics off, the sweeper idle), timed from the call to the decoded response, after
warm-up calls. The two targets: a month by day for one budget (< 100 ms; a different random
budget each run, and the busiest budget), and the ten most expensive models of a month over the
whole fleet (< 1 s). The other rows have no target and show what the rollup does not cover:
label filters, days in another time zone, distinct task counts. ``--verify`` also times
``agentbudget verify``'s checks, ``--review`` the monthly review page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from agentbudget.client import BudgetClient
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app, audit, report_ranges, review, spend, validate
from agentbudget_server.settings import Settings
from agentbudget_server.tables import render_table
from google.protobuf.timestamp_pb2 import Timestamp
from spend_gen import DEFAULT_ADMIN_DSN, DEFAULT_DATABASE, Q, dsn_for  # beside this script


@dataclass
class Result:
    report: str
    source: str
    runs: int
    p50_ms: float
    p99_ms: float
    target_ms: float | None
    groups: int

    @property
    def verdict(self) -> str:
        if self.target_ms is None:
            return "-"
        return "ok" if self.p99_ms < self.target_ms else "MISSED"


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def source(req: pb.QuerySpendRequest) -> str:
    """Which tables answer the request, as the authority will plan it."""
    p = spend.plan(validate.query_spend(req))
    parts = []
    if p.months[0] < p.months[1]:
        parts.append("months")
    if any(a < b for a, b in p.days):
        parts.append("days")
    if any(a < b for a, b in p.ledger):
        parts.append("ledger" if not parts else "ledger edges")
    return " + ".join(parts) or "-"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    stub: pb_grpc.BudgetAuthorityStub,
    name: str,
    make: Callable[[], pb.QuerySpendRequest],
    runs: int,
    warmup: int,
    target_ms: float | None,
) -> Result:
    times = []
    groups = 0
    for i in range(warmup + runs):
        req = make()
        began = time.perf_counter()
        resp = await stub.QuerySpend(req, timeout=600)
        elapsed = (time.perf_counter() - began) * 1000
        if i >= warmup:
            times.append(elapsed)
            groups = len(resp.groups)
    result = Result(name, source(make()), runs, statistics.median(times), percentile(times, 0.99), target_ms, groups)
    print(f"  {name:<58} p50 {result.p50_ms:9.1f} ms  p99 {result.p99_ms:9.1f} ms  ({result.source})", flush=True)
    return result


async def run(args: argparse.Namespace) -> list[Result]:
    dsn = dsn_for(args.admin_dsn, args.database)
    conn = await asyncpg.connect(dsn)
    try:
        budgets = await conn.fetch(Q["busiest_budgets"])
        entries = await conn.fetchval("SELECT count(*) FROM ledger_entries")
    finally:
        await conn.close()
    busiest = budgets[0]
    median = budgets[len(budgets) // 2]
    names = [r["name"] for r in budgets]
    start, end = report_ranges.period(args.month, datetime.now(UTC))
    berlin = report_ranges.period(args.month, datetime.now(UTC), "Europe/Berlin")
    print(
        f"{entries:,} ledger rows over {len(budgets):,} budgets with spend; month {args.month}; "
        f"busiest budget {busiest['name']} ({busiest['n']:,} cost entries in all), "
        f"median {median['name']} ({median['n']:,})",
        flush=True,
    )
    settings = Settings(
        listen="127.0.0.1:0", metrics_listen="", sweep_interval_seconds=86400.0, pool_min=2, pool_max=10
    ).validate()
    authority = await app.start(settings, dsn)
    rng = random.Random(7)
    results: list[Result] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)

            def month(*by: Any, zone: str = "", span: tuple[datetime, datetime] = (start, end), **kw: Any) -> Any:
                def make() -> pb.QuerySpendRequest:
                    extra = {k: (v() if callable(v) else v) for k, v in kw.items()}
                    return pb.QuerySpendRequest(
                        start_time=ts(span[0]), end_time=ts(span[1]), group_by=list(by), time_zone=zone, **extra
                    )

                return make

            runs, heavy = args.runs, max(3, args.runs // 10)
            print("targets:")
            results.append(
                await measure(
                    stub,
                    "month by day, one budget (random each run)",
                    month(pb.SPEND_BY_DAY, budgets=lambda: [rng.choice(names)]),
                    runs,
                    5,
                    100,
                )
            )
            results.append(
                await measure(
                    stub,
                    f"month by day, the busiest budget ({busiest['name']})",
                    month(pb.SPEND_BY_DAY, budgets=[busiest["name"]]),
                    runs,
                    5,
                    100,
                )
            )
            results.append(
                await measure(
                    stub,
                    "top 10 models of the month, whole fleet",
                    month(pb.SPEND_BY_MODEL, page_size=10),
                    runs,
                    3,
                    1000,
                )
            )
            others = (
                []
                if args.targets_only
                else [
                    ("top 10 budgets of the month, whole fleet", month(pb.SPEND_BY_BUDGET, page_size=10), heavy),
                    (
                        "month by model and task type, whole fleet",
                        month(pb.SPEND_BY_MODEL, pb.SPEND_BY_TASK_TYPE),
                        heavy,
                    ),
                    ("month by day, whole fleet", month(pb.SPEND_BY_DAY), heavy),
                    ("month (Berlin bounds) by model, whole fleet", month(pb.SPEND_BY_MODEL, span=berlin), heavy),
                    (
                        "month by day in Europe/Berlin, one budget",
                        month(pb.SPEND_BY_DAY, zone="Europe/Berlin", span=berlin, budgets=lambda: [rng.choice(names)]),
                        runs,
                    ),
                    (
                        "month by day, env=prod, one budget",
                        month(pb.SPEND_BY_DAY, labels={"env": "prod"}, budgets=lambda: [rng.choice(names)]),
                        runs,
                    ),
                    (
                        "month by day, env=prod, the busiest budget",
                        month(pb.SPEND_BY_DAY, labels={"env": "prod"}, budgets=[busiest["name"]]),
                        heavy,
                    ),
                    (
                        "month by model, env=staging, whole fleet",
                        month(pb.SPEND_BY_MODEL, labels={"env": "staging"}),
                        3,
                    ),
                    ("month by budget with task counts, whole fleet", month(pb.SPEND_BY_BUDGET, count_tasks=True), 3),
                ]
            )
            if others:
                print("without a target:")
            for name, make, n in others:
                results.append(await measure(stub, name, make, n, 1, None))
            if args.review and not args.targets_only:
                async with BudgetClient(grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}")) as client:
                    began = time.perf_counter()
                    page = review.render(await review.gather(client, args.month))
                    elapsed = (time.perf_counter() - began) * 1000
                print(f"  {'the review page of the month (5 charts)':<58} {elapsed:9.1f} ms ({len(page):,} bytes)")
                results.append(Result("the review page of the month", "all of the above", 1, elapsed, elapsed, None, 0))
    finally:
        await authority.stop(grace=1)
    if args.verify and not args.targets_only:
        began = time.perf_counter()
        findings = await audit.verify(dsn)
        elapsed = (time.perf_counter() - began) * 1000
        print(f"  {'agentbudget verify (balances, holds, rollup)':<58} {elapsed:9.1f} ms  ok={findings.ok}")
        results.append(Result("agentbudget verify", "ledger", 1, elapsed, elapsed, None, 0))
    return results


def machine() -> str:
    try:
        pg = subprocess.run(["psql", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        pg = "psql not found"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, {pg}, load average {load} (the machine is shared: compare under similar load)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--admin-dsn", default=os.environ.get("AGENTBUDGET_BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--month", default="2026-11")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per targeted report")
    parser.add_argument("--review", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--targets-only", action="store_true", help="only the two reports with a target")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    print(f"load average at the start {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = asyncio.run(run(args))
    rows = [
        [
            r.report,
            r.source,
            str(r.runs),
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"< {r.target_ms:.0f}" if r.target_ms else "",
            r.verdict,
        ]
        for r in results
    ]
    print()
    print(render_table(["REPORT", "SOURCE", "RUNS", "P50 MS", "P99 MS", "TARGET", ""], rows))
    print(machine())
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.verdict != "MISSED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
