"""Alert webhooks against a real HTTP receiver on localhost: once each, retried, never in the way."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app, settings, webhooks
from agentbudget_server.settings import Webhook
from aiohttp import web
from conftest import expect_error, make_budget, server_settings, until, usd
from test_metrics import scrape, value

ALERT_WAIT = 20.0


class Receiver:
    """Records every request; can fail the first ones with HTTP 500, or hold requests until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every attempt
        self.taken: list[tuple[str, dict[str, Any]]] = []  # answered 2xx
        self.failures = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        application = web.Application()
        application.router.add_post("/{sink}", self._handle)
        self._runner = web.AppRunner(application, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/json"
        body = json.loads(await request.read())
        self.calls.append((request.path, body))
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500, text="try again")
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        self.taken.append((request.path, body))
        return web.Response(status=204)

    def ids(self, path: str = "/json") -> list[int]:
        return [body["id"] for p, body in self.taken if p == path]

    def texts(self, path: str = "/slack") -> list[str]:
        return [body["text"] for p, body in self.taken if p == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF", webhooks.Backoff(first=0.05, attempts=4))


def targets(r: Receiver) -> tuple[Webhook, ...]:
    return (Webhook("json", f"{r.url}/json"), Webhook("slack", f"{r.url}/slack"))


async def arrived(r: Receiver, count: int, path: str = "/json") -> None:
    async def n() -> int:
        return len(r.ids(path)) if path == "/json" else len(r.texts(path))

    await until(n, count, ALERT_WAIT)


async def overspend(stub: pb_grpc.BudgetAuthorityStub, name: str) -> None:
    """Threshold crossed, a denied hold, then exhausted: the three alerts, in this order."""
    await make_budget(stub, name, "10")
    await stub.Reserve(pb.ReserveRequest(budget=name, reservation_id="big", amount=usd("9")))
    await stub.Commit(pb.CommitRequest(budget=name, reservation_id="big", actual=usd("8.5")))
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget=name, reservation_id="more", amount=usd("2.5"))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
    )
    await stub.RecordCost(pb.RecordCostRequest(budget=name, request_id="bill", amount=usd("2")))


async def deny(stub: pb_grpc.BudgetAuthorityStub, name: str, rid: str) -> None:
    await expect_error(
        stub.Reserve(pb.ReserveRequest(budget=name, reservation_id=rid, amount=usd("1000"))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
    )


def connect(authority: app.Authority) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}")


async def test_each_alert_arrives_once_though_the_first_attempt_fails(dsn, receiver):
    receiver.failures = 1
    authority = await app.start(server_settings(webhooks=targets(receiver)), dsn)
    try:
        async with connect(authority) as ch:
            stub = pb_grpc.BudgetAuthorityStub(ch)
            await overspend(stub, "team/a")
            await arrived(receiver, 3, "/json")
            await arrived(receiver, 3, "/slack")
            await make_budget(stub, "team/sentinel", "1")
            await deny(stub, "team/sentinel", "last")  # once this arrives, anything before it has too
            await arrived(receiver, 4, "/json")
            await arrived(receiver, 4, "/slack")
        s = await scrape(authority.metrics_port)
    finally:
        await authority.stop(grace=0.5)

    assert len(receiver.calls) == 9  # 8 alerts and the one failed attempt
    ids = receiver.ids("/json")
    assert ids == sorted(set(ids))
    bodies = [b for p, b in receiver.taken if p == "/json"]
    assert [b["type"] for b in bodies] == [
        "THRESHOLD_CROSSED",
        "RESERVATION_DENIED",
        "BUDGET_EXHAUSTED",
        "RESERVATION_DENIED",
    ]
    threshold, denied, exhausted, _ = bodies
    assert threshold["budget"] == "team/a" and threshold["threshold"] == 0.8
    assert (threshold["spent"], threshold["limit"], threshold["currency"]) == ("8.50", "10.00", "USD")
    assert (denied["amount"], denied["remaining"], denied["reservation_id"]) == ("2.50", "1.50", "more")
    assert exhausted["phase"] == "EXHAUSTED" and exhausted["spent"] == "10.50"
    slack = [b for p, b in receiver.taken if p == "/slack"]
    assert all(set(b) == {"text"} for b in slack)
    texts = receiver.texts()
    assert "team/a crossed 80%" in texts[0] and "8.50 USD of 10.00 USD spent" in texts[0]
    assert "denied a hold of 2.50 USD (reservation more): 1.50 USD remaining" in texts[1]
    assert "team/a is exhausted" in texts[2]
    delivered = sum(
        value(s, "agentbudget_webhook_deliveries_total", webhook=w, kind=k, outcome="delivered")
        for w, k in {(dict(ls)["webhook"], dict(ls)["kind"]) for n, ls in s if n.startswith("agentbudget_webhook")}
    )
    assert delivered == 8


