"""Every kopf handler of the operator, each a line or two: the work is in ``reconcile``."""

from __future__ import annotations

import os
from typing import Any

import kopf

from . import decisions, reconcile
from .config import OperatorConfig

registry = kopf.OperatorRegistry()
CR = ("agentbudget.io", "v1alpha1", "agentbudgets")
RESYNC_SECONDS = float(os.environ.get("AGENTBUDGET_OPERATOR_RESYNC_SECONDS", "30"))


@kopf.on.startup(registry=registry)
async def startup(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "agentbudget.io/finalizer"
    config = memo.get("config") or OperatorConfig.from_env()
    memo["ctx"] = reconcile.Context.create(config)


@kopf.on.cleanup(registry=registry)
async def cleanup(*, memo: kopf.Memo, **_: Any) -> None:
    await memo["ctx"].close()


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    url = os.environ.get("AGENTBUDGET_OPERATOR_KUBE_URL")
    if url:
        return kopf.ConnectionInfo(server=url, insecure=True)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.create(*CR, registry=registry)
@kopf.on.update(*CR, field="spec", registry=registry)
@kopf.on.resume(*CR, registry=registry)
async def sync(*, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await reconcile.sync_spec(memo["ctx"], body)


@kopf.on.delete(*CR, registry=registry)
async def delete(*, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await reconcile.delete(memo["ctx"], body)


@kopf.daemon(*CR, registry=registry, cancellation_timeout=2.0)
async def follow(*, body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    try:
        await reconcile.follow(memo["ctx"], body, stopped)
    except Exception:
        if stopped or memo["ctx"].closed:  # the operator is stopping: its channel may be closed already
            return
        raise


@kopf.timer(*CR, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS, registry=registry)
async def resync(*, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await reconcile.resync(memo["ctx"], namespace or "", name)


@kopf.index(*CR, registry=registry)
def targets(*, name: str, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str]:
    """(namespace, Deployment) → the AgentBudget that governs it."""
    ref = spec.get("targetRef") or {}
    return {(namespace or "", ref["name"]): name} if ref.get("name") else {}


@kopf.index(*CR, registry=registry)
def agents(
    *, name: str, namespace: str | None, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], tuple[str, bool, bool]]:
    """(namespace, Deployment) → (the AgentBudget, whether it names the ServiceAccount itself, injectToken)."""
    ref = spec.get("targetRef") or {}
    if not ref.get("name"):
        return {}
    return {(namespace or "", ref["name"]): (name, bool(spec.get("serviceAccountName")), bool(spec.get("injectToken")))}


@kopf.on.event("apps", "v1", "deployments", registry=registry)
async def target_changed(
    *,
    type: str | None,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    agents: kopf.Index[tuple[str, str], tuple[str, bool, bool]] | None = None,  # the index above
    **_: Any,
) -> None:
    if agents is not None:  # a new ServiceAccount to sync, or the injected token to put back
        deployment = None if type == "DELETED" else body
        for budget, names_account, injects_token in agents.get((namespace or "", name), []):
            await reconcile.target_changed(
                memo["ctx"],
                namespace or "",
                budget,
                deployment,
                names_account=names_account,
                injects_token=injects_token,
            )


@kopf.on.event(
    "apps", "v1", "deployments", annotations={decisions.REPLICAS_ANNOTATION: kopf.PRESENT}, registry=registry
)
async def paused_deployment_changed(
    *,
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    memo: kopf.Memo,
    targets: kopf.Index[tuple[str, str], str] | None = None,  # the index above, by its name
    **_: Any,
) -> None:
    if targets is not None and int(spec.get("replicas", 0)) > 0:  # a paused agent scaled up by hand
        for budget in targets.get((namespace or "", name), []):
            await reconcile.enforce(memo["ctx"], namespace or "", budget)
