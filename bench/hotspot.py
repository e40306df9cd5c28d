"""Reserve throughput on a hot budget: group commit against one transaction per call and a bare gRPC echo.

One invocation measures, side by side, holds per second (Reserve calls alone, each with its own
reservation id, 0.01 USD on budgets whose limit is 1e9 USD) of:

  naive   ``agentbudget serve --max-batch 1``: the same server code with grouping off (the baseline)
  group   ``agentbudget serve``: group commit (``--max-batch 256``, the default), one process
  group2  ``agentbudget serve --workers 2``: two processes on one port (SO_REUSEPORT)
  floor   ``agentbudget serve`` with the ledger taken away: every Reserve is received, authenticated,
          counted and validated as usual, then answered with the first Reserve's real response
          (the first goes through the ledger) — what the server reaches before the ledger costs anything
  echo    a bare grpc.aio server answering the same method path with pre-encoded bytes: a real
          ReserveResponse captured first, so the wire is the same size (the ceiling of gRPC alone)
  echo2   the echo in two processes sharing the port with SO_REUSEPORT

on one hot budget and on 1,000 budgets (one picked at random per call), at 1, 16, 64 and 256
concurrent clients: each client its own channel (its own TCP connection), a closed loop of calls;
the clients are spread over several load processes (``--load-processes``, default 3) that start
together at a barrier (``authority.run_load``). The echo servers are also driven by h2load when it
is installed (one fixed request body: fine for an echo, useless for Reserve, whose ids must differ).

Each real server gets a fresh database; holds never expire during the run (TTL one day, sweeper
once a day), and after every cell the ledger is audited: ``audit_balances`` finds nothing, no
period spent past its limit, and the new HOLD rows, ACTIVE reservations and held nanos are exactly
what the holds granted. Any problem makes the exit status 1.

All the servers are started first; each cell then runs for every server back to back (the order
alternating between rounds, ``--rounds``), so that whatever else the machine does weighs on all of
them alike. Besides throughput and latency it reports the CPU of the server, of its PostgreSQL
backends, of the load processes and of the whole machine, and each server process's peak RSS.

    .venv/bin/python bench/hotspot.py [--quick] [--seconds 5] [--rounds 1] [--clients 1 16 64 256]
        [--servers naive,group,group2,floor,echo,echo2] [--load-processes 3] [--no-h2load] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import authority as ab
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_server.tables import render_table
from agentbudget_server.workers import _hold_port  # the supervisor's own port sharing

SERVICE = "agentbudget.v1.BudgetAuthority"
METHOD = f"/{SERVICE}/Reserve"
HOLD_NANOS = ab.HOLD.units * 1_000_000_000 + ab.HOLD.nanos
DAY = "86400"
# Every real server: metrics on (as deployed) but on a free port; holds outlive the run; the sweeper
# runs once at start and then not for a day, so nothing expires while measured.
SERVE_FLAGS = ("--metrics-listen", f"{ab.HOST}:0", "--default-ttl-seconds", DAY, "--sweep-interval-seconds", DAY)
# This measures the hold path, not who may call (bench/auth.py does): no authentication, no rate
# limits. By environment, not flags, so that versions without those settings run it too.
SERVE_ENV = {"AGENTBUDGET_AUTH": "none", "AGENTBUDGET_RATE_LIMIT_PER_SECOND": "0"}
GRPC = "grpc.aio"
DATABASE_PREFIX = "agentbudget_hotspot"  # its own: a cleanup of leftover agentbudget_bench_* runs spares it
HOT, HOT_BUDGETS = next(iter(ab.scenarios(1).items()))  # the hot scenario's name and its one budget
H2LOAD = "h2load"


@dataclass(frozen=True)
class Kind:
    name: str
    what: str
    flags: tuple[str, ...] | None  # ``agentbudget serve`` flags; None for the echo
    processes: int
    floor: bool = False  # the server without its ledger (see floor_main): not audited


KINDS = {
    k.name: k
    for k in (
        Kind(
            "naive", "agentbudget serve --max-batch 1: the same server code with grouping off", ("--max-batch", "1"), 1
        ),
        Kind("group", "agentbudget serve: group commit (--max-batch 256, the default), 1 process", (), 1),
        Kind(
            "group2", "agentbudget serve --workers 2: group commit, 2 processes (SO_REUSEPORT)", ("--workers", "2"), 2
        ),
        Kind(
            "floor",
            "agentbudget serve answering each Reserve after validation with the first one's response (no ledger)",
            (),
            1,
            floor=True,
        ),
        Kind("echo", "bare grpc.aio echo of a captured ReserveResponse, 1 process", None, 1),
        Kind("echo2", "bare grpc.aio echo, 2 processes (SO_REUSEPORT)", None, 2),
    )
}


@dataclass
class Cell:
    server: str
    scenario: str
    clients: int
    generator: str  # grpc.aio (the load processes) or h2load
    seconds: float
    holds: int  # calls that completed inside the measured window
    holds_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_pct: float  # summed over the server's processes (100 = one core)
    pg_cpu_pct: float  # the server's PostgreSQL backends
    load_cpu_pct: float  # summed over the load processes
    load_cpu_max_pct: float  # the busiest load process
    machine_busy_pct: float  # the whole machine (every core), other users included
    server_runq_pct: float  # the server's threads runnable but waiting for a CPU (starved by the rest)
    rss_worker_mb: float  # peak RSS (VmHWM, reset before the cell) of the largest serving process
    rss_total_mb: float  # the same summed over all the server's processes
    error_samples: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    audited: bool = False
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, sorted (not in the JSON)

    @property
    def others_pct(self) -> float:
        """Busy time of the machine that is none of the above: other users (and kernel, WAL writer...)."""
        return max(0.0, self.machine_busy_pct - self.server_cpu_pct - self.pg_cpu_pct - self.load_cpu_pct)

    @property
    def saturated(self) -> str:
        """Whether the load generator may have held the number down (see the notes printed)."""
        marks = []
        if self.load_cpu_max_pct >= 90:
            marks.append("load-proc")
        if self.machine_busy_pct >= 95:
            marks.append("machine")
        return "+".join(marks) or "no"


# -- processes: CPU, memory ------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (a supervisor, its workers, multiprocessing's helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pids: list[int]) -> None:
    """VmHWM back to the current RSS (``clear_refs`` 5), so each cell reports its own peak."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def runqueue_seconds(pids: list[int]) -> float:
    """Time the threads of ``pids`` spent runnable but waiting for a CPU (``schedstat``), so far."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core) since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Probe:
    """Called by ``run_load`` at the start and at the end of the measured window: samples the
    server's processes, its PostgreSQL backends and the machine; returns the server's CPU so far.

    CPU is summed per process over the processes alive at both samples: a pooled connection closed
    in between (asyncpg closes those idle for 5 minutes) must not count as negative time."""

    def __init__(self, root: int, dsn: str | None) -> None:
        self.root, self.dsn = root, dsn
        self.backends: list[int] = []
        self.samples: list[tuple[dict[int, float], dict[int, float], float, float]] = []

    def __call__(self) -> float:
        if self.dsn is not None and not self.backends:  # at the window's start: the pool has grown
            self.backends = asyncio.run(_backends(self.dsn))
        tree = process_tree(self.root)
        server = {p: ab.cpu_seconds(p) for p in tree}
        pg = {p: ab.cpu_seconds(p) for p in self.backends}
        self.samples.append((server, pg, machine_busy_seconds(), runqueue_seconds(tree)))
        return sum(server.values())

    def rates(self, seconds: float) -> tuple[float, float, float, float]:
        """Server CPU, PostgreSQL CPU, machine busy and the server's run-queue wait, per second measured."""
        (s0, p0, m0, q0), (s1, p1, m1, q1) = self.samples[0], self.samples[-1]

        def delta(before: dict[int, float], after: dict[int, float]) -> float:
            return sum(after[p] - t for p, t in before.items() if after.get(p, 0.0) > 0)  # 0: it is gone

        return delta(s0, s1) / seconds, delta(p0, p1) / seconds, (m1 - m0) / seconds, (q1 - q0) / seconds