async def test_no_alert_is_sent_again_after_a_restart(dsn, receiver):
    first = await app.start(server_settings(webhooks=targets(receiver)), dsn)
    try:
        async with connect(first) as ch:
            await overspend(pb_grpc.BudgetAuthorityStub(ch), "team/a")
            await arrived(receiver, 3)
    finally:
        await first.stop(grace=0.5)

    second = await app.start(server_settings(webhooks=targets(receiver)), dsn)
    try:
        async with connect(second) as ch:
            await deny(pb_grpc.BudgetAuthorityStub(ch), "team/a", "after-restart")
            await arrived(receiver, 4)
            await arrived(receiver, 4, "/slack")
    finally:
        await second.stop(grace=0.5)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == 4
    assert len(receiver.texts()) == 4


async def test_an_alert_cut_off_by_shutdown_is_sent_by_the_next_server(dsn, receiver, monkeypatch):
    monkeypatch.setattr(webhooks, "BACKOFF", webhooks.Backoff(first=3600))  # the retry waits until shutdown
    receiver.failures = 1
    hook = (Webhook("json", f"{receiver.url}/json"),)
    first = await app.start(server_settings(webhooks=hook), dsn)
    try:
        async with connect(first) as ch:
            stub = pb_grpc.BudgetAuthorityStub(ch)
            await make_budget(stub, "team/a", "1")
            await deny(stub, "team/a", "r1")

            async def attempts() -> int:
                return len(receiver.calls)

            await until(attempts, 1, ALERT_WAIT)  # failed; now waiting to retry
    finally:
        await first.stop(grace=0.5)  # nothing reached the receiver: the claim is handed back
    assert receiver.taken == []

    second = await app.start(server_settings(webhooks=hook), dsn)
    try:
        await arrived(receiver, 1)
    finally:
        await second.stop(grace=0.5)
    assert [b["reservation_id"] for _, b in receiver.taken] == ["r1"]


async def test_a_hanging_receiver_does_not_hold_up_a_reserve(dsn, receiver):
    receiver.gate = asyncio.Event()
    authority = await app.start(server_settings(webhooks=targets(receiver)[:1]), dsn)
    try:
        async with connect(authority) as ch:
            stub = pb_grpc.BudgetAuthorityStub(ch)
            await make_budget(stub, "team/a", "10")
            await deny(stub, "team/a", "first")
            await asyncio.wait_for(receiver.entered.wait(), ALERT_WAIT)  # the delivery is stuck in the receiver
            for i in range(5):
                await stub.Reserve(pb.ReserveRequest(budget="team/a", reservation_id=f"r{i}", amount=usd("1")))
                await stub.Commit(pb.CommitRequest(budget="team/a", reservation_id=f"r{i}", actual=usd("1")))
            await deny(stub, "team/a", "second")
            assert not receiver.gate.is_set() and receiver.taken == []  # all of it while the receiver hung
            receiver.gate.set()
            await arrived(receiver, 2)
    finally:
        await authority.stop(grace=0.5)
    assert [b["reservation_id"] for _, b in receiver.taken] == ["first", "second"]


async def test_two_replicas_send_each_alert_once(dsn, receiver):
    replicas = [await app.start(server_settings(webhooks=targets(receiver)), dsn) for _ in range(2)]
    try:
        async with connect(replicas[0]) as a, connect(replicas[1]) as b:
            await overspend(pb_grpc.BudgetAuthorityStub(a), "team/a")
            await overspend(pb_grpc.BudgetAuthorityStub(b), "team/b")
            await arrived(receiver, 6)
            await arrived(receiver, 6, "/slack")
            await make_budget(pb_grpc.BudgetAuthorityStub(a), "team/sentinel", "1")
            await deny(pb_grpc.BudgetAuthorityStub(b), "team/sentinel", "last")
            await arrived(receiver, 7)
            await arrived(receiver, 7, "/slack")
    finally:
        for r in replicas:
            await r.stop(grace=0.5)
    ids = receiver.ids()
    assert len(ids) == len(set(ids)) == 7
    assert len(receiver.texts()) == 7


def test_webhook_settings_from_flags_and_environment():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    args = parser.parse_args(["--webhook", "slack=https://hooks.example.com/T/B?x=1", "--webhook", "json=http://h/a"])
    assert settings.load(args, {}).webhooks == (
        Webhook("slack", "https://hooks.example.com/T/B?x=1"),
        Webhook("json", "http://h/a"),
    )
    env = {"AGENTBUDGET_WEBHOOKS": json.dumps(["json=http://h/a", {"kind": "slack", "url": "https://s/b"}])}
    assert settings.load(parser.parse_args([]), env).webhooks == (
        Webhook("json", "http://h/a"),
        Webhook("slack", "https://s/b"),
    )
    assert settings.load(parser.parse_args([]), {}).webhooks == ()
    for bad in ('["teams=http://h/a"]', '["json=ftp://h/a"]', '{"kind": "json"}', "not json"):
        with pytest.raises(ValueError, match="AGENTBUDGET_WEBHOOKS"):
            settings.load(parser.parse_args([]), {"AGENTBUDGET_WEBHOOKS": bad})
    with pytest.raises(SystemExit):
        parser.parse_args(["--webhook", "https://no-kind"])
