"""Who may spend what, over the whole service: every role against every RPC, tokens reviewed by an
emulated Kubernetes API server, API keys, rate limits."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import yaml
from agentbudget.errors import error_info
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from auth_support import TokenReviews, bearer, jwt, keys_file
from conftest import expect_error, ledger_rows, server_settings, usd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

Code = grpc.StatusCode
OPERATOR = "system:serviceaccount:agentbudget:agentbudget-operator"
SA_A = "system:serviceaccount:team:a"
SA_B = "system:serviceaccount:team:b"
SA_CEO = "system:serviceaccount:team:ceo"
MINE, THEIRS, OUTSIDE = "team/a", "team/b", "other/x"
SPECS = {
    MINE: pb.BudgetSpec(limit=usd("10"), agent_principals=[SA_A]),
    THEIRS: pb.BudgetSpec(limit=usd("10"), agent_principals=[SA_B]),
    OUTSIDE: pb.BudgetSpec(limit=usd("10")),
}


@dataclass
class Secured:
    authority: app.Authority
    reviews: TokenReviews
    stub: pb_grpc.BudgetAuthorityStub
    callers: dict[str, tuple[tuple[str, str], ...]]  # name -> metadata
    keys: dict[str, str]
    tokens: dict[str, str]


async def start_secured(
    dsn: str, folder: Path, **overrides: Any
) -> tuple[app.Authority, TokenReviews, dict[str, str], dict[str, str]]:
    reviews = await TokenReviews().start()
    hour = time.time() + 3600
    tokens = {
        "agent-sa": reviews.add(jwt(SA_A, hour), SA_A),
        "other-agent-sa": reviews.add(jwt(SA_B, hour), SA_B),
        "admin-sa": reviews.add(jwt(OPERATOR, hour), OPERATOR),
        "coordinator-sa": reviews.add(jwt(SA_CEO, hour), SA_CEO),
    }
    keys = keys_file(
        folder / "keys.yaml",
        {
            "ops": ("admin", []),
            "ceo": ("coordinator", ["team/*"]),
            "audit": ("viewer", ["team/*"]),
            "bot": ("agent", ["team/a"]),
        },
    )
    (folder / "roles.yaml").write_text(yaml.safe_dump({SA_CEO: {"role": "coordinator", "scope": ["team/*"]}}))
    values: dict[str, Any] = {
        "auth": "required",
        "api_keys_file": str(folder / "keys.yaml"),
        "roles_file": str(folder / "roles.yaml"),
        "kube_config": str(reviews.kubeconfig(folder / "kubeconfig")),
        "admin_principals": (OPERATOR,),
        **overrides,
    }
    authority = await app.start(server_settings(**values), dsn)
    return authority, reviews, keys, tokens


@pytest.fixture
async def secured(dsn: str, tmp_path: Path) -> AsyncIterator[Secured]:
    authority, reviews, keys, tokens = await start_secured(dsn, tmp_path)
    callers = {
        "admin-key": bearer(keys["ops"]),
        "admin-sa": bearer(tokens["admin-sa"]),
        "coordinator-key": bearer(keys["ceo"]),
        "coordinator-sa": bearer(tokens["coordinator-sa"]),
        "viewer-key": bearer(keys["audit"]),
        "agent-sa": bearer(tokens["agent-sa"]),
        "agent-key": bearer(keys["bot"]),
        "no-credentials": (),
        "bad-key": bearer("abk_" + "A" * 43),
        "bad-token": bearer(jwt(SA_A, time.time() + 3600) + "x"),
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)
            for name, spec in SPECS.items():
                await stub.UpsertBudget(pb.UpsertBudgetRequest(name=name, spec=spec), metadata=callers["admin-key"])
            yield Secured(authority, reviews, stub, callers, keys, tokens)
    finally:
        await authority.stop(grace=0.5)
        await reviews.stop()


# -- every role x every RPC ------------------------------------------------------------------------

RPCS = [
    "Reserve", "Commit", "Release", "RecordCost", "GetBudget", "Route", "UpsertBudget", "DeleteBudget",
    "ListBudgets", "Transfer", "ListLedgerEntries", "QuerySpend", "WatchEvents",
]  # fmt: skip
AGENT_RPCS = {"Reserve", "Commit", "Release", "RecordCost", "GetBudget", "Route"}
READ_RPCS = {"GetBudget", "Route", "ListBudgets", "ListLedgerEntries", "QuerySpend", "WatchEvents"}
TEAM = {MINE, THEIRS}
# What each caller may do, as (RPC, budget) pairs; the table the service must follow.
MAY: dict[str, Callable[[str, str], bool]] = {
    "admin-key": lambda rpc, b: True,
    "admin-sa": lambda rpc, b: True,
    "coordinator-key": lambda rpc, b: b in TEAM and rpc not in ("UpsertBudget", "DeleteBudget"),
    "coordinator-sa": lambda rpc, b: b in TEAM and rpc not in ("UpsertBudget", "DeleteBudget"),
    "viewer-key": lambda rpc, b: b in TEAM and rpc in READ_RPCS,
    "agent-sa": lambda rpc, b: b == MINE and rpc in AGENT_RPCS,
    "agent-key": lambda rpc, b: b == MINE and rpc in AGENT_RPCS,
}
ROLE_OF = {"admin-key": "admin", "coordinator-key": "coordinator", "coordinator-sa": "coordinator"}
ROLE_OF |= {"viewer-key": "viewer", "agent-sa": "agent", "agent-key": "agent"}
PRINCIPAL_OF = {"coordinator-key": "apikey:ceo", "coordinator-sa": SA_CEO, "viewer-key": "apikey:audit"}
PRINCIPAL_OF |= {"agent-sa": SA_A, "agent-key": "apikey:bot"}
# The answer of an allowed call (these requests name no reservation that exists).
ALLOWED_ANSWER = {
    "Commit": (Code.NOT_FOUND, "RESERVATION_NOT_FOUND"),
    "Release": (Code.NOT_FOUND, "RESERVATION_NOT_FOUND"),
}


def request_for(rpc: str, budget: str, caller: str) -> Any:
    ns = budget.split("/")[0]
    rid = f"{caller}-{rpc}-{budget.replace('/', '-')}"
    other = THEIRS if budget == MINE else MINE
    return {
        "Reserve": lambda: pb.ReserveRequest(budget=budget, reservation_id=rid, amount=usd("0.01")),
        "Commit": lambda: pb.CommitRequest(budget=budget, reservation_id="never-reserved", actual=usd("0.01")),
        "Release": lambda: pb.ReleaseRequest(budget=budget, reservation_id="never-reserved"),
        "RecordCost": lambda: pb.RecordCostRequest(budget=budget, request_id=rid, amount=usd("0.01")),
        "GetBudget": lambda: pb.GetBudgetRequest(name=budget),
        "Route": lambda: pb.RouteRequest(budget=budget, task_class="lookup"),
        "UpsertBudget": lambda: pb.UpsertBudgetRequest(name=budget, spec=SPECS[budget]),  # unchanged: writes nothing
        "DeleteBudget": lambda: pb.DeleteBudgetRequest(name=f"{ns}/never-created", allow_missing=True),
        "ListBudgets": lambda: pb.ListBudgetsRequest(namespace=ns),
        "Transfer": lambda: pb.TransferRequest(request_id=rid, from_budget=budget, to_budget=other, amount=usd("0.01")),
        "ListLedgerEntries": lambda: pb.ListLedgerEntriesRequest(budget=budget),
        "QuerySpend": lambda: pb.QuerySpendRequest(budgets=[budget]),
        "WatchEvents": lambda: pb.WatchEventsRequest(budgets=[budget]),
    }[rpc]()


async def outcome(stub: pb_grpc.BudgetAuthorityStub, rpc: str, request: Any, metadata: Any) -> tuple[Any, ...]:
    """("OK",) or (code, reason, metadata) of one call."""
    try:
        if rpc == "WatchEvents":
            call = stub.WatchEvents(request, metadata=metadata, timeout=10)
            try:
                await call.read()  # each budget has its BUDGET_CREATED event
            finally:
                call.cancel()
        else:
            await getattr(stub, rpc)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        info = error_info(err)
        return (err.code(), info.reason if info else "", dict(info.metadata) if info else {})
    return ("OK",)


def expected(caller: str, rpc: str, budget: str) -> tuple[Any, ...]:
    if caller == "no-credentials":
        return (Code.UNAUTHENTICATED, "CREDENTIALS_MISSING", {})
    if caller.startswith("bad-"):
        return (Code.UNAUTHENTICATED, "CREDENTIALS_INVALID", {})
    if not MAY[caller](rpc, budget):
        return (
            Code.PERMISSION_DENIED,
            "NOT_ALLOWED",
            {"principal": PRINCIPAL_OF[caller], "role": ROLE_OF[caller], "method": rpc},
        )
    return ALLOWED_ANSWER.get(rpc, ("OK",))


CALLERS = [*MAY, "no-credentials", "bad-key", "bad-token"]


@pytest.mark.parametrize("caller", CALLERS)
async def test_each_role_may_call_exactly_what_its_table_says(secured: Secured, caller: str):
    wrong = []
    for rpc in RPCS:
        for budget in (MINE, THEIRS, OUTSIDE):
            got = await outcome(secured.stub, rpc, request_for(rpc, budget, caller), secured.callers[caller])
            want = expected(caller, rpc, budget)
            if got[:2] != want[:2] or (len(want) > 2 and want[2] and got[2] != want[2]):
                wrong.append(f"{caller} {rpc} {budget}: got {got}, want {want}")
    assert not wrong, "\n".join(wrong)


async def test_a_refusal_does_not_tell_whether_the_budget_exists(secured: Secured):
    agent = secured.callers["agent-sa"]
    answers = set()
    for budget in (THEIRS, "team/never-created", "nowhere/at-all"):
        err = await expect_error(
            secured.stub.GetBudget(pb.GetBudgetRequest(name=budget), metadata=agent),
            Code.PERMISSION_DENIED,
            "NOT_ALLOWED",
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await secured.stub.GetBudget(pb.GetBudgetRequest(name=budget), metadata=agent)
        answers.add((tuple(sorted(err.items())), caught.value.details()))
    assert len(answers) == 1, answers


async def test_an_agent_token_on_another_agents_budget_is_refused_and_writes_nothing(secured: Secured, dsn: str):
    agent, stub = secured.callers["agent-sa"], secured.stub
    await stub.Reserve(
        pb.ReserveRequest(budget=THEIRS, reservation_id="theirs-1", amount=usd("1")),
        metadata=secured.callers["admin-key"],
    )
    before = [dict(r) for r in await ledger_rows(dsn, THEIRS)]
    attempts = [
        stub.Reserve(pb.ReserveRequest(budget=THEIRS, reservation_id="mine-1", amount=usd("1")), metadata=agent),
        stub.Commit(pb.CommitRequest(budget=THEIRS, reservation_id="theirs-1", actual=usd("1")), metadata=agent),
        stub.Release(pb.ReleaseRequest(budget=THEIRS, reservation_id="theirs-1"), metadata=agent),
        stub.RecordCost(pb.RecordCostRequest(budget=THEIRS, request_id="c-1", amount=usd("1")), metadata=agent),
        stub.Transfer(
            pb.TransferRequest(request_id="t-1", from_budget=THEIRS, to_budget=MINE, amount=usd("1")), metadata=agent
        ),
    ]
    for call in attempts:
        await expect_error(call, Code.PERMISSION_DENIED, "NOT_ALLOWED")
    assert [dict(r) for r in await ledger_rows(dsn, THEIRS)] == before
    # Its own budget: granted, and the ledger records who did it.
    await stub.Reserve(pb.ReserveRequest(budget=MINE, reservation_id="mine-1", amount=usd("1")), metadata=agent)
    rows = await ledger_rows(dsn, MINE)
    assert rows[-1]["principal"] == SA_A and before[-1]["principal"] == "apikey:ops"


async def test_the_agent_principals_of_a_budget_decide_at_once_on_this_replica(secured: Secured):
    agent, admin = secured.callers["agent-sa"], secured.callers["admin-key"]
    reserve = pb.ReserveRequest(budget=OUTSIDE, reservation_id="r", amount=usd("1"))
    await expect_error(secured.stub.Reserve(reserve, metadata=agent), Code.PERMISSION_DENIED, "NOT_ALLOWED")
    spec = pb.BudgetSpec(limit=usd("10"), agent_principals=[SA_A])
    await secured.stub.UpsertBudget(pb.UpsertBudgetRequest(name=OUTSIDE, spec=spec), metadata=admin)
    await secured.stub.Reserve(reserve, metadata=agent)


# -- calls over many budgets by scoped principals ------------------------------------------------------


async def test_a_scoped_coordinator_lists_and_queries_only_its_scope(secured: Secured):
    ceo, stub = secured.callers["coordinator-key"], secured.stub
    for budget in (MINE, OUTSIDE):
        await stub.RecordCost(
            pb.RecordCostRequest(budget=budget, request_id=f"c-{budget.replace('/', '-')}", amount=usd("1")),
            metadata=secured.callers["admin-key"],
        )
    listed = await stub.ListBudgets(pb.ListBudgetsRequest(), metadata=ceo)
    assert [b.name for b in listed.budgets] == [MINE, THEIRS]
    spent = await stub.QuerySpend(pb.QuerySpendRequest(group_by=[pb.SPEND_BY_BUDGET]), metadata=ceo)
    assert [g.budget for g in spent.groups] == [MINE]
    everything = await stub.QuerySpend(
        pb.QuerySpendRequest(group_by=[pb.SPEND_BY_BUDGET]), metadata=secured.callers["admin-key"]
    )
    assert {g.budget for g in everything.groups} == {MINE, OUTSIDE}
    await expect_error(
        stub.ListBudgets(pb.ListBudgetsRequest(namespace="other"), metadata=ceo), Code.PERMISSION_DENIED, "NOT_ALLOWED"
    )


async def test_an_unfiltered_event_stream_of_a_coordinator_carries_only_its_scope(secured: Secured):
    admin = secured.callers["admin-key"]
    call = secured.stub.WatchEvents(pb.WatchEventsRequest(), metadata=secured.callers["coordinator-key"], timeout=10)
    try:
        seen = [(await call.read()).event.budget for _ in range(2)]  # the BUDGET_CREATED of team/a, team/b
        assert seen == [MINE, THEIRS]
        for budget in (OUTSIDE, THEIRS):  # a change outside the scope, then one inside
            spec = pb.BudgetSpec(limit=usd("11"), agent_principals=SPECS[budget].agent_principals)
            await secured.stub.UpsertBudget(pb.UpsertBudgetRequest(name=budget, spec=spec), metadata=admin)
        nxt = (await call.read()).event
        assert (nxt.budget, nxt.type, nxt.principal) == (THEIRS, pb.EVENT_LIMIT_CHANGED, "apikey:ops")
    finally:
        call.cancel()


# -- tokens ----------------------------------------------------------------------------------------------


async def test_a_token_is_reviewed_once_then_served_from_the_cache(secured: Secured):
    get = pb.GetBudgetRequest(name=MINE)
    for _ in range(5):
        await secured.stub.GetBudget(get, metadata=secured.callers["agent-sa"])
    assert secured.reviews.reviewed.count(SA_A) == 1


@pytest.mark.parametrize(
    "kind", ["expired", "wrong-audience", "audience-not-echoed", "unknown", "malformed", "not-bearer", "empty"]
)
async def test_a_token_that_is_not_valid_for_us_is_refused(secured: Secured, kind: str):
    reviews = secured.reviews
    token = {
        "expired": jwt(SA_A, time.time() - 60),
        "wrong-audience": reviews.add(
            jwt(SA_A, time.time() + 600), SA_A, audiences=("https://kubernetes.default.svc",)
        ),
        "audience-not-echoed": reviews.add(jwt(SA_A, time.time() + 600), SA_A + "x", echo_audiences=False),
        "unknown": jwt(SA_A, time.time() + 600, audience="something-else"),
        "malformed": "not a token",
    }.get(kind)
    metadata = {"not-bearer": (("authorization", "Basic dXNlcjpwdw=="),), "empty": (("authorization", "Bearer "),)}
    md = metadata.get(kind) or (("authorization", f"Bearer {token}"),)
    asked = len(reviews.reviewed)
    await expect_error(
        secured.stub.GetBudget(pb.GetBudgetRequest(name=MINE), metadata=md), Code.UNAUTHENTICATED, "CREDENTIALS_INVALID"
    )
    if kind in ("expired", "malformed", "not-bearer", "empty"):
        assert len(reviews.reviewed) == asked  # refused without asking the API server
    elif kind != "unknown":
        assert len(reviews.reviewed) == asked + 1


async def test_an_unreachable_api_server_is_unavailable_not_a_bad_token(secured: Secured):
    secured.reviews.down = True
    token = secured.reviews.add(jwt(SA_A, time.time() + 600), SA_A)
    call = secured.stub.GetBudget(pb.GetBudgetRequest(name=MINE), metadata=bearer(token))
    await expect_error(call, Code.UNAVAILABLE, "AUTHENTICATION_UNAVAILABLE")
    secured.reviews.down = False  # not cached: the retry succeeds
    await secured.stub.GetBudget(pb.GetBudgetRequest(name=MINE), metadata=bearer(token))


async def test_keys_and_tokens_never_appear_in_the_logs(dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    authority, reviews, keys, tokens = await start_secured(dsn, tmp_path)
    secrets = [*keys.values(), *tokens.values()]
    wrong_key, wrong_token = "abk_" + "B" * 43, jwt(SA_A, time.time() + 600) + "y"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)
            for secret in [*secrets, wrong_key, wrong_token]:
                try:
                    await stub.GetBudget(pb.GetBudgetRequest(name=MINE), metadata=bearer(secret))
                except grpc.aio.AioRpcError:
                    pass
            await stub.UpsertBudget(pb.UpsertBudgetRequest(name=MINE, spec=SPECS[MINE]), metadata=bearer(keys["ops"]))
            await stub.Reserve(
                pb.ReserveRequest(budget=MINE, reservation_id="r", amount=usd("1")), metadata=bearer(tokens["agent-sa"])
            )
    finally:
        await authority.stop(grace=0.5)
        await reviews.stop()
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "authentication required: 4 API key(s)" in caplog.text  # the capture did see the authority
    for secret in [*secrets, wrong_key, wrong_token, "the-authoritys-own-service-account-token"]:
        assert secret not in text
        assert secret[4:30] not in text  # not even a part


# -- rate limits --------------------------------------------------------------------------------------------


async def test_a_principal_over_its_limit_is_refused_and_another_is_not_slowed(dsn: str, tmp_path: Path):
    # Refilled once in 1000 s: the burst is all either principal gets during the test.
    authority, reviews, keys, _ = await start_secured(dsn, tmp_path, rate_limit_per_second=0.001, rate_limit_burst=3)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)
            hot, calm = bearer(keys["ceo"]), bearer(keys["audit"])
            get = pb.ListBudgetsRequest(namespace="team")
            for _ in range(3):
                await stub.ListBudgets(get, metadata=hot)
            meta = await expect_error(stub.ListBudgets(get, metadata=hot), Code.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert int(meta["retry_after_ms"]) > 0
            for _ in range(3):  # the other principal: every call answered while the first is limited
                await stub.ListBudgets(get, metadata=calm)
            await expect_error(stub.ListBudgets(get, metadata=hot), Code.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            # Refused before any work: nothing else for the limited one, not even its own budget.
            reserve = pb.ReserveRequest(budget=MINE, reservation_id="r", amount=usd("1"))
            await expect_error(stub.Reserve(reserve, metadata=hot), Code.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    finally:
        await authority.stop(grace=0.5)
        await reviews.stop()


async def test_without_authentication_callers_are_limited_by_address(dsn: str):
    authority = await app.start(server_settings(auth="none", rate_limit_per_second=0.001, rate_limit_burst=2), dsn)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as first:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as second:
                list_ = pb.ListBudgetsRequest()
                await pb_grpc.BudgetAuthorityStub(first).ListBudgets(list_)
                await pb_grpc.BudgetAuthorityStub(second).ListBudgets(list_)  # another connection, the same address
                call = pb_grpc.BudgetAuthorityStub(first).ListBudgets(list_)
                await expect_error(call, Code.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    finally:
        await authority.stop(grace=0.5)


# -- what needs no credentials, and the development mode ---------------------------------------------------


async def test_health_and_reflection_need_no_credentials(secured: Secured):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.authority.port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            assert "agentbudget.v1.BudgetAuthority" in {s.name for s in answer.list_services_response.service}


async def test_without_authentication_every_caller_is_an_admin_and_the_log_says_so(
    dsn: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING)
    authority = await app.start(server_settings(auth="auto"), dsn)  # no database_url: the quick start
    try:
        assert "AUTHENTICATION IS OFF" in caplog.text
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authority.port}") as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)
            await stub.UpsertBudget(pb.UpsertBudgetRequest(name=MINE, spec=SPECS[MINE]))
            await stub.Reserve(pb.ReserveRequest(budget=MINE, reservation_id="r", amount=usd("1")))
    finally:
        await authority.stop(grace=0.5)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE principal IS NOT NULL") == 0
    finally:
        await conn.close()


async def test_a_bad_keys_file_fails_the_start_before_anything_runs(dsn: str, tmp_path: Path):
    (tmp_path / "keys.yaml").write_text("keys: [{principal: x, role: boss, sha256: '" + "0" * 64 + "'}]")
    with pytest.raises(ValueError, match="role must be one of"):
        await app.start(server_settings(auth="required", api_keys_file=str(tmp_path / "keys.yaml")), dsn)
    with pytest.raises(ValueError, match="cannot read the TLS certificate"):
        await app.start(server_settings(tls_cert=str(tmp_path / "none.crt"), tls_key=str(tmp_path / "none.key")), dsn)
