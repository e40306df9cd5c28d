"""The operator's side of "who may spend what": the AgentBudget's agent principal (the target
Deployment's ServiceAccount, or spec.serviceAccountName) synced into the authority, re-synced when
the Deployment's ServiceAccount changes; spec.injectToken's projected token on the pod template;
and the operator's own TLS and token towards the authority.

The real operator, in-process, against the emulated Kubernetes API and a real authority process
(as tests/test_operator.py), or a tiny gRPC server that answers with what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import kopf
import pytest
from agentbudget import credentials
from agentbudget.client import connect
from agentbudget.errors import BudgetError
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_operator import decisions, handlers, reconcile
from agentbudget_operator.config import OperatorConfig
from auth_support import TokenReviews, jwt
from certs import SERVER_NAME, Certs, make_certs
from conftest import usd
from google.rpc import code_pb2
from kube import AGENTBUDGETS, DEPLOYMENTS, KubeEmulator, OperatorRunner, eventually
from procs import ServerProcess
from test_client_auth import Echo, error, server_credentials, serving
from test_operator import BUDGET, NAME, NS, agent_budget, authority, deployment, kube, ledger, operator, status

__all__ = ["authority", "kube", "ledger", "status"]  # fixtures shared with test_operator

SA = "system:serviceaccount:agents:"
TOKEN_MOUNT = {"name": "agentbudget-token", "mountPath": "/var/run/secrets/agentbudget.io", "readOnly": True}
TOKEN_ENV = {"name": "AGENTBUDGET_TOKEN_FILE", "value": "/var/run/secrets/agentbudget.io/token"}


def principals(ledger: pb_grpc.BudgetAuthorityStub) -> list[str]:
    return list(ledger.GetBudget(pb.GetBudgetRequest(name=BUDGET)).budget.spec.agent_principals)


def running_as(service_account: str | None, **kwargs: Any) -> dict[str, Any]:
    body = deployment(**kwargs)
    if service_account is not None:
        body["spec"]["template"]["spec"]["serviceAccountName"] = service_account
    return body


def pod_spec(kube: KubeEmulator) -> dict[str, Any]:
    spec: dict[str, Any] = kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["template"]["spec"]
    return spec


def injected(kube: KubeEmulator) -> bool:
    spec = pod_spec(kube)
    return any(v["name"] == "agentbudget-token" for v in spec.get("volumes", [])) and all(
        TOKEN_MOUNT in c.get("volumeMounts", []) and TOKEN_ENV in c.get("env", []) for c in spec["containers"]
    )


def template_patches(kube: KubeEmulator) -> int:
    """PATCHes of the Deployment that carried the token's volume."""
    return sum(1 for c in kube.requests("PATCH", DEPLOYMENTS) if "agentbudget-token" in json.dumps(c.body))


# --- the agent principal -----------------------------------------------------------------------


def test_the_deployments_service_account_may_spend(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as("research-sa"))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget())
        eventually(lambda: status().get("phase") == "Active")
        assert principals(ledger) == [SA + "research-sa"]


def test_a_deployment_that_names_no_service_account_runs_as_default(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as(None))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget())
        eventually(lambda: status().get("phase") == "Active")
        assert principals(ledger) == [SA + "default"]


def test_the_service_account_the_spec_names_wins(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as("research-sa"))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget(serviceAccountName="batch-runner"))
        eventually(lambda: status().get("phase") == "Active")
        assert principals(ledger) == [SA + "batch-runner"]
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"serviceAccountName": None}}, NS)  # back to the Deployment's
        eventually(lambda: principals(ledger) == [SA + "research-sa"], what="the Deployment's again")


def test_without_a_target_only_a_named_service_account_may_spend(kube, authority, ledger, status):
    with operator(kube, authority):
        body = agent_budget()
        del body["spec"]["targetRef"]
        kube.create(AGENTBUDGETS, body)
        eventually(lambda: status().get("phase") == "Active")
        assert principals(ledger) == []  # admins and coordinators only
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"serviceAccountName": "cron-agent"}}, NS)
        eventually(lambda: principals(ledger) == [SA + "cron-agent"])


