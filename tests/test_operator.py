"""The real kopf operator, in-process, against an emulated Kubernetes API and a real authority."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import kopf
import pytest
from agentbudget.routing import ANNOTATION as ROUTING
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_operator import handlers
from agentbudget_operator.config import OperatorConfig
from agentbudget_operator.decisions import REPLICAS_ANNOTATION
from conftest import usd
from kube import AGENTBUDGETS, DEPLOYMENTS, KubeEmulator, OperatorRunner, eventually
from procs import ServerProcess

NS = "agents"
NAME = "research"
BUDGET = f"{NS}/{NAME}"


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def authority(dsn: str) -> Iterator[ServerProcess]:
    with ServerProcess(dsn) as server:
        yield server


@pytest.fixture
def ledger(authority: ServerProcess) -> Iterator[pb_grpc.BudgetAuthorityStub]:
    channel = grpc.insecure_channel(authority.address)
    yield pb_grpc.BudgetAuthorityStub(channel)
    channel.close()


def operator(kube: KubeEmulator, authority: ServerProcess) -> OperatorRunner:
    config = OperatorConfig(authority=authority.address, kube_url=kube.url)
    return OperatorRunner(kube, handlers.registry, memo=kopf.Memo(config=config))


def deployment(name: str = "research-agent", replicas: int = 3) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
            },
        },
    }


def agent_budget(limit: str = "10", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentbudget.io/v1alpha1",
        "kind": "AgentBudget",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"limit": limit, "targetRef": {"name": "research-agent"}, **spec},
    }


def replicas(kube: KubeEmulator) -> int:
    return int(kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["replicas"])


def annotations(kube: KubeEmulator) -> dict[str, str]:
    return kube.get(DEPLOYMENTS, "research-agent", NS)["metadata"].get("annotations") or {}


def reasons(kube: KubeEmulator) -> list[str]:
    return [e["reason"] for e in kube.events(about=NAME)]


def spend(ledger: pb_grpc.BudgetAuthorityStub, request_id: str, amount: str) -> None:
    ledger.RecordCost(pb.RecordCostRequest(budget=BUDGET, request_id=request_id, amount=usd(amount)))


@pytest.fixture
def status(kube: KubeEmulator) -> Callable[[], dict[str, Any]]:
    """The AgentBudget's .status as the emulated API holds it now."""

    def read() -> dict[str, Any]:
        body = kube.get(AGENTBUDGETS, NAME, NS) or {}
        return body.get("status") or {}

    return read


def test_create_fills_the_status_and_writes_the_routing(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment())
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget(routing={"tiers": {"premium": "claude-opus-4-5"}}))
        eventually(lambda: status().get("phase") == "Active", what="status filled")
        s = status()
        assert (s["limit"], s["spent"], s["remaining"], s["used"]) == ("10.00 USD", "0.00 USD", "10.00 USD", "0%")
        assert s["observedGeneration"] == kube.get(AGENTBUDGETS, NAME, NS)["metadata"]["generation"]
        assert {c["type"]: c["status"] for c in s["conditions"]} == {"Synced": "True", "TargetFound": "True"}
        template = kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["template"]["metadata"]["annotations"]
        assert '"premium":"claude-opus-4-5"' in template[ROUTING] and '"research":"premium"' in template[ROUTING]
        budget = ledger.GetBudget(pb.GetBudgetRequest(name=BUDGET)).budget
        assert budget.spec.limit.units == 10