async def _backends(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [int(r["pid"]) for r in rows]
    finally:
        await conn.close()


# -- the echo server -------------------------------------------------------------------------------


async def _echo(listen: str, response: bytes, on_ready: Callable[[int], None]) -> None:
    async def reserve(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return response  # no (de)serialisers: bytes in, the captured bytes out

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    handler = grpc.unary_unary_rpc_method_handler(reserve)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Reserve": handler}),))
    port = server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    on_ready(port)
    await stop.wait()
    await server.stop(1)


def echo_worker(listen: str, response: bytes, ready: mp.Queue[int]) -> None:
    asyncio.run(_echo(listen, response, ready.put))


def echo_main(argv: list[str]) -> int:
    """``hotspot.py serve-echo``: the echo in one process, or N workers on one port under a supervisor
    (laid out like ``agentbudget serve --workers N``)."""
    p = argparse.ArgumentParser(prog="hotspot.py serve-echo")
    p.add_argument("--listen", required=True)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--response", required=True, help="the response bytes, in hex")
    p.add_argument("--ready-file", type=Path, required=True)
    args = p.parse_args(argv)
    response = bytes.fromhex(args.response)
    if args.processes == 1:
        asyncio.run(_echo(args.listen, response, lambda port: args.ready_file.write_text(str(port))))
        return 0
    holder, port = _hold_port(args.listen)
    listen = f"{args.listen.rpartition(':')[0]}:{port}"
    ctx = mp.get_context("spawn")
    ready: mp.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=echo_worker, args=(listen, response, ready)) for _ in range(args.processes)]
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        holder.close()
        args.ready_file.write_text(str(port))
        while not stop and all(proc.is_alive() for proc in procs):
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)
    return 0


