"""What authentication costs: Reserve+Commit throughput over TLS with an API key, against the
unauthenticated plaintext server, side by side in one run.

Two ``agentbudget serve`` processes share one fresh database: one plaintext with ``--auth none``,
one with TLS (a self-signed certificate made with ``openssl``) and ``--auth required``, whose
clients present an API key (an agent key scoped to ``bench/*``) on every call. The rate limit is
set far above the load on the secured side (its buckets still run) and off on the other. Each cell
runs ``--rounds`` times per side in alternating order, pooled, with the load machinery of
``bench/authority.py`` (its load processes, its cells, its audit of the ledger after each cell);
only the channel its load processes open differs.

    .venv/bin/python bench/auth.py [--quick] [--seconds 5] [--clients 1 16 64] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import authority as ab
import grpc
import yaml
from agentbudget import credentials
from agentbudget_server.auth import apikeys

CA_ENV, KEY_ENV = "AGENTBUDGET_BENCH_TLS_CA", "AGENTBUDGET_BENCH_API_KEY"
PLAIN, SECURED = "plaintext", "tls-apikey"  # (part of the reservation ids)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: the client trusts exactly it."""
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def secure_channel_factory(ca: bytes, key: str) -> Any:
    """``grpc.aio.insecure_channel``'s signature, opening a TLS channel that sends the key the way
    ``agentbudget.client.connect`` does (its interceptors: the metadata is added on the event loop,
    where call credentials would run a plugin on a thread for every call)."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    source = credentials.TokenSource(key)

    def open_channel(target: str, options: Any = None, **kwargs: Any) -> grpc.aio.Channel:
        kwargs["interceptors"] = [*(kwargs.get("interceptors") or ()), *credentials.bearer_interceptors(source)]
        return grpc.aio.secure_channel(target, creds, options, **kwargs)

    return open_channel


def secured_worker_main(job: ab.Job, barrier: Barrier, results: mp.Queue[ab.WorkerResult]) -> None:
    """A load process of bench/authority.py whose channels are TLS with the API key."""
    grpc.aio.insecure_channel = secure_channel_factory(Path(os.environ[CA_ENV]).read_bytes(), os.environ[KEY_ENV])
    ab.worker_main(job, barrier, results)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Settings for a server process started inside (it reads AGENTBUDGET_* at start)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def secured_load(ca: Path, key: str) -> Iterator[None]:
    """bench/authority.py's load processes, started inside, open TLS channels with the key."""
    original = ab.worker_main
    ab.worker_main = secured_worker_main  # run_load starts the processes with this global
    try:
        with environment(**{CA_ENV: str(ca), KEY_ENV: key}):
            yield
    finally:
        ab.worker_main = original


def parse_args() -> argparse.Namespace:
    cpus = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--admin-dsn", default=os.environ.get("AGENTBUDGET_BENCH_ADMIN_DSN", ab.DEFAULT_ADMIN_DSN))
    p.add_argument("--seconds", type=float, default=5.0, help="measured duration per round")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before each round")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s per round, 0.3 s warm-up, 1 round")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients per cell")
    p.add_argument("--budgets", type=int, default=1000, help="budgets of the spread scenario")
    p.add_argument("--workers", type=int, default=min(4, max(2, cpus)), help="load-generator processes")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per side and cell")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds = 1.0, 0.3, 1
    if args.seconds <= 0 or args.warmup < 0 or args.workers < 1 or args.rounds < 1 or min(args.clients) < 1:
        p.error("durations, workers, rounds and clients must be positive")
    args.pricing = False  # run_cell's comparison flag of bench/authority.py: not this one
    return args