def test_spend_past_the_threshold_warns_and_exhaustion_pauses_until_the_limit_rises(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment(replicas=3))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("10"))
        eventually(lambda: status().get("phase") == "Active")
        spend(ledger, "c1", "8.50")
        eventually(lambda: status().get("phase") == "Warning", what="phase Warning")
        eventually(lambda: "ThresholdReached" in reasons(kube), what="warning Event")
        warning = next(e for e in kube.events(about=NAME) if e["reason"] == "ThresholdReached")
        assert warning["type"] == "Warning" and "80%" in warning["message"]
        assert replicas(kube) == 3

        spend(ledger, "c2", "1.50")
        eventually(lambda: replicas(kube) == 0, what="scaled to 0")
        assert annotations(kube)[REPLICAS_ANNOTATION] == "3"
        eventually(lambda: {"BudgetExhausted", "Paused"} <= set(reasons(kube)))
        eventually(lambda: status().get("phase") == "Exhausted")
        with pytest.raises(grpc.RpcError):  # an agent (or a coordinator) asks anyway: escalated
            ledger.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="r-late", amount=usd("2")))
        eventually(lambda: "BudgetDenied" in reasons(kube), what="denial escalated as an Event")
        denied = next(e for e in kube.events(about=NAME) if e["reason"] == "BudgetDenied")
        assert denied["type"] == "Warning" and "r-late" in denied["message"] and "2.00 USD" in denied["message"]

        kube.patch(AGENTBUDGETS, NAME, {"spec": {"limit": "20"}}, NS)
        # Scaled first, the annotation removed after: a crash in between restores again, never strands it at 0.
        eventually(lambda: replicas(kube) == 3 and REPLICAS_ANNOTATION not in annotations(kube), what="restored")
        eventually(lambda: "Resumed" in reasons(kube))
        eventually(lambda: status().get("phase") == "Active")
    assert reasons(kube).count("ThresholdReached") == 1


def test_a_paused_agent_scaled_up_by_hand_is_scaled_down_again(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment(replicas=2))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("1"))
        eventually(lambda: status().get("phase") == "Active")
        spend(ledger, "c1", "1")
        eventually(lambda: replicas(kube) == 0)
        kube.patch(DEPLOYMENTS, "research-agent", {"spec": {"replicas": 4}}, NS, subresource="scale")
        eventually(lambda: replicas(kube) == 0, what="scaled down again")
        assert annotations(kube)[REPLICAS_ANNOTATION] == "2"  # never overwritten
        eventually(lambda: any(e["type"] == "Warning" and e["reason"] == "Paused" for e in kube.events(about=NAME)))


def test_pausing_scales_to_zero_and_unpausing_restores(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment(replicas=2))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("10"))
        eventually(lambda: status().get("phase") == "Active")
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": True}}, NS)
        eventually(lambda: replicas(kube) == 0 and status().get("phase") == "Paused")
        with pytest.raises(grpc.RpcError) as denied:
            ledger.Reserve(pb.ReserveRequest(budget=BUDGET, reservation_id="r1", amount=usd("1")))
        assert denied.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": False}}, NS)
        eventually(lambda: replicas(kube) == 2 and REPLICAS_ANNOTATION not in annotations(kube))
        eventually(lambda: status().get("phase") == "Active")


def test_delete_restores_the_agent_and_keeps_the_ledger(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment(replicas=2))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("1"))
        eventually(lambda: status().get("phase") == "Active")
        assert kube.get(AGENTBUDGETS, NAME, NS)["metadata"]["finalizers"] == ["agentbudget.io/finalizer"]
        spend(ledger, "c1", "1")
        eventually(lambda: replicas(kube) == 0)
        kube.delete(AGENTBUDGETS, NAME, NS)
        eventually(lambda: kube.get(AGENTBUDGETS, NAME, NS) is None, what="finalizer removed, object gone")
        eventually(lambda: replicas(kube) == 2 and REPLICAS_ANNOTATION not in annotations(kube))
    with pytest.raises(grpc.RpcError) as gone:
        ledger.GetBudget(pb.GetBudgetRequest(name=BUDGET))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    trail = ledger.ListLedgerEntries(pb.ListLedgerEntriesRequest(budget=BUDGET))
    assert [e.type for e in trail.entries] == [pb.ENTRY_PERIOD_OPENED, pb.ENTRY_CHARGE]


