"""The real kopf operator against the emulated Kubernetes API of tests/kube.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kmock
import kopf
import kubernetes.client
import pytest
from kube import AGENTBUDGETS, DEPLOYMENTS, KubeEmulator, OperatorRunner, eventually

FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
HANDLED = "kopf.zalando.org/last-handled-configuration"


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as kube:
        yield kube


def make_registry(calls: list[str]) -> kopf.OperatorRegistry:
    """A throwaway operator: records each handler call in ``calls``."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create("agentbudget.io", "v1alpha1", "agentbudgets", registry=registry)
    async def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        calls.append("create")
        patch.status["phase"] = "Active"
        kopf.info(body, reason="BudgetReady", message="The budget is ready.")

    @kopf.on.resume("agentbudget.io", "v1alpha1", "agentbudgets", registry=registry)
    async def resumed(**_: Any) -> None:
        calls.append("resume")

    @kopf.on.delete("agentbudget.io", "v1alpha1", "agentbudgets", registry=registry)
    async def deleted(**_: Any) -> None:
        calls.append("delete")

    return registry


def budget(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"limit": "10.00", "currency": "USD"}}


def test_create_status_event_finalizer_and_delete(kube: KubeEmulator) -> None:
    calls: list[str] = []
    with OperatorRunner(kube, make_registry(calls)):
        kube.create(AGENTBUDGETS, budget("ab1"))

        def handled() -> dict[str, Any]:
            obj = kube.get(AGENTBUDGETS, "ab1")
            assert obj is not None and obj.get("status", {}).get("phase") == "Active"
            assert HANDLED in obj["metadata"].get("annotations", {})
            return obj

        obj = eventually(handled, what="the create handler's status and kopf's annotations")
        assert FINALIZER in obj["metadata"]["finalizers"]
        assert obj["metadata"]["generation"] == 1  # kopf's metadata/status writes are not spec changes
        assert any(c.subresource == "status" for c in kube.requests("PATCH", AGENTBUDGETS, "ab1"))

        event = eventually(lambda: [e for e in kube.events("ab1") if e["reason"] == "BudgetReady"])[0]
        assert event["message"] == "The budget is ready."
        assert event["involvedObject"]["uid"] == obj["metadata"]["uid"]

        marked = kube.delete(AGENTBUDGETS, "ab1")
        assert marked["metadata"]["deletionTimestamp"]  # held by the finalizer until the operator is done
        eventually(lambda: kube.get(AGENTBUDGETS, "ab1") is None, what="the finalizer's release")
    assert calls == ["create", "delete"]
    assert not kube.requests("PATCH", DEPLOYMENTS)


def test_restart_does_not_rerun_create(kube: KubeEmulator) -> None:
    calls: list[str] = []
    registry = make_registry(calls)
    with OperatorRunner(kube, registry):
        kube.create(AGENTBUDGETS, budget("ab2"))
        eventually(lambda: HANDLED in kube.get(AGENTBUDGETS, "ab2")["metadata"]["annotations"])  # type: ignore[index]
    assert calls == ["create"]

    with OperatorRunner(kube, registry):
        eventually(lambda: "resume" in calls, what="the restarted operator to see the object")
    assert calls == ["create", "resume"]


def test_scale_subresource_changes_only_replicas(kube: KubeEmulator) -> None:
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": []}}}
    before = kube.create(DEPLOYMENTS, {"metadata": {"name": "web"}, "spec": spec})

    with kube.client() as api:
        apps = kubernetes.client.AppsV1Api(api)
        scale = apps.patch_namespaced_deployment_scale(
            "web", "default", {"spec": {"replicas": 3}, "metadata": {"labels": {"ignored": "yes"}}}
        )
        read = apps.read_namespaced_deployment_scale("web", "default")
        deployment = apps.read_namespaced_deployment("web", "default")
        assert scale.spec and read.spec and deployment.spec
        assert scale.spec.replicas == read.spec.replicas == deployment.spec.replicas == 3

    after = kube.get(DEPLOYMENTS, "web")
    assert after is not None
    assert after["spec"] == {**spec, "replicas": 3}
    assert "labels" not in after["metadata"]
    assert after["metadata"]["generation"] == 2
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert [(c.method, c.subresource) for c in kube.requests(resource=DEPLOYMENTS)] == [
        ("PATCH", "scale"),
        ("GET", "scale"),
        ("GET", None),
    ]


def test_emulator_write_semantics(kube: KubeEmulator) -> None:
    created = kube.create(AGENTBUDGETS, {**budget("ab3"), "status": {"phase": "Forged"}})
    assert "status" not in created  # status is only written through /status
    rv = created["metadata"]["resourceVersion"]

    same = kube.patch(AGENTBUDGETS, "ab3", {"spec": {"limit": "10.00"}})
    assert same["metadata"]["resourceVersion"] == rv  # a no-op write is not a change

    labelled = kube.patch(AGENTBUDGETS, "ab3", {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "X"}})
    assert labelled["metadata"]["generation"] == 1 and "status" not in labelled
    both = {"status": {"phase": "Active"}, "spec": {"limit": "0"}}
    status = kube.patch(AGENTBUDGETS, "ab3", both, subresource="status")
    assert status["status"] == {"phase": "Active"} and status["spec"]["limit"] == "10.00"
    respec = kube.patch(AGENTBUDGETS, "ab3", {"spec": {"limit": "20.00"}})
    assert respec["metadata"]["generation"] == 2

    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "remove", "path": "/spec"}]
    with pytest.raises(kmock.KubernetesError) as failed:
        kube.patch(AGENTBUDGETS, "ab3", stale)
    assert failed.value.status == 422

    named = kube.create(AGENTBUDGETS, {"metadata": {"generateName": "ab-"}, "spec": {"limit": "1"}})
    assert named["metadata"]["name"].startswith("ab-") and len(named["metadata"]["name"]) == 8