def floor_main(argv: list[str]) -> int:
    """``hotspot.py serve-floor SERVE-ARGS``: ``agentbudget serve`` whose hold path stops right before
    the ledger: the first call is applied, and its response bytes answer every later call."""
    from agentbudget_server import app, cli
    from agentbudget_server.groupcommit import GroupCommit

    class FirstAnswer(GroupCommit):
        first: bytes | None = None

        async def submit(self, call: Any) -> bytes:
            if self.first is None:
                self.first = await super().submit(call)
            return self.first

    app.GroupCommit = FirstAnswer  # type: ignore[misc]
    return cli.main(["serve", *argv])


class FloorServer(ab.Server):
    def __init__(self, dsn: str, workdir: Path, extra: list[str]) -> None:
        argv = [sys.executable, __file__, "serve-floor", "--listen", f"{ab.HOST}:0", "--database-url", dsn]
        self.launch([*argv, "--log-level", "WARNING", *extra], workdir)


class EchoServer(ab.Server):
    def __init__(self, workdir: Path, processes: int, response: bytes) -> None:
        listen = f"{ab.HOST}:0"
        argv = [sys.executable, __file__, "serve-echo", "--listen", listen, "--processes", str(processes)]
        self.launch([*argv, "--response", response.hex()], workdir)


# -- one cell --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    hold_rows: int
    active: int
    held: int
    spent: int


async def ledger_totals(dsn: str) -> Ledger:
    conn = await asyncpg.connect(dsn)
    try:
        hold_rows = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE entry_type = 'HOLD'")
        active = await conn.fetchval("SELECT count(*) FROM reservations WHERE state = 'ACTIVE'")
    finally:
        await conn.close()
    spent, held = await ab.totals(dsn)
    return Ledger(int(hold_rows), int(active), held, spent)


async def audit(dsn: str, before: Ledger, granted: int, errors: int) -> list[str]:
    """Problems after a cell of holds: the ledger agrees with itself, and holds the holds granted."""
    problems = await ab.ledger_problems(dsn)
    after = await ledger_totals(dsn)
    rows = after.hold_rows - before.hold_rows
    # A call that failed for its client (say a deadline) may still have committed its hold.
    if not granted <= rows <= granted + errors:
        expected = f"{granted}" if not errors else f"{granted} to {granted + errors} ({errors} failed calls)"
        problems.append(f"{rows} new HOLD rows, {expected} holds granted")
    if after.active - before.active != rows:
        problems.append(f"{after.active - before.active} new ACTIVE reservations for {rows} new HOLD rows")
    if after.held - before.held != rows * HOLD_NANOS:
        problems.append(f"held grew by {after.held - before.held} nanos, expected {rows * HOLD_NANOS} ({rows} holds)")
    if after.spent != before.spent:
        problems.append(f"spent changed by {after.spent - before.spent} nanos; nothing was committed")
    return problems


