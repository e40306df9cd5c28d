"""operator/deploy/rbac.yaml grants exactly what the operator uses: no more, no less.

The real operator (kopf, the production handlers and settings) runs against the emulated API
server and a real authority through one scenario that takes every path that talks to Kubernetes.
Every request in the emulator's log (discovery aside) becomes an RBAC triple
(apiGroup, resource[/subresource], verb); that set must equal the ClusterRole's.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import yaml
from agentbudget.routing import ANNOTATION as ROUTING
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget_operator import handlers
from agentbudget_operator.config import OperatorConfig
from agentbudget_operator.decisions import REPLICAS_ANNOTATION
from conftest import usd
from kube import (
    AGENTBUDGETS,
    DEPLOYMENTS,
    EVENTS_K8S,
    Call,
    KubeEmulator,
    OperatorRunner,
    default_resources,
    eventually,
    operator_settings,
)
from test_operator import authority, ledger  # noqa: F401  (the same real-authority fixtures)

ROOT = Path(__file__).resolve().parent.parent
RBAC = ROOT / "operator" / "deploy" / "rbac.yaml"
CRD = ROOT / "charts" / "agentbudget" / "crds" / "agentbudgets.agentbudget.io.yaml"
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")

NS = "agents"
NAME = "research"
TARGET = "research-agent"
ORPHAN = "orphan"  # its targetRef names a Deployment that does not exist
REJECTED = "martian"  # a spec the authority rejects

# Readable by every authenticated client (the system:discovery ClusterRole): no rule needed.
DISCOVERY = re.compile(r"^/(version|api|apis|api/v1|apis/[^/]+/[^/]+)/?$")
# The operator's two HTTP clients: kopf's aiohttp session, and the kubernetes client of reconcile.Kube.
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")

Triple = tuple[str, str, str]


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    # The emulator also serves CRDs: production kopf watches them (see production_settings).
    resources = default_resources()
    resources[CRDS] = kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs={"create", "delete", "get", "list", "patch", "watch"},
        shortnames={"crd"},
    )
    with KubeEmulator(resources) as emulator:
        emulator.create(CRDS, yaml.safe_load(CRD.read_text()))
        yield emulator


def production_settings() -> kopf.OperatorSettings:
    """The test harness's quick settings, but kopf's resource scanning as in production.

    ``agentbudget-operator`` (``__main__``) passes no settings, so kopf's defaults apply (then the
    startup handler's changes, here as there): scanning is on, so kopf lists and watches CRDs.
    """
    settings = operator_settings()
    settings.scanning.disabled = kopf.OperatorSettings().scanning.disabled
    return settings


def deployment(name: str = TARGET, replicas: int = 3) -> dict[str, Any]:
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


def agent_budget(name: str = NAME, target: str = TARGET, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentbudget.io/v1alpha1",
        "kind": "AgentBudget",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"limit": "10", "targetRef": {"name": target}, **spec},
    }


# --- mapping the request log to RBAC ---------------------------------------------------------------------


def verb(call: Call) -> str:
    if call.method == "GET":
        if call.name is not None:
            return "get"
        return "watch" if call.params.get("watch", "").lower() in ("true", "1") else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(call.method, call.method)


def triple(call: Call) -> Triple:
    if call.resource is None:  # not a resource URL the emulator knows: shown as is, so it fails the check
        return ("?", call.path, call.method)
    resource = str(call.resource.plural) + (f"/{call.subresource}" if call.subresource else "")
    return (str(call.resource.group or ""), resource, verb(call))


def used(calls: list[Call]) -> set[Triple]:
    return {triple(c) for c in calls if not (c.method == "GET" and DISCOVERY.match(c.path))}


def granted() -> set[Triple]:
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    triples: set[Triple] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"no resourceNames/nonResourceURLs here: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for v in rule["verbs"]:
                    assert "*" not in (group, resource, v), f"no wildcards: {rule}"
                    triples.add((group, resource, v))
    return triples


def show(triples: set[Triple]) -> str:
    return "\n".join(f"    {g or '(core)'} {r} {v}" for g, r, v in sorted(triples)) or "    (none)"


def test_the_manifest_binds_the_cluster_role_to_the_operator_service_account() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(RBAC.read_text()) if d}
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    sa, role, binding = docs["ServiceAccount"], docs["ClusterRole"], docs["ClusterRoleBinding"]
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == ("agentbudget-operator", "agentbudget")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    subject = {"kind": "ServiceAccount", "name": "agentbudget-operator", "namespace": "agentbudget"}
    assert binding["subjects"] == [subject]
    # Every rule says why: a comment line directly above each "- apiGroups:" item.
    lines = RBAC.read_text().splitlines()
    items = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(items) == len(role["rules"])
    for i in items:
        assert lines[i - 1].strip().startswith("#"), f"rule without a reason: {lines[i]!r}"


# --- the scenario -------------------------------------------------------------------------------------------


def test_the_operator_uses_exactly_what_rbac_yaml_grants(kube, authority, ledger):
    def status(name: str = NAME) -> dict[str, Any]:
        return (kube.get(AGENTBUDGETS, name, NS) or {}).get("status") or {}

    def replicas() -> int:
        return int(kube.get(DEPLOYMENTS, TARGET, NS)["spec"]["replicas"])

    def annotations() -> dict[str, str]:
        return kube.get(DEPLOYMENTS, TARGET, NS)["metadata"].get("annotations") or {}

    def routing() -> str:
        return kube.get(DEPLOYMENTS, TARGET, NS)["spec"]["template"]["metadata"]["annotations"][ROUTING]

    def reasons(name: str = NAME) -> Counter[str]:
        return Counter(e["reason"] for e in kube.events(about=name))

    def spend(request_id: str, amount: str) -> None:
        budget = f"{NS}/{NAME}"
        ledger.RecordCost(pb.RecordCostRequest(budget=budget, request_id=request_id, amount=usd(amount)))

    def condition(name: str, reason: str) -> bool:
        return any(c["reason"] == reason for c in status(name).get("conditions", []))

    config = OperatorConfig(authority=authority.address, kube_url=kube.url)
    kube.create(DEPLOYMENTS, deployment(replicas=3))
    runner = OperatorRunner(kube, handlers.registry, settings=production_settings(), memo=kopf.Memo(config=config))
    with runner:
        # Create, with a target and routing: the spec into the authority, status, routing onto the template.
        kube.create(AGENTBUDGETS, agent_budget(routing={"tiers": {"premium": "claude-opus-4-5"}}))
        eventually(lambda: status().get("phase") == "Active", what="status filled")
        eventually(lambda: '"premium":"claude-opus-4-5"' in routing(), what="routing written")
        assert kube.get(AGENTBUDGETS, NAME, NS)["metadata"]["finalizers"] == ["agentbudget.io/finalizer"]

        # 85 %: the warning Event.
        spend("c1", "8.50")
        eventually(lambda: reasons()["ThresholdReached"] == 1, what="ThresholdReached Event")
        eventually(lambda: status().get("phase") == "Warning")

        # Exhausted: the annotation remembers 3, then /scale to 0.
        spend("c2", "1.50")
        eventually(lambda: replicas() == 0 and annotations().get(REPLICAS_ANNOTATION) == "3", what="paused")
        eventually(lambda: reasons()["BudgetExhausted"] >= 1 and reasons()["Paused"] >= 1)
        eventually(lambda: status().get("phase") == "Exhausted")

        # Scaled up by hand while exhausted: the Deployment watch sees it, enforcement scales it down.
        paused_events = reasons()["Paused"]
        kube.patch(DEPLOYMENTS, TARGET, {"spec": {"replicas": 4}}, NS, subresource="scale")
        eventually(lambda: replicas() == 0 and reasons()["Paused"] > paused_events, what="enforced")
        assert annotations()[REPLICAS_ANNOTATION] == "3"

        # A higher limit: restored to 3, the annotation removed.
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"limit": "20"}}, NS)
        eventually(lambda: replicas() == 3 and REPLICAS_ANNOTATION not in annotations(), what="restored")
        eventually(lambda: reasons()["Resumed"] >= 1 and status().get("phase") == "Active")

        # A routing change: only the pod-template annotation is patched.
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"routing": {"taskClasses": {"lookup": "premium"}}}}, NS)
        eventually(lambda: '"lookup":"premium"' in routing(), what="routing changed")

        # Pause, unpause, pause again (to be paused when deleted).
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": True}}, NS)
        eventually(lambda: replicas() == 0 and status().get("phase") == "Paused", what="paused by spec")
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": False}}, NS)
        eventually(lambda: replicas() == 3 and REPLICAS_ANNOTATION not in annotations(), what="unpaused")
        eventually(lambda: status().get("phase") == "Active")
        kube.patch(AGENTBUDGETS, NAME, {"spec": {"paused": True}}, NS)
        eventually(lambda: replicas() == 0 and status().get("phase") == "Paused", what="paused again")

        # A missing target: a condition, and kopf retries (its progress annotations).
        kube.create(AGENTBUDGETS, agent_budget(ORPHAN, target="ghost"))
        eventually(lambda: condition(ORPHAN, "TargetNotFound"), what="TargetNotFound condition")
        eventually(
            lambda: any("kopf.zalando.org" in k for k in kube.get(AGENTBUDGETS, ORPHAN, NS)["metadata"]["annotations"]),
            what="kopf's retry state",
        )

        # A spec the authority rejects: the Synced=False condition and a SpecRejected Event.
        kube.create(AGENTBUDGETS, agent_budget(REJECTED, target="martian-agent", timeZone="Mars/Olympus"))
        eventually(lambda: condition(REJECTED, "SpecRejected") and reasons(REJECTED)["SpecRejected"] >= 1)

        # Delete: the finalizer's delete handler restores the paused Deployment, then kopf removes the finalizer.
        kube.delete(AGENTBUDGETS, NAME, NS)
        eventually(lambda: kube.get(AGENTBUDGETS, NAME, NS) is None, what="finalizer removed, object gone")
        eventually(lambda: replicas() == 3 and REPLICAS_ANNOTATION not in annotations(), what="restored on delete")
        for name in (ORPHAN, REJECTED):
            kube.delete(AGENTBUDGETS, name, NS)
            eventually(lambda name=name: kube.get(AGENTBUDGETS, name, NS) is None, what=f"{name} gone")

    calls = kube.requests()
    strangers = {c.user_agent for c in calls if not c.user_agent.startswith(OPERATOR_AGENTS)}
    assert not strangers, f"requests from something other than the operator: {strangers}"
    have, want = used(calls), granted()
    assert have == want, (
        "operator/deploy/rbac.yaml does not match what the operator uses\n"
        f"  used:\n{show(have)}\n  granted:\n{show(want)}\n"
        f"  used, not granted:\n{show(have - want)}\n  granted, never used:\n{show(want - have)}"
    )
    # Every Event is one of the operator's own kopf.event() calls: kopf 1.45 posts none of its own
    # (settings.posting.loggers is off by default), and only ever core v1 Events, never events.k8s.io.
    assert {e["reason"] for e in kube.events()} == {
        "ThresholdReached",
        "BudgetExhausted",
        "Paused",
        "Resumed",
        "SpecRejected",
    }
    assert not kube.requests(resource=EVENTS_K8S)