def test_a_new_service_account_on_the_deployment_is_synced(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as("research-sa"))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget())
        eventually(lambda: principals(ledger) == [SA + "research-sa"])
        kube.patch(DEPLOYMENTS, "research-agent", {"spec": {"template": {"spec": {"serviceAccountName": "v2"}}}}, NS)
        eventually(lambda: principals(ledger) == [SA + "v2"], what="the new ServiceAccount in force")


def test_a_target_that_appears_later_gets_its_agent(kube, authority, ledger, status):
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget())
        eventually(lambda: any(c["reason"] == "TargetNotFound" for c in status().get("conditions", [])))
        assert principals(ledger) == []
        kube.create(DEPLOYMENTS, running_as("late-sa"))
        eventually(lambda: principals(ledger) == [SA + "late-sa"])


def test_a_deleted_target_takes_its_agent_with_it(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as("research-sa"))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget())
        eventually(lambda: principals(ledger) == [SA + "research-sa"])
        kube.delete(DEPLOYMENTS, "research-agent", NS)
        eventually(lambda: principals(ledger) == [], what="no agent while there is no Deployment")


# --- the injected token -----------------------------------------------------------------------


def test_inject_token_patches_the_deployment_once(kube, authority, ledger, status):
    body = running_as("research-sa")
    body["spec"]["template"]["spec"]["containers"].append(
        {"name": "sidecar", "image": "proxy:1", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    )
    body["spec"]["template"]["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}]
    kube.create(DEPLOYMENTS, body)
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget(injectToken=True))
        eventually(lambda: injected(kube), what="the token on the pod template")
        spec = pod_spec(kube)
        assert [v["name"] for v in spec["volumes"]] == ["cache", "agentbudget-token"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "agentbudget-token"]
        token = volume["projected"]["sources"][0]["serviceAccountToken"]
        assert token == {"audience": "agentbudget", "expirationSeconds": 3600, "path": "token"}
        assert [c["name"] for c in spec["containers"]] == ["agent", "sidecar"]
        assert {"name": "cache", "mountPath": "/cache"} in spec["containers"][1]["volumeMounts"]
        assert spec["serviceAccountName"] == "research-sa"  # the pods' identity is theirs, not changed
        eventually(lambda: "TokenInjected" in [e["reason"] for e in kube.events(about=NAME)])
        # More reconciles: a spec change, an event, a pause and a resume. None touches the template again.
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"alertThresholds": [0.5]}}, NS)
        eventually(lambda: status().get("observedGeneration") == 2)
        ledger.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id="c1", amount=usd("6")))
        eventually(lambda: status().get("phase") == "Warning")
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": True}}, NS)
        eventually(lambda: kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["replicas"] == 0)
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": False}}, NS)
        eventually(lambda: kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["replicas"] == 3)
    assert template_patches(kube) == 1
    assert [e["reason"] for e in kube.events(about=NAME)].count("TokenInjected") == 1
    assert injected(kube)


def test_inject_token_and_the_routing_are_one_change_of_the_template(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as(None))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget(injectToken=True))
        eventually(lambda: injected(kube))
        eventually(lambda: status().get("phase") == "Active")
    generations = [o["metadata"]["generation"] for o in kube.handler.objects[DEPLOYMENTS, NS, "research-agent"].history]
    assert max(generations) == 2  # one new pod template: one rollout of the agent


def test_a_token_removed_from_the_template_is_put_back(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as(None))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget(injectToken=True))
        eventually(lambda: injected(kube))
        original = deployment()["spec"]["template"]["spec"]  # a `kubectl apply` of the manifest without it
        kube.patch(DEPLOYMENTS, "research-agent", {"spec": {"template": {"spec": original}}}, NS)
        eventually(lambda: injected(kube), what="the token back")
    assert template_patches(kube) == 2


def test_without_inject_token_the_template_is_left_alone(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, running_as(None))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget())
        eventually(lambda: status().get("phase") == "Active")
    assert not injected(kube) and template_patches(kube) == 0


# --- the operator's own connection to the authority ------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(autouse=True)
def no_pod_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(credentials, "DEFAULT_TOKEN_FILE", str(tmp_path / "no-such-dir" / "token"))


