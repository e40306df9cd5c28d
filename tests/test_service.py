"""The process around the servicer: health, reflection, shutdown order, database outages."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import asyncpg
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from conftest import ADMIN_DSN, expect_error, make_budget, usd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from procs import ServerProcess, agentbudget_executable

Code = grpc.StatusCode
SERVICE = "agentbudget.v1.BudgetAuthority"


async def test_health_reports_serving_for_the_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services_like_grpcurl_would(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for resp in call:
        names = {s.name for s in resp.list_services_response.service}
        break
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]))
    async for resp in call:
        assert resp.file_descriptor_response.file_descriptor_proto
        break


async def test_sigterm_turns_health_not_serving_before_the_server_stops(dsn):
    with ServerProcess(dsn, extra_args=("--grace-seconds", "2")) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            seen = []
            async for resp in watch:
                seen.append(resp.status)
                if len(seen) == 1:
                    assert server.proc is not None
                    server.proc.send_signal(signal.SIGTERM)
                else:
                    break
            assert seen == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
        assert await asyncio.to_thread(server.stop) == 0


async def test_a_database_outage_is_unavailable_and_service_resumes_after_it(stub, dsn):
    await make_budget(stub)
    database = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        req = pb.ReserveRequest(budget="team/agent", reservation_id="r1", amount=usd("1"))
        await expect_error(stub.Reserve(req), Code.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        granted = await stub.Reserve(req)  # the same id, retried after the outage
        assert granted.reservation.state == pb.RESERVATION_ACTIVE
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()


def test_cli_drives_a_budget_from_the_shell(dsn):
    with ServerProcess(dsn) as server:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            command = [agentbudget_executable(), *args, "--target", server.address]
            return subprocess.run(command, capture_output=True, text=True, timeout=30)

        made = cli("budget", "set", "team/research", "--limit", "20")
        assert made.returncode == 0 and "team/research" in made.stdout and "20.00 USD" in made.stdout
        assert cli("reserve", "team/research", "2.50", "--id", "r1").returncode == 0
        done = cli("commit", "team/research", "r1", "1.25", "--json")
        assert done.returncode == 0 and '"state": "RESERVATION_COMMITTED"' in done.stdout
        denied = cli("reserve", "team/research", "100")
        assert denied.returncode == 1 and "BUDGET_EXCEEDED" in denied.stderr and "18.75" in denied.stderr
        shown = cli("budget", "list")
        assert "18.75 USD" in shown.stdout and "ACTIVE" in shown.stdout
        events = cli("events")
        assert "BUDGET_CREATED" in events.stdout and "RESERVATION_DENIED" in events.stdout
        bad = cli("budget", "set", "team/x", "--limit", "1.0000000001")
        assert bad.returncode == 2 and "nano" in bad.stderr


def test_cli_prices_usage_locally_and_asks_the_authority_for_routes(dsn):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([agentbudget_executable(), *args], capture_output=True, text=True, timeout=60)

    priced = run("price", "--model", "claude-sonnet-4-5", "--input-tokens", "12000", "--output-tokens", "800")
    assert priced.returncode == 0 and priced.stdout.startswith("0.048 USD") and "genai-prices" in priced.stdout
    unknown = run("price", "--model", "no-such-model", "--input-tokens", "1")
    assert unknown.returncode == 2 and "no price is known" in unknown.stderr
    with ServerProcess(dsn) as server:
        target = ["--target", server.address]
        assert run("budget", "set", "team/research", "--limit", "20", *target).returncode == 0
        routed = run("route", "team/research", "research", *target)
        assert routed.returncode == 0 and "premium" in routed.stdout and "claude-opus-4-1" in routed.stdout
        bad = run("route", "team/research", "knitting", *target)
        assert bad.returncode == 1 and "UNKNOWN_TASK_CLASS" in bad.stderr