def _rss(root: int, kind: Kind) -> tuple[float, float]:
    """Peak RSS in MB of the largest serving process, and summed over all the server's processes."""
    pids = process_tree(root)
    peaks = {pid: _status_kb(pid, "VmHWM") / 1024 for pid in pids}
    serving = [root] if kind.processes == 1 else [p for p in pids if p != root] or pids
    return max(peaks.get(p, 0.0) for p in serving), sum(peaks.values())


def run_cell(
    args: argparse.Namespace,
    kind: Kind,
    server: ab.Server,
    dsn: str | None,
    scenario: str,
    budgets: list[str],
    clients: int,
) -> Cell:
    root = server.proc.pid
    before = asyncio.run(ledger_totals(dsn)) if dsn else None
    reset_peak_rss(process_tree(root))
    probe = Probe(root, dsn)
    tag = f"{scenario}-{clients}-{uuid.uuid4().hex[:6]}"
    load, _ = ab.run_load(
        server.target, budgets, clients, args.load_processes, args.warmup, args.seconds, tag, probe, reserve_only=True
    )
    server_cpu, pg_cpu, machine, runq = probe.rates(args.seconds)
    worker_mb, total_mb = _rss(root, kind)
    lat = sorted(load.latencies)
    cell = Cell(
        server=kind.name,
        scenario=scenario,
        clients=clients,
        generator=f"{GRPC} x{min(args.load_processes, clients)}",
        seconds=args.seconds,
        holds=len(lat),
        holds_per_s=len(lat) / args.seconds,
        p50_ms=ab.percentile(lat, 0.50) * 1000,
        p99_ms=ab.percentile(lat, 0.99) * 1000,
        errors=load.errors,
        server_cpu_pct=server_cpu * 100,
        pg_cpu_pct=pg_cpu * 100,
        load_cpu_pct=sum(load.load_cpu) * 100,
        load_cpu_max_pct=max(load.load_cpu, default=0.0) * 100,
        machine_busy_pct=machine * 100,
        server_runq_pct=runq * 100,
        rss_worker_mb=worker_mb,
        rss_total_mb=total_mb,
        error_samples=load.error_samples,
        latencies=lat,
    )
    if dsn is not None and before is not None:
        cell.problems = asyncio.run(audit(dsn, before, load.pairs_total, load.errors))
        cell.audited = True
    return cell