def test_routing_is_patched_only_when_it_changes(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment())
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget(routing={"taskClasses": {"lookup": "mid"}}))
        eventually(
            lambda: (
                ROUTING
                in (
                    kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["template"]["metadata"].get("annotations") or {}
                )
            )
        )
        patches = len(kube.requests("PATCH", DEPLOYMENTS))
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"alertThresholds": [0.5]}}, NS)  # routing unchanged
        eventually(lambda: ledger.GetBudget(pb.GetBudgetRequest(name=BUDGET)).budget.spec.alert_thresholds == [0.5])
        eventually(lambda: status().get("observedGeneration") == 2)
        assert len(kube.requests("PATCH", DEPLOYMENTS)) == patches  # no patch at all
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"routing": {"taskClasses": {"lookup": "premium"}}}}, NS)
        eventually(
            lambda: (
                '"lookup":"premium"'
                in kube.get(DEPLOYMENTS, "research-agent", NS)["spec"]["template"]["metadata"]["annotations"][ROUTING]
            )
        )


def test_an_operator_restart_posts_no_duplicate_events_and_scales_nothing(kube, authority, ledger, status):
    kube.create(DEPLOYMENTS, deployment(replicas=3))
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("10"))
        eventually(lambda: status().get("phase") == "Active")
        spend(ledger, "c1", "10")
        eventually(
            lambda: replicas(kube) == 0 and {"ThresholdReached", "BudgetExhausted", "Paused"} <= set(reasons(kube))
        )
        eventually(lambda: status().get("lastEventId", 0) >= 3)
    events_before = sorted(reasons(kube))
    scales_before = len(kube.requests("PATCH", DEPLOYMENTS))
    with operator(kube, authority):
        eventually(lambda: status().get("phase") == "Exhausted")
        spend(ledger, "c2", "0.01")  # a new event proves the restarted follower is live
        eventually(lambda: "BudgetExhausted" in reasons(kube))
        eventually(lambda: len(kube.events(about=NAME)) >= len(events_before))
    assert sorted(reasons(kube)) == events_before
    assert len(kube.requests("PATCH", DEPLOYMENTS)) == scales_before


def test_a_missing_target_is_a_condition_and_is_retried(kube, authority, ledger, status):
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("10"))
        eventually(
            lambda: any(
                c["reason"] == "TargetNotFound" and c["status"] == "False" for c in status().get("conditions", [])
            ),
            what="TargetNotFound condition",
        )
        kube.create(DEPLOYMENTS, deployment(replicas=1))
        eventually(
            lambda: any(c["type"] == "TargetFound" and c["status"] == "True" for c in status().get("conditions", [])),
            timeout=20,
        )


def test_a_spec_the_authority_rejects_is_a_permanent_error_with_a_condition(kube, authority, ledger, status):
    with operator(kube, authority):
        kube.create(AGENTBUDGETS, agent_budget("10", timeZone="Mars/Olympus"))  # the schema cannot know
        eventually(lambda: any(c["reason"] == "SpecRejected" for c in status().get("conditions", [])))
        condition = next(c for c in status()["conditions"] if c["type"] == "Synced")
        assert condition["status"] == "False" and "time zone" in condition["message"]
        eventually(lambda: "SpecRejected" in reasons(kube))


def test_the_emulated_api_refuses_what_the_crd_schema_refuses(kube):
    import kmock

    with pytest.raises(kmock.KubernetesError) as refused:
        kube.create(AGENTBUDGETS, agent_budget("10", alertThresholds=[1.5]))
    assert refused.value.status == 422 and "alertThresholds" in str(refused.value)
    kube.create(AGENTBUDGETS, agent_budget("10"))
    with pytest.raises(kmock.KubernetesError):
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"limit": 12}}, NS)  # a number, not a decimal string
    assert kube.get(AGENTBUDGETS, NAME, NS)["spec"]["limit"] == "10"