def run(args: argparse.Namespace, dsn: str, workdir: Path) -> tuple[list[ab.Cell], str]:
    cert, tls_key = self_signed(workdir)
    key = apikeys.new_key()
    keys = workdir / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [apikeys.entry("bench", "agent", ["bench/*"], key)]}))
    (workdir / PLAIN).mkdir()
    (workdir / SECURED).mkdir()
    common = {"AGENTBUDGET_METRICS_LISTEN": "127.0.0.1:0"}  # two servers: no fixed metrics port
    with environment(**common, AGENTBUDGET_AUTH="none", AGENTBUDGET_RATE_LIMIT_PER_SECOND="0"):
        plain = ab.Server(dsn, workdir / PLAIN)
    secured_env = {
        "AGENTBUDGET_AUTH": "required",
        "AGENTBUDGET_API_KEYS_FILE": str(keys),
        "AGENTBUDGET_TLS_CERT": str(cert),
        "AGENTBUDGET_TLS_KEY": str(tls_key),
        "AGENTBUDGET_RATE_LIMIT_PER_SECOND": "1000000000",
        "AGENTBUDGET_RATE_LIMIT_BURST": "1000000000",
    }
    try:
        with environment(**common, **secured_env):
            secured = ab.Server(dsn, workdir / SECURED)
    except BaseException:
        plain.stop()
        raise
    cells: list[ab.Cell] = []
    try:
        spread = [f"bench/b-{i:05d}" for i in range(args.budgets)]
        for scenario, budgets in {"hot-1": ["bench/hot"], f"spread-{args.budgets}": spread}.items():
            asyncio.run(ab.create_budgets(plain.target, budgets))  # one database: the secured side sees them
            for n, clients in enumerate(args.clients):
                rounds: dict[str, list[ab.Cell]] = {PLAIN: [], SECURED: []}
                for r in range(args.rounds):
                    for side in (PLAIN, SECURED) if (n + r) % 2 == 0 else (SECURED, PLAIN):
                        server = plain if side == PLAIN else secured
                        load = secured_load(cert, key) if side == SECURED else contextlib.nullcontext()
                        with load:
                            cell = ab.run_cell(args, server, dsn, f"{scenario}:{side}", budgets, clients)
                        rounds[side].append(cell)
                        print(f"  {cell.scenario} x{clients}: {cell.pairs_per_s:.0f} pairs/s, {cell.errors} errors",
                              file=sys.stderr, flush=True)  # fmt: skip
                cells += [ab.pool_rounds(rounds[PLAIN]), ab.pool_rounds(rounds[SECURED])]
        return cells, secured.log_tail(20)
    finally:
        secured.stop()
        plain.stop()


def main() -> int:
    args = parse_args()
    database = f"agentbudget_bench_{uuid.uuid4().hex[:10]}"
    dsn = ab.dsn_for(args.admin_dsn, database)
    version = asyncio.run(ab.admin(args.admin_dsn, f'CREATE DATABASE "{database}"'))
    machine = (
        f"machine: nproc={len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} at start, "
        f"PostgreSQL {version}; {args.workers} load processes at most, {args.rounds} rounds per side of "
        f"{args.seconds:g} s after {args.warmup:g} s warm-up"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="agentbudget-bench-auth-") as workdir:
            cells, log = run(args, dsn, Path(workdir))
    finally:
        asyncio.run(ab.admin(args.admin_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    print(ab.render(cells, machine))
    ratios = {}
    for plain, secured in zip(cells[::2], cells[1::2], strict=True):
        name = f"{plain.scenario.rsplit(':', 1)[0]} x{plain.clients}"
        ratios[name] = secured.pairs_per_s / plain.pairs_per_s if plain.pairs_per_s else 0.0
        # The server's CPU per pair: less at the mercy of whatever else the machine runs than throughput.
        cpu = [c.server_cpu_pct * 10_000 / c.pairs_per_s if c.pairs_per_s else 0.0 for c in (plain, secured)]
        print(f"{name}: {SECURED} / {PLAIN} = {ratios[name]:.2f}; server CPU per pair {cpu[0]:.0f} / {cpu[1]:.0f} µs")
    failed = False
    for c in cells:
        for line in c.error_samples + c.problems:
            print(f"{c.scenario} x{c.clients}: {line}")
        failed = failed or bool(c.problems) or c.errors > 0
    if log.strip():
        print(f"secured server log (WARNING and above, last lines):\n{log}")
    if args.json:
        report = {"machine": machine, "cells": [asdict(c) for c in cells], "ratios": ratios}
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