def test_the_operator_reads_its_tls_and_token_from_the_agents_variables(tmp_path: Path) -> None:
    config = OperatorConfig.from_env(
        {
            "AGENTBUDGET_TLS": "1",
            "AGENTBUDGET_CA_FILE": "/tls/ca.crt",
            "AGENTBUDGET_CERT_FILE": "/tls/tls.crt",
            "AGENTBUDGET_KEY_FILE": "/tls/tls.key",
            "AGENTBUDGET_TOKEN_FILE": "/var/run/secrets/agentbudget.io/token",
            "AGENTBUDGET_SERVER_NAME": SERVER_NAME,
        }
    )
    assert (config.tls, config.tls_ca, config.tls_cert, config.tls_key) == (
        True,
        "/tls/ca.crt",
        "/tls/tls.crt",
        "/tls/tls.key",
    )
    assert (config.token_file, config.server_name) == ("/var/run/secrets/agentbudget.io/token", SERVER_NAME)


def test_the_operator_still_reads_its_older_tls_variables() -> None:
    config = OperatorConfig.from_env(
        {
            "AGENTBUDGET_AUTHORITY_TLS_CA": "/old/ca.crt",
            "AGENTBUDGET_AUTHORITY_TLS_CERT": "/old/tls.crt",
            "AGENTBUDGET_AUTHORITY_TLS_KEY": "/old/tls.key",
        }
    )
    assert (config.tls, config.tls_ca, config.tls_cert, config.tls_key, config.token_file) == (
        False,
        "/old/ca.crt",
        "/old/tls.crt",
        "/old/tls.key",
        "",
    )


def test_the_operator_takes_the_projected_token_where_it_is_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "token"
    monkeypatch.setattr(credentials, "DEFAULT_TOKEN_FILE", str(default))
    assert OperatorConfig.from_env({}).token_file == ""
    default.write_text("t")
    assert OperatorConfig.from_env({}).token_file == str(default)
    assert OperatorConfig.from_env({"AGENTBUDGET_TOKEN_FILE": ""}).token_file == ""


