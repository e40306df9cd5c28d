"""Reserve+Commit throughput and latency of the budget authority, end to end.

One run creates a fresh database, starts one ``agentbudget serve`` process on 127.0.0.1, and
measures pairs (a Reserve immediately followed by a Commit of a slightly smaller actual) at
several client counts, against one hot budget and against many budgets. Clients are asyncio
tasks over grpc.aio, spread over several OS processes that start together at a barrier.
After every cell the ledger is audited (``audit_balances``, spent <= limit, exact totals).

    .venv/bin/python bench/authority.py [--quick] [--seconds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from agentbudget.client import money
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import pricing, validate
from agentbudget_server.sql import QUERIES
from agentbudget_server.tables import render_table

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HOST = "127.0.0.1"
LIMIT = "1000000000"  # the largest allowed: never denies at these rates
HOLD = money("0.01")
# The same hold, described instead of priced: 5,000 input + 1,000 output tokens on a cheap model,
# which the catalog prices at exactly HOLD (checked before a --pricing run), so that both sides of
# the comparison hold and commit the same amounts. (With an estimate priced below the commit, every
# commit of the priced side was an overrun, with an OVERRUN event and its own statement per pair:
# that, not the pricing, made the estimate side ~10 % slower.)
ESTIMATE = pb.CostDetails(kind=pb.MODEL_INFERENCE, model="claude-haiku-4-5", input_tokens=5000, output_tokens=1000)
ACTUAL = money("0.009")
ACTUAL_NANOS = 9_000_000
RPC_TIMEOUT = 10.0
# One TCP connection per client channel (gRPC otherwise shares subchannels between channels).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class Job:
    target: str
    budgets: list[str]
    clients: int
    warmup: float
    seconds: float
    tag: str
    priced: bool = False  # Reserve by estimate (the authority prices it) instead of by amount
    with_details: bool = False  # by amount, with the estimate's details too (the --pricing baseline)
    reserve_only: bool = False  # each call a Reserve alone (a hold, never ended), not a Reserve+Commit pair


@dataclass
class WorkerResult:
    latencies: list[float] = field(default_factory=list)  # seconds, pairs completed in the window
    pairs_total: int = 0  # every completed pair, warm-up and drain included
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    load_cpu: list[float] = field(default_factory=list)  # each load process's CPU while measured (1.0 = one core)


@dataclass
class Cell:
    scenario: str
    clients: int
    workers: int
    seconds: float
    pairs: int
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_pct: float
    error_samples: list[str]
    problems: list[str]


# -- load generator (runs in worker processes) ---------------------------------------------------


async def _client(
    stub: pb_grpc.BudgetAuthorityAsyncStub, job: Job, name: str, start: float, end: float, out: WorkerResult
) -> None:
    rng = random.Random(name)
    seq = 0
    while (began := time.monotonic()) < end:
        budget = job.budgets[0] if len(job.budgets) == 1 else rng.choice(job.budgets)
        rid = f"{name}-{seq}"
        seq += 1
        try:
            if job.priced:
                reserve = pb.ReserveRequest(budget=budget, reservation_id=rid, details=ESTIMATE)
            elif job.with_details:  # the same request with its amount given: only the pricing differs
                reserve = pb.ReserveRequest(budget=budget, reservation_id=rid, amount=HOLD, details=ESTIMATE)
            else:
                reserve = pb.ReserveRequest(budget=budget, reservation_id=rid, amount=HOLD)
            await stub.Reserve(reserve, timeout=RPC_TIMEOUT)
            if not job.reserve_only:
                commit = pb.CommitRequest(budget=budget, reservation_id=rid, actual=ACTUAL)
                await stub.Commit(commit, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            out.errors += 1
            if len(out.error_samples) < 5:
                out.error_samples.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.01)
            continue
        done = time.monotonic()
        out.pairs_total += 1
        if start <= done <= end:
            out.latencies.append(done - began)


async def _worker(job: Job, barrier: Barrier) -> WorkerResult:
    channels = [grpc.aio.insecure_channel(job.target, options=CHANNEL_OPTIONS) for _ in range(job.clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), 30)
        await asyncio.to_thread(barrier.wait, 60)
        start = time.monotonic() + job.warmup  # CLOCK_MONOTONIC: one clock for all processes
        end = start + job.seconds
        out = WorkerResult()
        await asyncio.gather(
            *(
                _client(pb_grpc.BudgetAuthorityStub(ch), job, f"{job.tag}-{i}", start, end, out)
                for i, ch in enumerate(channels)
            )
        )
        return out
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))


def worker_main(job: Job, barrier: Barrier, results: mp.Queue[WorkerResult]) -> None:
    results.put(asyncio.run(_worker(job, barrier)))


def run_load(
    target: str,
    budgets: list[str],
    clients: int,
    workers: int,
    warmup: float,
    seconds: float,
    tag: str,
    server_cpu: Callable[[], float],
    priced: bool = False,
    with_details: bool = False,
    reserve_only: bool = False,
) -> tuple[WorkerResult, float]:
    """The merged results of the workers (with their own CPU use), and the server's CPU use (1.0 =
    one core) while measured."""
    ctx = mp.get_context("spawn")
    workers = min(workers, clients)
    barrier = ctx.Barrier(workers + 1)  # the parent too: it times the server over the measured window
    results: mp.Queue[WorkerResult] = ctx.Queue()
    share, extra = divmod(clients, workers)
    job = Job(target, budgets, clients, warmup, seconds, tag, priced, with_details, reserve_only)
    procs = [
        ctx.Process(
            target=worker_main,
            daemon=True,
            args=(
                replace(job, clients=share + (i < extra), tag=f"{tag}-w{i}"),
                barrier,
                results,
            ),
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    merged = WorkerResult()
    received = 0
    try:
        try:
            barrier.wait(90)
        except threading.BrokenBarrierError:
            raise RuntimeError("load workers did not reach the start barrier") from None
        time.sleep(warmup)
        cpu_before, load_before = server_cpu(), [cpu_seconds(p.pid or 0) for p in procs]
        time.sleep(seconds)
        cpu = (server_cpu() - cpu_before) / seconds
        merged.load_cpu = [(cpu_seconds(p.pid or 0) - t) / seconds for p, t in zip(procs, load_before, strict=True)]
        deadline = time.monotonic() + 120
        while received < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("load workers did not finish in time")
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError(f"a load worker failed: exit codes {[p.exitcode for p in procs]}")
            try:
                r = results.get(timeout=0.5)
            except queue.Empty:
                continue
            received += 1
            merged.latencies += r.latencies
            merged.pairs_total += r.pairs_total
            merged.errors += r.errors
            merged.error_samples += r.error_samples[: 5 - len(merged.error_samples)]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return merged, cpu


# -- database, server, audit -------------------------------------------------------------------------


def dsn_for(admin_dsn: str, database: str) -> str:
    base, _, rest = admin_dsn.rpartition("/")
    _, sep, query = rest.partition("?")
    return f"{base}/{database}{sep}{query}"


async def admin(admin_dsn: str, sql: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a live process so far; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Server:
    """``agentbudget serve`` on a free port of 127.0.0.1, with ``extra`` flags."""

    def __init__(self, dsn: str, workdir: Path, extra: Sequence[str] = ()) -> None:
        binary = Path(sys.executable).with_name("agentbudget")
        argv = [str(binary), "serve", "--listen", f"{HOST}:0", "--database-url", dsn, "--log-level", "WARNING"]
        self.launch([*argv, *extra], workdir)

    def launch(self, argv: Sequence[str], workdir: Path) -> None:
        """Start ``argv --ready-file FILE`` and wait until the process writes its port there."""
        self.ready = workdir / "ready"
        self.log = workdir / "server.log"
        with self.log.open("wb") as log:
            # A benchmark measures the ledger, not authentication (bench/auth.py does that): unless the
            # environment says otherwise, no authentication and no rate limit.
            env = {"AGENTBUDGET_AUTH": "none", "AGENTBUDGET_RATE_LIMIT_PER_SECOND": "0", **os.environ}
            self.proc = subprocess.Popen(
                [*argv, "--ready-file", str(self.ready)], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.port = self._wait_ready(60)
        self.target = f"{HOST}:{self.port}"

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log_tail()}")
            text = self.ready.read_text().strip() if self.ready.exists() else ""
            if text.isdigit():
                return int(text)
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def create_budgets(target: str, names: list[str]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.BudgetAuthorityStub(channel)
        gate = asyncio.Semaphore(16)

        async def one(name: str) -> None:
            async with gate:
                await stub.UpsertBudget(pb.UpsertBudgetRequest(name=name, spec=pb.BudgetSpec(limit=money(LIMIT))))

        await asyncio.gather(*(one(n) for n in names))


async def totals(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(spent_nanos), 0), coalesce(sum(held_nanos), 0) FROM budget_periods"
        )
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def ledger_problems(dsn: str) -> list[str]:
    """Every period whose balance differs from its ledger (``audit_balances``) or whose spent exceeds its limit."""
    problems: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        for row in await conn.fetch(QUERIES["audit_balances"]):
            problems.append(f"audit_balances mismatch: {dict(row)}")
        for row in await conn.fetch(
            "SELECT b.name, p.period_start, p.spent_nanos, p.limit_nanos FROM budget_periods p "
            "JOIN budgets b ON b.id = p.budget_id WHERE p.spent_nanos > p.limit_nanos"
        ):
            problems.append(f"spent exceeds limit: {dict(row)}")
    finally:
        await conn.close()
    return problems


async def audit(dsn: str, spent_before: int, load: WorkerResult) -> list[str]:
    """Problems found in the ledger after a cell; empty when it is consistent."""
    problems = await ledger_problems(dsn)
    spent, held = await totals(dsn)
    if load.errors == 0:  # with errors a pair may have half-happened: the exact totals do not apply
        expected = spent_before + load.pairs_total * ACTUAL_NANOS
        if spent != expected:
            problems.append(f"spent {spent} nanos, expected {expected} ({load.pairs_total} pairs)")
        if held != 0:
            problems.append(f"{held} nanos still held after all pairs committed")
    return problems


# -- driver ----------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_cell(
    args: argparse.Namespace,
    server: Server,
    dsn: str,
    scenario: str,
    budgets: list[str],
    clients: int,
    priced: bool = False,
) -> Cell:
    spent_before, _ = asyncio.run(totals(dsn))
    tag = f"{scenario}-{clients}-{uuid.uuid4().hex[:6]}"
    load, cpu = run_load(
        server.target,
        budgets,
        clients,
        args.workers,
        args.warmup,
        args.seconds,
        tag,
        server.cpu_seconds,
        priced,
        args.pricing,  # the baseline of a pricing comparison sends the same details, with the amount
    )
    lat = sorted(load.latencies)
    return Cell(
        scenario=f"{scenario} {'estimate' if priced else 'amount'}" if args.pricing else scenario,
        clients=clients,
        workers=min(args.workers, clients),
        seconds=args.seconds,
        pairs=len(lat),
        pairs_per_s=len(lat) / args.seconds,
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        errors=load.errors,
        server_cpu_pct=cpu * 100,
        error_samples=load.error_samples,
        problems=asyncio.run(audit(dsn, spent_before, load)),
    )


def _progress(c: Cell) -> None:
    print(f"  {c.scenario} x{c.clients}: {c.pairs_per_s:.0f} pairs/s, {c.errors} errors", file=sys.stderr, flush=True)


def pool_rounds(rounds: list[Cell]) -> Cell:
    """One cell of several rounds of the same load: throughput over their total time, worst tails."""
    first = rounds[0]
    total = sum(c.pairs for c in rounds)
    seconds = sum(c.seconds for c in rounds)
    return Cell(
        scenario=first.scenario,
        clients=first.clients,
        workers=first.workers,
        seconds=seconds,
        pairs=total,
        pairs_per_s=total / seconds,
        p50_ms=statistics.median(c.p50_ms for c in rounds),
        p99_ms=max(c.p99_ms for c in rounds),
        errors=sum(c.errors for c in rounds),
        server_cpu_pct=statistics.mean(c.server_cpu_pct for c in rounds),
        error_samples=[e for c in rounds for e in c.error_samples][:5],
        problems=[p for c in rounds for p in c.problems],
    )


def render(cells: list[Cell], machine: str) -> str:
    headers = ["SCENARIO", "CLIENTS", "PAIRS/S", "P50 MS", "P99 MS", "ERRORS", "SERVER CPU", "AUDIT"]
    rows = [
        [
            c.scenario,
            str(c.clients),
            f"{c.pairs_per_s:.0f}",
            f"{c.p50_ms:.2f}",
            f"{c.p99_ms:.2f}",
            str(c.errors),
            f"{c.server_cpu_pct:.0f}%",
            "ok" if not c.problems else "FAILED",
        ]
        for c in cells
    ]
    return f"{render_table(headers, rows)}\n{machine}"


def add_common_arguments(p: argparse.ArgumentParser, clients: list[int]) -> None:
    """The flags every benchmark of the authority takes (checked by :func:`check_common_arguments`)."""
    p.add_argument(
        "--admin-dsn",
        default=os.environ.get("AGENTBUDGET_BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN),
        help="PostgreSQL DSN allowed to CREATE DATABASE (env AGENTBUDGET_BENCH_ADMIN_DSN)",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measured duration per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before each cell")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s per cell, 0.3 s warm-up")
    p.add_argument("--clients", type=int, nargs="+", default=clients, help="concurrent clients per cell")
    p.add_argument("--budgets", type=int, default=1000, help="budgets of the spread scenario")
    p.add_argument("--json", type=Path, help="also write the results here")


def check_common_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, load_processes: int) -> None:
    if args.quick:
        args.seconds, args.warmup = 1.0, 0.3
    if args.seconds <= 0 or args.warmup < 0 or load_processes < 1 or args.budgets < 1 or min(args.clients) < 1:
        p.error("durations, workers, budgets and clients must be positive")
    if max(args.clients) > 1024:
        p.error("at most 1024 clients")


def parse_args() -> argparse.Namespace:
    cpus = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, [1, 16, 64])
    p.add_argument("--workers", type=int, default=min(4, max(2, cpus)), help="load-generator processes")
    # Eight: with three, one cell of six could still land 10-13 % off on a noisy machine (the p50s equal).
    p.add_argument("--rounds", type=int, default=8, help="with --pricing: alternating rounds per side and cell")
    p.add_argument(
        "--pricing",
        action="store_true",
        help="each cell twice, side by side: Reserve by amount (with the same details) and by estimate (priced)",
    )
    args = p.parse_args()
    check_common_arguments(p, args, args.workers)
    return args


def scenarios(budgets: int) -> dict[str, list[str]]:
    """The budgets of each scenario: one hot budget, and ``budgets`` budgets picked at random per call."""
    return {"hot-1": ["bench/hot"], f"spread-{budgets}": [f"bench/b-{i:05d}" for i in range(budgets)]}


@contextmanager
def bench_database(admin_dsn: str, prefix: str = "agentbudget_bench") -> Iterator[tuple[str, str]]:
    """A fresh database for one run, dropped afterwards: its DSN and the server's PostgreSQL version."""
    database = f"{prefix}_{uuid.uuid4().hex[:10]}"
    version = asyncio.run(admin(admin_dsn, f'CREATE DATABASE "{database}"'))
    try:
        yield dsn_for(admin_dsn, database), version
    finally:
        asyncio.run(admin(admin_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def _run(args: argparse.Namespace, dsn: str) -> tuple[list[Cell], str]:
    """Every cell against one server on ``dsn``; the cells and the server's log tail."""
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="agentbudget-bench-") as workdir:
        server = Server(dsn, Path(workdir))
        try:
            for scenario, budgets in scenarios(args.budgets).items():
                asyncio.run(create_budgets(server.target, budgets))
                for n, clients in enumerate(args.clients):
                    if not args.pricing:
                        cells.append(run_cell(args, server, dsn, scenario, budgets, clients))
                        _progress(cells[-1])
                        continue
                    # Side by side: rounds in alternating order (ABBA...), so neither side always runs on
                    # the fuller ledger, and each side's rounds pooled.
                    rounds: dict[bool, list[Cell]] = {False: [], True: []}
                    for r in range(args.rounds):
                        for priced in (False, True) if (n + r) % 2 == 0 else (True, False):
                            rounds[priced].append(run_cell(args, server, dsn, scenario, budgets, clients, priced))
                            _progress(rounds[priced][-1])
                    cells += [pool_rounds(rounds[False]), pool_rounds(rounds[True])]
            return cells, server.log_tail(50)
        finally:
            server.stop()


def estimate_price_problem() -> str | None:
    """Why the --pricing comparison would not compare like with like, if it would not."""
    priced = pricing.parse({}).cost(validate.details(ESTIMATE, "details"))
    hold = HOLD.units * 1_000_000_000 + HOLD.nanos
    if priced != hold:
        return f"the catalog prices ESTIMATE at {priced} nanos, not the {hold} of HOLD: adjust its tokens"
    return None


def main() -> int:
    args = parse_args()
    if args.pricing and (problem := estimate_price_problem()):
        print(f"bench/authority.py --pricing: {problem}", file=sys.stderr)
        return 2
    load_average = os.getloadavg()[0]
    with bench_database(args.admin_dsn) as (dsn, version):
        cells, server_log = _run(args, dsn)
    machine = (
        f"machine: nproc={len(os.sched_getaffinity(0))}, load average {load_average:.2f} at start, "
        f"PostgreSQL {version}; {args.workers} load processes at most, "
        f"{args.seconds:g} s per cell after {args.warmup:g} s warm-up"
    )
    print(render(cells, machine))
    if args.pricing:
        for first, second in zip(cells[::2], cells[1::2], strict=True):
            amount, estimate = (first, second) if first.scenario.endswith("amount") else (second, first)
            ratio = estimate.pairs_per_s / amount.pairs_per_s if amount.pairs_per_s else 0.0
            print(f"{amount.scenario.rsplit(' ', 1)[0]} x{amount.clients}: estimate / amount = {ratio:.2f}")
    failed = False
    for c in cells:
        for line in c.error_samples + c.problems:
            print(f"{c.scenario} x{c.clients}: {line}")
        failed = failed or bool(c.problems)
    if server_log.strip():
        print(f"server log (WARNING and above, last lines):\n{server_log}")
    if args.json:
        report: dict[str, Any] = {
            "machine": machine,
            "postgres": version,
            "cells": [asdict(c) for c in cells],
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
