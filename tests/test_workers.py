"""``serve --workers N``: several processes on one port, all serving, stopped and replaced together."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from conftest import audit, make_budget, until, usd
from procs import ServerProcess


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found |= {int(c) for c in text}
    return {c for c in found if _is_worker(c)}


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    return b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline


def _running(pid: int) -> bool:
    try:
        return b"zombie" not in Path(f"/proc/{pid}/status").read_bytes()
    except FileNotFoundError:
        return False


def established_on(pid: int, port: int) -> int:
    """How many accepted TCP connections to ``port`` the process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    lines = [ln for table in ("tcp", "tcp6") for ln in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
    for line in lines:  # gRPC listens dual-stack: IPv4 peers appear in tcp6 as mapped addresses
        cols = line.split()
        local_port = int(cols[1].rsplit(":", 1)[1], 16)
        if local_port == port and cols[3] == "01" and cols[9] in inodes:  # 01: ESTABLISHED
            count += 1
    return count


async def test_two_workers_share_the_port_and_the_budgets(dsn):
    server = ServerProcess(dsn, extra_args=("--workers", "2"), name="workers")
    with server:
        workers = children(server.pid)
        assert len(workers) == 2
        # A local subchannel pool each: otherwise the channels of one process share one connection.
        local = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(server.address, options=local) for _ in range(16)]
        try:
            stubs = [pb_grpc.BudgetAuthorityStub(ch) for ch in channels]
            await make_budget(stubs[0], name="team/shared", limit="10")
            results = await asyncio.gather(
                *(
                    stub.Reserve(pb.ReserveRequest(budget="team/shared", reservation_id=f"r{i}", amount=usd("1")))
                    for i, stub in enumerate(stubs)
                ),
                return_exceptions=True,
            )
            # One budget, two processes: still never more than the limit.
            assert sum(isinstance(r, pb.ReserveResponse) for r in results) == 10
            assert all(isinstance(r, pb.ReserveResponse | grpc.aio.AioRpcError) for r in results)
            # Sixteen connections: the kernel gave both workers some.
            assert all(established_on(w, server.port) > 0 for w in workers), [
                established_on(w, server.port) for w in workers
            ]
        finally:
            for ch in channels:
                await ch.close()
        assert server.stop() == 0
        assert not any(_running(w) for w in workers)
    assert await audit(dsn) == []


async def test_a_worker_that_dies_is_replaced_and_the_port_keeps_serving(dsn):
    with ServerProcess(dsn, extra_args=("--workers", "2"), name="workers") as server:
        first = children(server.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = children(server.pid)
            return len(now) == 2 and victim not in now

        await until(replaced, True, deadline=30)
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.BudgetAuthorityStub(ch)
            await make_budget(stub, name="team/after", limit="1")
            held = await stub.Reserve(pb.ReserveRequest(budget="team/after", reservation_id="r", amount=usd("1")))
            assert held.reservation.state == pb.RESERVATION_ACTIVE
        assert server.stop() == 0


async def test_workers_do_not_outlive_a_killed_supervisor(dsn):
    with ServerProcess(dsn, extra_args=("--workers", "2"), name="workers") as server:
        workers = children(server.pid)
        os.kill(server.pid, signal.SIGKILL)  # the supervisor alone, no chance to stop anyone

        async def alive() -> int:
            return sum(_running(w) for w in workers)

        await until(alive, 0, deadline=30)