async def test_the_operators_calls_carry_its_token_over_mtls(certs: Certs, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("operator-token\n")
    with serving(server_credentials(certs, require_client_cert=True)) as (echo, address):
        config = OperatorConfig(
            authority=address,
            tls_ca=str(certs.ca),
            tls_cert=str(certs.client_cert),
            tls_key=str(certs.client_key),
            token_file=str(token),
            server_name=SERVER_NAME,
            kube_url="http://127.0.0.1:9",
        )
        ctx = reconcile.Context.create(config)
        try:
            await ctx.authority.get_budget("agents/research")
            token.write_text("rotated-token\n")
            await ctx.authority.get_budget("agents/research")
        finally:
            await ctx.close()
    assert [c.authorization for c in echo.calls] == ["Bearer operator-token", "Bearer rotated-token"]
    assert echo.calls[0].client_name is not None


def test_an_authority_that_refuses_the_operator_is_a_condition_and_retried(kube: KubeEmulator) -> None:
    refusal = error(code_pb2.UNAUTHENTICATED, "CREDENTIALS_MISSING", "no credentials")

    class Refusing(Echo):
        def UpsertBudget(self, request: Any, context: grpc.ServicerContext) -> Any:
            self.failures.append(refusal)
            self._seen("UpsertBudget", context)

        def WatchEvents(self, request: Any, context: grpc.ServicerContext) -> Any:
            # A live stream with nothing to say, as a real authority's: the follower waits on it
            # (rather than reconnecting in a loop) until the operator stops.
            while context.is_active():
                time.sleep(0.02)
            yield from ()

    echo = Refusing()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_BudgetAuthorityServicer_to_server(echo, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    config = OperatorConfig(authority=f"127.0.0.1:{port}", kube_url=kube.url)
    read: Callable[[], dict[str, Any]] = lambda: (kube.get(AGENTBUDGETS, NAME, NS) or {}).get("status") or {}  # noqa: E731
    try:
        with OperatorRunner(kube, handlers.registry, memo=kopf.Memo(config=config)):
            body = agent_budget()
            del body["spec"]["targetRef"]
            kube.create(AGENTBUDGETS, body)
            condition = eventually(
                lambda: next(c for c in read().get("conditions", []) if c["type"] == "Synced"), what="Synced"
            )
    finally:
        server.stop(None)
    assert (condition["status"], condition["reason"]) == ("False", "Unauthenticated")
    assert "CREDENTIALS_MISSING" in condition["message"]
    assert not [e for e in kube.events(about=NAME) if e["reason"] == "SpecRejected"]  # not the spec's fault


def test_a_real_authority_keeps_what_the_operator_sends(dsn: str) -> None:
    """Guard for the fixtures above: the authority process stores agent_principals."""
    with ServerProcess(dsn) as server:
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.BudgetAuthorityStub(channel)
        request = decisions.upsert_request(NS, NAME, {"limit": "1"}, "research-sa")
        stub.UpsertBudget(request)
        assert principals(stub) == [SA + "research-sa"]
        channel.close()


# --- the whole story, with authentication on ----------------------------------------------------

OPERATOR_SA = "system:serviceaccount:agentbudget:agentbudget-operator"


@contextlib.contextmanager
def token_reviews() -> Iterator[TokenReviews]:
    """The emulated TokenReview API, on an event loop of its own (these tests are synchronous)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="token-reviews", daemon=True)
    thread.start()
    reviews = asyncio.run_coroutine_threadsafe(TokenReviews().start(), loop).result()
    try:
        yield reviews
    finally:
        asyncio.run_coroutine_threadsafe(reviews.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_only_the_deployments_pods_may_spend_through_tls_and_tokens(kube, dsn, certs, tmp_path):
    """An authority with TLS and authentication required; the operator syncs with its own token;
    a pod's token of the Deployment's ServiceAccount may spend, another's may not, until the
    Deployment's ServiceAccount changes."""
    hour = time.time() + 3600
    with token_reviews() as reviews:
        tokens = {name: tmp_path / name for name in ("operator", "research-sa", "other-sa")}
        reviews.add(jwt(OPERATOR_SA, hour), OPERATOR_SA)
        tokens["operator"].write_text(jwt(OPERATOR_SA, hour))
        for sa in ("research-sa", "other-sa"):
            reviews.add(jwt(SA + sa, hour), SA + sa)
            tokens[sa].write_text(jwt(SA + sa, hour))
        args = ("--auth", "required", "--kube-config", str(reviews.kubeconfig(tmp_path / "kubeconfig")))
        args += ("--admin-principal", OPERATOR_SA, "--tls-cert", str(certs.server_cert))
        args += ("--tls-key", str(certs.server_key))
        with ServerProcess(dsn, extra_args=args) as server:
            target = "localhost:" + server.address.rsplit(":", 1)[1]
            config = OperatorConfig(
                authority=target, tls_ca=str(certs.ca), token_file=str(tokens["operator"]), kube_url=kube.url
            )

            async def spend_as(sa: str) -> str:
                async with connect(target, ca_file=str(certs.ca), token_file=str(tokens[sa]), retries=0) as agent:
                    try:
                        await agent.record_cost(BUDGET, "0.01")
                    except BudgetError as refused:
                        return refused.reason
                    return "OK"

            async def spent_as(sa: str) -> str:
                async with connect(target, ca_file=str(certs.ca), token_file=str(tokens[sa])) as agent:
                    return decisions.show_money((await agent.get_budget(BUDGET)).spent)

            def status() -> dict[str, Any]:
                return (kube.get(AGENTBUDGETS, NAME, NS) or {}).get("status") or {}

            kube.create(DEPLOYMENTS, running_as("research-sa"))
            with OperatorRunner(kube, handlers.registry, memo=kopf.Memo(config=config)):
                kube.create(AGENTBUDGETS, agent_budget(injectToken=True))
                eventually(lambda: status().get("phase") == "Active", what="synced by the operator's token")
                assert asyncio.run(spend_as("research-sa")) == "OK"
                assert asyncio.run(spend_as("other-sa")) == "NOT_ALLOWED"
                patch = {"spec": {"template": {"spec": {"serviceAccountName": "other-sa"}}}}
                kube.patch(DEPLOYMENTS, "research-agent", patch, NS)
                eventually(lambda: asyncio.run(spend_as("other-sa")) == "OK", what="the new ServiceAccount")
                assert asyncio.run(spend_as("research-sa")) == "NOT_ALLOWED"
                assert asyncio.run(spent_as("other-sa")) == "0.02 USD"  # each agent's cent, in the agent's view
            assert injected(kube)
        assert OPERATOR_SA in reviews.reviewed
