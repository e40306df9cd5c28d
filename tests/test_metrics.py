"""Prometheus metrics, scraped over HTTP from a real authority after real calls."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
import asyncpg
import grpc
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app, tally
from agentbudget_server.tally import advance
from conftest import expect_error, make_budget, server_settings, until, usd
from google.protobuf.duration_pb2 import Duration
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 if the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def model(name: str, kind: int = pb.MODEL_INFERENCE) -> pb.CostDetails:
    return pb.CostDetails(kind=kind, model=name, task_id="task-1")


async def test_reserve_commit_and_deny_move_the_counters(authority, stub):
    await make_budget(stub, "team/a", "10")
    await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r1", amount=usd("4")))
    await stub.Commit(
        pb.CommitRequest(budget="team/a", reservation_id="r1", actual=usd("3.25"), details=model("claude-sonnet-4-5"))
    )
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r2", amount=usd("20"))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
    )
    s = await scrape(authority.metrics_port)
    assert value(s, "agentbudget_holds_granted_total", budget="team/a") == 1
    assert value(s, "agentbudget_holds_committed_total", budget="team/a") == 1
    cost = dict(budget="team/a", currency="USD", model="claude-sonnet-4-5", kind="MODEL_INFERENCE")
    assert value(s, "agentbudget_committed_cost_total", **cost) == 3.25
    assert value(s, "agentbudget_holds_denied_total", budget="team/a", reason="BUDGET_EXCEEDED") == 1
    assert value(s, "agentbudget_events_total", type="RESERVATION_DENIED") == 1
    assert value(s, "agentbudget_events_total", type="BUDGET_CREATED") == 1
    svc = "agentbudget.v1.BudgetAuthority"
    assert value(s, "agentbudget_rpc_handled_total", service=svc, method="Reserve", code="OK") == 1
    assert value(s, "agentbudget_rpc_handled_total", service=svc, method="Reserve", code="RESOURCE_EXHAUSTED") == 1
    assert value(s, "agentbudget_rpc_duration_seconds_count", service=svc, method="Commit", code="OK") == 1
    assert value(s, "agentbudget_rpc_duration_seconds_bucket", service=svc, method="Commit", code="OK", le="+Inf") == 1
    assert value(s, "agentbudget_budget_utilization_ratio", budget="team/a") == 0.325
    assert value(s, "agentbudget_budget_spent", budget="team/a", currency="USD") == 3.25
    assert value(s, "agentbudget_budget_remaining", budget="team/a", currency="USD") == 6.75
    assert value(s, "agentbudget_budget_alert_threshold_ratio", budget="team/a", threshold="0.8") == 0.8
    assert value(s, "agentbudget_budget_phase", budget="team/a", phase="ACTIVE") == 1
    assert value(s, "agentbudget_budget_phase", budget="team/a", phase="EXHAUSTED") == 0
    assert value(s, "agentbudget_db_pool_size") >= 1
    assert value(s, "agentbudget_db_pool_max") == authority.settings.pool_max
    assert "agentbudget_db_pool_idle" in {name for name, _ in s}
    # Three hold-path calls, one after another: three transactions of one call each.
    assert value(s, "agentbudget_group_commit_calls_total") == 3
    assert value(s, "agentbudget_group_commit_transactions_total") == 3
    # The reserve and the commit were written without the lock; the denial's event needed it.
    assert value(s, "agentbudget_group_commit_unlocked_total", outcome="written") == 2
    assert value(s, "agentbudget_group_commit_unlocked_total", outcome="needs_lock") == 1
    assert value(s, "agentbudget_group_commit_unlocked_total", outcome="moved") == 0
    # No series carries a reservation, request or task id.
    assert not any(v in ("r1", "r2", "task-1") for _, labels in s for _, v in labels)


async def test_replays_count_once_and_direct_charges_count_as_cost(authority, stub):
    await make_budget(stub, "team/a", "10")
    reserve = pb.ReserveRequest(budget="team/a", reservation_id="r1", amount=usd("2"))
    commit = pb.CommitRequest(budget="team/a", reservation_id="r1", actual=usd("1.5"), details=model("m1"))
    charge = pb.RecordCostRequest(budget="team/a", request_id="c1", amount=usd("0.25"), details=model("", pb.SANDBOX))
    for _ in range(3):  # the client retried: the same requests replay the same results
        await stub.Reserve(reserve)
        await stub.Commit(commit)
        await stub.RecordCost(charge)
    s = await scrape(authority.metrics_port)
    assert value(s, "agentbudget_holds_granted_total", budget="team/a") == 1
    assert (
        value(
            s, "agentbudget_committed_cost_total", budget="team/a", currency="USD", model="m1", kind="MODEL_INFERENCE"
        )
        == 1.5
    )
    assert (
        value(s, "agentbudget_committed_cost_total", budget="team/a", currency="USD", model="none", kind="SANDBOX")
        == 0.25
    )
    rpc = dict(service="agentbudget.v1.BudgetAuthority", code="OK")
    assert value(s, "agentbudget_rpc_handled_total", method="Commit", **rpc) == 3  # calls, not ledger effects


async def test_expired_released_and_paused_holds(authority, stub):
    await make_budget(stub, "team/a", "10")
    ttl = Duration(nanos=200_000_000)
    await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="short", amount=usd("1"), ttl=ttl))
    await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="kept", amount=usd("1")))
    await stub.Release(pb.ReleaseRequest(budget="team/a", reservation_id="kept"))

    async def expired() -> float:
        return value(await scrape(authority.metrics_port), "agentbudget_holds_expired_total", budget="team/a")

    await until(expired, 1)  # the sweeper expires it; the scrape finds the EXPIRY row
    await make_budget(stub, "team/a", "10", paused=True)
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="p", amount=usd("1"))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BUDGET_PAUSED",
    )
    s = await scrape(authority.metrics_port)
    assert value(s, "agentbudget_holds_released_total", budget="team/a") == 1
    assert value(s, "agentbudget_holds_granted_total", budget="team/a") == 2
    assert value(s, "agentbudget_holds_denied_total", budget="team/a", reason="BUDGET_PAUSED") == 1
    assert value(s, "agentbudget_budget_phase", budget="team/a", phase="PAUSED") == 1


async def test_replicas_split_the_counts_and_their_sums_are_the_totals(dsn):
    first = await app.start(server_settings(), dsn)
    second = await app.start(server_settings(), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as ch:
            stub = pb_grpc.BudgetAuthorityStub(ch)
            await make_budget(stub, "team/a", "100")
            for i in range(5):
                await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id=f"r{i}", amount=usd("1")))
                await stub.Commit(pb.CommitRequest(budget="team/a", reservation_id=f"r{i}", actual=usd("0.5")))
            b = await scrape(second.metrics_port)  # the replica that served nothing counts what it read
            for i in range(5, 8):
                await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id=f"r{i}", amount=usd("1")))
            a = await scrape(first.metrics_port)
            b2, a2 = await asyncio.gather(scrape(second.metrics_port), scrape(first.metrics_port))
        granted = "agentbudget_holds_granted_total"
        assert value(b, granted, budget="team/a") == 5
        assert value(a, granted, budget="team/a") == 3
        assert value(a2, granted, budget="team/a") + value(b2, granted, budget="team/a") == 8
        assert total(a2, "agentbudget_committed_cost_total") + total(b2, "agentbudget_committed_cost_total") == 2.5
        # Gauges are the same on every replica (use max, not sum).
        assert value(a2, "agentbudget_budget_spent", budget="team/a", currency="USD") == 2.5
        assert value(b2, "agentbudget_budget_spent", budget="team/a", currency="USD") == 2.5
    finally:
        await second.stop(grace=0.5)
        await first.stop(grace=0.5)


async def test_a_row_behind_an_open_transaction_is_counted_once_it_commits(authority, stub, dsn, monkeypatch):
    # xmin is the whole cluster's: another test run on this PostgreSQL may hold it back. The gap
    # then becomes final by waiting; either way the counts below are exact.
    monkeypatch.setattr(tally, "GAP_WAIT", 3.0)
    await make_budget(stub, "team/a", "10")
    await make_budget(stub, "team/b", "10")  # the open transaction's row: it must not lock team/a
    budget = await _budget_row(dsn, "team/b")
    writer = await asyncpg.connect(dsn)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(_HOLD_ROW, *budget)  # takes the next ledger id, commits later
        await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="after", amount=usd("1")))
        granted = "agentbudget_holds_granted_total"
        assert value(await scrape(authority.metrics_port), granted, budget="team/a") == 0  # waits at the gap
        await tx.commit()
        s = await scrape(authority.metrics_port)
        assert value(s, granted, budget="team/a") == 1
        assert value(s, granted, budget="team/b") == 1

        tx = writer.transaction()
        await tx.start()
        await writer.execute(_HOLD_ROW, *budget)
        await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="later", amount=usd("1")))
        await tx.rollback()  # the gap is for good: counting moves past it once that is certain

        async def granted_now() -> float:
            return value(await scrape(authority.metrics_port), granted, budget="team/a")

        await until(granted_now, 2)
    finally:
        await writer.close()


async def test_a_long_transaction_elsewhere_holds_a_gap_only_so_long(authority, stub, dsn, monkeypatch):
    monkeypatch.setattr(tally, "GAP_WAIT", 1.0)
    await make_budget(stub, "team/a", "10")
    await make_budget(stub, "team/b", "10")
    budget = await _budget_row(dsn, "team/b")
    writer, bystander = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with bystander.transaction():
            await bystander.fetchval("SELECT pg_current_xact_id()")  # a writer that stays open: xmin stays put
            tx = writer.transaction()
            await tx.start()
            await writer.execute(_HOLD_ROW, *budget)
            await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id="r", amount=usd("1")))
            await tx.rollback()
            granted = "agentbudget_holds_granted_total"
            assert value(await scrape(authority.metrics_port), granted, budget="team/a") == 0

            async def granted_now() -> float:
                return value(await scrape(authority.metrics_port), granted, budget="team/a")

            await until(granted_now, 1)
    finally:
        await writer.close()
        await bystander.close()


_HOLD_ROW = "INSERT INTO ledger_entries (budget_id, period_start, entry_type) VALUES ($1, $2, 'HOLD')"


async def _budget_row(dsn: str, name: str) -> tuple[int, object]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT id, period_start FROM budgets WHERE name = $1", name)
        return row["id"], row["period_start"]
    finally:
        await conn.close()


def test_the_position_waits_at_a_gap_until_it_is_final():
    assert advance(10, [11, 12, 13], 10) == 13
    assert advance(10, [11, 13, 14], 10) == 11  # 12 may still commit
    assert advance(10, [11, 13, 14], 12) == 14  # 12 was rolled back
    assert advance(10, [12], 10) == 10
    assert advance(10, [], 50) == 10


async def test_metrics_can_be_turned_off(dsn):
    authority = await app.start(server_settings(metrics_listen=""), dsn)
    try:
        assert authority.metrics_port == 0
        assert authority.observability.layers == []
    finally:
        await authority.stop(grace=0.5)


def test_settings_of_metrics(monkeypatch):
    import argparse

    from agentbudget_server import settings

    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    assert settings.load(parser.parse_args([]), {}).metrics_listen == "0.0.0.0:9464"
    assert settings.load(parser.parse_args([]), {"AGENTBUDGET_METRICS_LISTEN": ""}).metrics_listen == ""
    env: Mapping[str, str] = {"AGENTBUDGET_METRICS_LISTEN": "127.0.0.1:1"}
    assert settings.load(parser.parse_args(["--metrics-listen", "[::]:9000"]), env).metrics_listen == "[::]:9000"


async def test_streams_are_counted_when_they_end(authority, stub, channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    await make_budget(stub, "team/a", "10")
    call = stub.WatchEvents(pb.WatchEventsRequest(after_id=0))
    assert (await call.read()).event.type == pb.EVENT_BUDGET_CREATED
    call.cancel()
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))  # writes its messages, yields none
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    await health.Check(health_pb2.HealthCheckRequest(service=""))

    async def ended() -> tuple[float, float, float]:
        s = await scrape(authority.metrics_port)
        svc, hsvc = "agentbudget.v1.BudgetAuthority", "grpc.health.v1.Health"
        return (
            value(s, "agentbudget_rpc_handled_total", service=svc, method="WatchEvents", code="CANCELLED"),
            value(s, "agentbudget_rpc_handled_total", service=hsvc, method="Watch", code="CANCELLED"),
            value(s, "agentbudget_rpc_duration_seconds_count", service=hsvc, method="Check", code="OK"),
        )

    await until(ended, (1, 1, 1))