def _frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def run_h2load(
    args: argparse.Namespace, kind: Kind, server: ab.Server, clients: int, workdir: Path, response: bytes
) -> Cell:
    """h2load against an echo: one fixed request body over ``clients`` connections, one stream each.

    gRPC answers HTTP 200 whatever its status (that is in the trailers): a call counts as served when
    its HTTP status is 200, and the data h2load received must hold one whole response per call."""
    body, log = workdir / "request.bin", workdir / f"h2load-{clients}.log"
    request = pb.ReserveRequest(budget=HOT_BUDGETS[0], reservation_id=f"h2load-{uuid.uuid4().hex}", amount=ab.HOLD)
    body.write_bytes(_frame(request.SerializeToString()))
    root = server.proc.pid
    reset_peak_rss(process_tree(root))
    probe = Probe(root, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = ["h2load", "-c", str(clients), "-m", "1", "-t", "1", "-D", f"{args.seconds * 1000:.0f}ms"]
    argv += ["--warm-up-time", f"{args.warmup * 1000:.0f}ms", "-d", str(body), "--log-file", str(log)]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{server.target}{METHOD}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(args.warmup + 0.2)  # h2load connects, then warms up
    probe()
    time.sleep(args.seconds)
    probe()
    out, _ = proc.communicate(timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    h2load_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / (args.warmup + args.seconds)
    server_cpu, _, machine, runq = probe.rates(args.seconds)
    worker_mb, total_mb = _rss(root, kind)
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    data = re.search(r"traffic: .*\((\d+)\) data", out)
    if proc.returncode != 0 or done is None or data is None:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out}")
    # The log lists the measured requests: start (µs since the epoch), HTTP status, µs to the response.
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    lat = sorted(int(r[2]) / 1e6 for r in rows if r[1] == "200")
    failed = int(done.group(5)) + len(rows) - len(lat)
    samples = [] if not failed else [line for line in out.splitlines() if "failed" in line or "errored" in line][:5]
    if int(data.group(1)) < int(done.group(4)) * len(_frame(response)):  # done.group(4): those that succeeded
        samples.append(f"h2load received {data.group(1)} data bytes for {done.group(4)} calls: not one response each")
        failed = failed or 1
    return Cell(
        server=kind.name,
        scenario=HOT,
        clients=clients,
        generator=H2LOAD,
        seconds=args.seconds,
        holds=len(lat),
        holds_per_s=len(lat) / args.seconds,
        p50_ms=ab.percentile(lat, 0.50) * 1000,
        p99_ms=ab.percentile(lat, 0.99) * 1000,
        errors=failed,
        server_cpu_pct=server_cpu * 100,
        pg_cpu_pct=0.0,
        load_cpu_pct=h2load_cpu * 100,
        load_cpu_max_pct=h2load_cpu * 100,
        machine_busy_pct=machine * 100,
        server_runq_pct=runq * 100,
        rss_worker_mb=worker_mb,
        rss_total_mb=total_mb,
        error_samples=samples,
        latencies=lat,
    )


# -- servers ---------------------------------------------------------------------------------------


async def capture_response(target: str, budget: str) -> bytes:
    """The bytes of one real ReserveResponse (an id shaped like the load's), for the echo to answer."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # no (de)serialisers: bytes both ways
        request = pb.ReserveRequest(budget=budget, reservation_id=f"{HOT}-64-{uuid.uuid4().hex[:6]}-w0-0-1000")
        request.amount.CopyFrom(ab.HOLD)
        data: bytes = await call(request.SerializeToString(), timeout=ab.RPC_TIMEOUT)
        pb.ReserveResponse.FromString(data)  # it is one
        return data


def _progress(c: Cell) -> None:
    print(
        f"  {c.server} {c.scenario} x{c.clients} ({c.generator}): {c.holds_per_s:.0f} holds/s, "
        f"p99 {c.p99_ms:.1f} ms, {c.errors} errors, server {c.server_cpu_pct:.0f}%, load {c.load_cpu_pct:.0f}%",
        file=sys.stderr,
        flush=True,
    )


@dataclass
class Started:
    kind: Kind
    server: ab.Server
    dsn: str | None  # the real servers' own database; None for an echo
    workdir: Path


class Run:
    """Every selected server started at once, each real one on a fresh database of its own; then
    each cell runs for every server back to back (in alternating order from one round to the
    next), so that whatever else the machine does weighs on all of them alike."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: ExitStack) -> None:
        self.args, self.workdir, self.stack = args, workdir, stack
        self.response = b""
        self.postgres = ""
        self.started: list[Started] = []
        self.scenarios = ab.scenarios(args.budgets)

    def _real(self, kind: Kind, flags: tuple[str, ...]) -> Started:
        where = self.workdir / kind.name
        where.mkdir()
        dsn, self.postgres = self.stack.enter_context(ab.bench_database(self.args.admin_dsn, DATABASE_PREFIX))
        server = (FloorServer if kind.floor else ab.Server)(dsn, where, [*SERVE_FLAGS, *flags])
        self.stack.callback(server.stop)
        for budgets in self.scenarios.values():
            asyncio.run(ab.create_budgets(server.target, budgets))
        return Started(kind, server, dsn, where)

    def start(self) -> None:
        kinds = [KINDS[name] for name in self.args.servers]
        for kind in kinds:
            if kind.flags is not None:
                self.started.append(self._real(kind, kind.flags))
                print(f"  {kind.name}: {kind.what} on {self.started[-1].server.target}", file=sys.stderr, flush=True)
        if self.started:
            self.response = asyncio.run(capture_response(self.started[0].server.target, HOT_BUDGETS[0]))
        elif any(k.flags is None for k in kinds):  # echo only: a real server just to capture a response
            capture = self._real(Kind("capture", "", (), 1), ())
            self.response = asyncio.run(capture_response(capture.server.target, HOT_BUDGETS[0]))
        for kind in kinds:
            if kind.flags is None:
                where = self.workdir / kind.name
                where.mkdir()
                server = EchoServer(where, kind.processes, self.response)
                self.stack.callback(server.stop)
                self.started.append(Started(kind, server, None, where))
                print(f"  {kind.name}: {kind.what} on {server.target}", file=sys.stderr, flush=True)
        order = {name: i for i, name in enumerate(self.args.servers)}
        self.started.sort(key=lambda s: order[s.kind.name])

    def rounds(self) -> list[Cell]:
        cells: list[Cell] = []
        for r in range(self.args.rounds):
            servers = self.started if r % 2 == 0 else self.started[::-1]
            for scenario, budgets in self.scenarios.items():
                for clients in self.args.clients:
                    for s in servers:
                        audited = None if s.kind.floor else s.dsn  # the floor's ledger has one hold
                        cells.append(run_cell(self.args, s.kind, s.server, audited, scenario, budgets, clients))
                        _progress(cells[-1])
            if self.args.h2load:
                for clients in self.args.clients:
                    for s in servers:
                        if s.dsn is None:
                            cells.append(run_h2load(self.args, s.kind, s.server, clients, s.workdir, self.response))
                            _progress(cells[-1])
        return pool(cells, [s.kind.name for s in self.started])

    def logs(self) -> dict[str, str]:
        return {s.kind.name: s.server.log_tail(50) for s in self.started}


_MEAN = ("server_cpu_pct", "pg_cpu_pct", "load_cpu_pct", "machine_busy_pct", "server_runq_pct")
_MAX = ("load_cpu_max_pct", "rss_worker_mb", "rss_total_mb")


def pool(cells: list[Cell], servers: list[str]) -> list[Cell]:
    """The rounds of each cell as one: throughput over their total time, percentiles over all their
    calls, mean CPU, the highest peaks; in the order server, generator, scenario, clients."""
    groups: dict[tuple[str, str, str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.server, c.generator, c.scenario, c.clients), []).append(c)
    out = []
    for same in groups.values():
        seconds, holds = sum(c.seconds for c in same), sum(c.holds for c in same)
        lat = sorted(x for c in same for x in c.latencies)
        merged = replace(
            same[0],
            seconds=seconds,
            holds=holds,
            holds_per_s=holds / seconds,
            p50_ms=ab.percentile(lat, 0.50) * 1000,
            p99_ms=ab.percentile(lat, 0.99) * 1000,
            latencies=lat,
            errors=sum(c.errors for c in same),
            error_samples=[e for c in same for e in c.error_samples][:5],
            problems=[p for c in same for p in c.problems],
            **{f: statistics.mean(getattr(c, f) for c in same) for f in _MEAN},
            **{f: max(getattr(c, f) for c in same) for f in _MAX},
        )
        out.append(merged)
    out.sort(
        key=lambda c: (
            servers.index(c.server),
            c.generator.startswith(H2LOAD),
            c.scenario != HOT,
            c.clients,
        )
    )
    return out


# -- report ----------------------------------------------------------------------------------------


def render(cells: list[Cell]) -> str:
    headers = ["SERVER", "SCENARIO", "CLIENTS", "LOAD", "HOLDS/S", "P50 MS", "P99 MS", "ERRORS", "SERVER CPU"]
    headers += ["SRV WAIT", "PG CPU", "LOAD CPU", "MACHINE", "OTHERS", "SATURATED", "RSS/WORKER", "RSS TOTAL", "AUDIT"]
    rows = [
        [
            c.server,
            c.scenario,
            str(c.clients),
            c.generator,
            f"{c.holds_per_s:.0f}",
            f"{c.p50_ms:.2f}",
            f"{c.p99_ms:.2f}",
            str(c.errors),
            f"{c.server_cpu_pct:.0f}%",
            f"{c.server_runq_pct:.0f}%",
            f"{c.pg_cpu_pct:.0f}%" if c.audited else "-",
            f"{c.load_cpu_pct:.0f}%",
            f"{c.machine_busy_pct:.0f}%",
            f"{c.others_pct:.0f}%",
            c.saturated,
            f"{c.rss_worker_mb:.0f} MB",
            f"{c.rss_total_mb:.0f} MB",
            ("ok" if not c.problems else "FAILED") if c.audited else "-",
        ]
        for c in cells
    ]
    return render_table(headers, rows)


@dataclass
class Ratio:
    what: str
    value: float | None  # None: a side was not measured
    target: str
    met: bool | None

    def line(self) -> str:
        value = "n/a (not measured)" if self.value is None else f"{self.value:.2f}"
        verdict = "" if self.met is None else ("  MET" if self.met else "  NOT MET")
        return f"{self.what}: {value}  (target {self.target}){verdict}"


def ratios(cells: list[Cell], args: argparse.Namespace) -> list[Ratio]:
    def find(server: str, scenario: str, clients: int, generator: str = GRPC) -> Cell | None:
        for c in cells:
            if (c.server, c.scenario, c.clients) == (server, scenario, clients) and c.generator.startswith(generator):
                return c
        return None

    def ratio(what: str, a: Cell | None, b: Cell | None, least: float, info: bool = False) -> Ratio:
        target = "none: for reference" if info else f">= {least:g}"
        if a is None or b is None or not b.holds_per_s:
            return Ratio(what, None, target, None)
        value = a.holds_per_s / b.holds_per_s
        return Ratio(what, value, target, None if info else value >= least)

    hot, spread = list(ab.scenarios(args.budgets))  # the names of the two scenarios
    heavy = [n for n in (64, 256) if n in args.clients] or [max(args.clients)]
    out = [ratio("hot x64: group / naive holds/s", find("group", hot, 64), find("naive", hot, 64), 3)]
    g64 = find("group", hot, 64)
    out.append(
        Ratio("hot x64: group p99 ms", g64.p99_ms if g64 else None, "<= 40", None if g64 is None else g64.p99_ms <= 40)
    )
    for n in args.clients:
        out.append(ratio(f"group x{n}: {hot} / {spread} holds/s", find("group", hot, n), find("group", spread, n), 0.9))
    for scenario in (hot, spread):
        for n in heavy:
            out.append(
                ratio(
                    f"{scenario} x{n}: group / echo (1 process)",
                    find("group", scenario, n),
                    find("echo", scenario, n),
                    0.75,
                )
            )
    for scenario in (hot, spread):
        for n in heavy:
            f, e, g = find("floor", scenario, n), find("echo", scenario, n), find("group", scenario, n)
            out.append(ratio(f"{scenario} x{n}: floor / echo (the server without its ledger)", f, e, 0, info=True))
            out.append(ratio(f"{scenario} x{n}: group / floor (what the ledger leaves)", g, f, 0, info=True))
    for scenario in (hot, spread):
        for n in heavy:
            g, g2 = find("group", scenario, n), find("group2", scenario, n)
            out.append(ratio(f"{scenario} x{n}: group2 / group (two workers / one)", g2, g, 1.3))
            e, e2 = find("echo", scenario, n), find("echo2", scenario, n)
            out.append(ratio(f"{scenario} x{n}: echo2 / echo (the same for gRPC alone)", e2, e, 0, info=True))
    for n in heavy:
        e, e2 = find("echo", hot, n, H2LOAD), find("echo2", hot, n, H2LOAD)
        out.append(ratio(f"{hot} x{n}: echo2 / echo, both driven by h2load", e2, e, 0, info=True))
    for n in heavy:
        e, h = find("echo", hot, n), find("echo", hot, n, H2LOAD)
        out.append(ratio(f"{hot} x{n}: echo driven by h2load / by grpc.aio", h, e, 0, info=True))
        out.append(ratio(f"{hot} x{n}: group (grpc.aio) / echo (h2load)", find("group", hot, n), h, 0, info=True))
    top = max(args.clients)
    for server in ("naive", "group", "group2"):
        peak = [c for c in cells if c.server == server and c.clients == top]
        if peak:
            mb = max(c.rss_worker_mb for c in peak)
            out.append(Ratio(f"{server} x{top}: peak RSS per worker MB", mb, "<= 150", mb <= 150))
    return out


def notes(cells: list[Cell]) -> list[str]:
    out = [
        "naive is the same server code as group with grouping off (--max-batch 1: one transaction per hold).",
        "SERVER CPU sums the server's processes (a supervisor and its workers included); SRV WAIT is the time "
        "its threads were runnable but waiting for a core (summed like CPU: starved by the rest); PG CPU is the "
        "server's PostgreSQL backends; LOAD CPU sums the load processes (h2load: its one thread); MACHINE is "
        f"every core busy ({len(os.sched_getaffinity(0))} cores = {100 * len(os.sched_getaffinity(0))}%), "
        "other users of the machine included; OTHERS is MACHINE less the three before it (other users of the "
        "machine, the kernel, PostgreSQL's shared background processes). 100% = one core.",
        "SATURATED: load-proc = a load process used >= 90% of a core (its clients queue behind its event "
        "loop: the generator held the number down); machine = the machine was >= 95% busy (server, "
        "PostgreSQL and load generator compete for the same cores); no = neither.",
        f"echo ignores the budget, so its {HOT} and spread rows differ only by noise (a measure of it).",
    ]
    busy = [c for c in cells if c.load_cpu_max_pct >= 90]
    machine = sum(1 for c in cells if c.machine_busy_pct >= 95)
    out.append(
        "a load process was saturated (>= 90% of a core) in "
        + (", ".join(f"{c.server} {c.scenario} x{c.clients}" for c in busy) if busy else "no cell")
        + f"; the machine was >= 95% busy in {machine} of {len(cells)} cells (then every number is bounded by the "
        "CPU it got, shared with the load generator, PostgreSQL and the machine's other users: see OTHERS)."
    )
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ab.add_common_arguments(p, [1, 16, 64, 256])
    p.add_argument("--servers", default=",".join(KINDS), help=f"a comma-separated subset of {','.join(KINDS)}")
    p.add_argument("--load-processes", type=int, default=3, help="load-generator processes (grpc.aio clients)")
    p.add_argument("--rounds", type=int, default=1, help="run every cell this many times (alternating order), pooled")
    p.add_argument(
        "--h2load",
        action=argparse.BooleanOptionalAction,
        default=shutil.which("h2load") is not None,
        help="also drive the echo servers with h2load (default: when installed)",
    )
    args = p.parse_args()
    ab.check_common_arguments(p, args, args.load_processes)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.servers if s not in KINDS]
    if unknown or not args.servers:
        p.error(f"--servers: unknown {unknown}; choose from {','.join(KINDS)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.h2load and shutil.which("h2load") is None:
        p.error("--h2load: h2load is not installed (apt-get install -y nghttp2-client)")
    return args


def _json(c: Cell) -> dict[str, Any]:
    out = asdict(c) | {"saturated": c.saturated, "others_pct": c.others_pct}
    del out["latencies"]
    return out


def main() -> int:
    if sys.argv[1:2] == ["serve-echo"]:
        return echo_main(sys.argv[2:])
    if sys.argv[1:2] == ["serve-floor"]:
        return floor_main(sys.argv[2:])
    args = parse_args()
    for name, value in SERVE_ENV.items():
        os.environ.setdefault(name, value)  # the servers inherit it
    load_average = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentbudget-hotspot-") as workdir, ExitStack() as stack:
        run = Run(args, Path(workdir), stack)
        print("starting the servers:", file=sys.stderr, flush=True)
        run.start()
        cells = run.rounds()
        logs = run.logs()
    machine = (
        f"machine: nproc={len(os.sched_getaffinity(0))}, load average {load_average[0]:.2f} "
        f"{load_average[1]:.2f} {load_average[2]:.2f} at start, {os.getloadavg()[0]:.2f} at the end, "
        f"PostgreSQL {run.postgres or '-'}; {args.load_processes} grpc.aio load processes at most; "
        f"{args.seconds:g} s per cell after {args.warmup:g} s warm-up, {args.rounds} round(s); "
        f"{time.monotonic() - started:.0f} s in all"
    )
    print("servers:")
    for name in args.servers:
        print(f"  {name}: {KINDS[name].what}")
    print(render(cells))
    print(machine)
    for line in notes(cells):
        print(f"note: {line}")
    if run.response:
        print(f"note: the echo answers {len(run.response)} bytes, one real ReserveResponse captured first.")
    found = ratios(cells, args)
    print("ratios:")
    for r in found:
        print(f"  {r.line()}")
    failed = False
    for c in cells:
        label = f"{c.server} {c.scenario} x{c.clients} ({c.generator})"
        for line in c.error_samples:
            print(f"{label}: error: {line}")
        if c.audited:
            print(f"{label}: audit ok" if not c.problems else f"{label}: audit FAILED")
        for line in c.problems:
            print(f"{label}: {line}")
        failed = failed or bool(c.problems)
    for name, text in logs.items():
        if text.strip():
            print(f"{name} server log (warnings and above, last lines):\n{text}")
    if args.json:
        report: dict[str, Any] = {
            "machine": machine,
            "load_average_at_start": load_average,
            "postgres": run.postgres,
            "servers": {n: KINDS[n].what for n in args.servers},
            "response_bytes": len(run.response),
            "cells": [_json(c) for c in cells],
            "ratios": [asdict(r) for r in found],
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
