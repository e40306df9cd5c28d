"""Bringing the cluster in line with the authority, for one AgentBudget at a time.

Three paths lead here — the kopf handlers (create, update, resume, delete), the event stream
follower (one per AgentBudget, resuming after the last event applied) and the periodic resync —
and all of them call :func:`reconcile`, serialised per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import kopf
from agentbudget import errors, routing
from agentbudget.client import BudgetClient, connect
from agentbudget.v1 import budget_authority_pb2 as pb

from . import decisions
from .config import OperatorConfig
from .kube import Kube, api_client

log = logging.getLogger(__name__)
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class Context:
    """What every handler shares (kept in kopf's memo)."""

    config: OperatorConfig
    authority: BudgetClient
    kube: Kube
    locks: defaultdict[tuple[str, str], asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))

    @classmethod
    def create(cls, config: OperatorConfig) -> Context:
        credentials = None
        if config.tls_ca:
            with open(config.tls_ca, "rb") as ca:
                root = ca.read()
            key = cert = None
            if config.tls_cert and config.tls_key:
                with open(config.tls_key, "rb") as k, open(config.tls_cert, "rb") as c:
                    key, cert = k.read(), c.read()
            credentials = grpc.ssl_channel_credentials(root, key, cert)
        return cls(config, connect(config.authority, credentials=credentials), Kube(api_client(config.kube_url)))

    async def close(self) -> None:
        await self.authority.close()
        self.kube.close()


def _body(obj: Mapping[str, Any]) -> kopf.Body:
    """kopf posts Events about any mapping with apiVersion, kind and metadata."""
    return cast(kopf.Body, obj)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _target(body: Mapping[str, Any]) -> str | None:
    ref = (body.get("spec") or {}).get("targetRef") or {}
    name = ref.get("name")
    return str(name) if name else None


async def sync_spec(ctx: Context, body: Mapping[str, Any]) -> None:
    """Create / update / resume: the spec into the authority (idempotent), then reconcile."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 0)
    try:
        request = decisions.upsert_request(namespace, name, body.get("spec") or {})
        response = await ctx.authority.call(ctx.authority.stub.UpsertBudget, request)
    except (decisions.SpecError, errors.InvalidRequestError, errors.BudgetConflictError) as exc:
        why = exc.message if isinstance(exc, errors.BudgetError) else str(exc)
        await _set_conditions(ctx, body, [("Synced", False, "SpecRejected", why)])
        kopf.event(_body(body), type="Warning", reason="SpecRejected", message=why)
        raise kopf.PermanentError(f"the authority rejects this spec: {why}") from exc
    except errors.UnavailableError as exc:
        raise kopf.TemporaryError(f"the authority is unavailable: {exc.message}", delay=2) from exc
    await reconcile(ctx, namespace, name, budget=response.budget, synced_generation=generation)


async def _set_conditions(ctx: Context, body: Mapping[str, Any], updates: list[tuple[str, bool, str, str]]) -> None:
    meta = body["metadata"]
    status = body.get("status") or {}
    previous = status.get("conditions") or []
    generation = meta.get("generation", 0)
    now = _now()
    made = [decisions.condition(t, s, r, m, generation, now, previous) for t, s, r, m in updates]
    merged = decisions.merge_conditions(previous, made)
    if merged != previous:
        await ctx.kube.patch_budget_status(meta["namespace"], meta["name"], {"conditions": merged})


async def reconcile(
    ctx: Context,
    namespace: str,
    name: str,
    *,
    budget: pb.Budget | None = None,
    event_id: int | None = None,
    synced_generation: int | None = None,
) -> None:
    async with ctx.locks[(namespace, name)]:
        body = await ctx.kube.get_budget(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if budget is None:
            try:
                budget = await ctx.authority.get_budget(decisions.budget_name(namespace, name))
            except errors.BudgetNotFoundError:
                return  # not (yet) in the authority: the sync handler owns that, and says why
            except errors.UnavailableError as exc:
                raise kopf.TemporaryError(f"the authority is unavailable: {exc.message}", delay=2) from exc
        meta, status = body["metadata"], body.get("status") or {}
        generation = meta.get("generation", 0)
        desired: dict[str, Any] = decisions.budget_status(budget)
        updates: list[tuple[str, bool, str, str]] = []
        if synced_generation is not None:
            desired["observedGeneration"] = synced_generation
            updates.append(("Synced", True, "Synced", "the spec is in force in the budget authority"))
        if event_id is not None and event_id > int(status.get("lastEventId") or 0):
            desired["lastEventId"] = event_id
        target = _target(body)
        if target is not None:
            found = await _reconcile_target(ctx, body, budget, target)
            updates.append(
                ("TargetFound", True, "TargetFound", f"Deployment {target}")
                if found
                else ("TargetFound", False, "TargetNotFound", f"Deployment {target} does not exist")
            )
        now = _now()
        previous = status.get("conditions") or []
        made = [decisions.condition(t, s, r, m, generation, now, previous) for t, s, r, m in updates]
        desired["conditions"] = decisions.merge_conditions(previous, made)
        changes = decisions.status_changes(status, desired)
        if changes:
            await ctx.kube.patch_budget_status(namespace, name, changes)
        if target is not None and not found:
            raise kopf.TemporaryError(f"target Deployment {target} not found", delay=5)


async def _reconcile_target(ctx: Context, body: Mapping[str, Any], budget: pb.Budget, target: str) -> bool:
    namespace = body["metadata"]["namespace"]
    deployment = await ctx.kube.get_deployment(namespace, target)
    if deployment is None:
        return False
    annotations = deployment["metadata"].get("annotations") or {}
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    plan = decisions.scale_plan(
        decisions.wants_paused(budget),
        replicas,
        annotations.get(decisions.REPLICAS_ANNOTATION),
        decisions.pause_reason(budget),
    )
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    try:
        wanted = routing.pod_annotations((body.get("spec") or {}).get("routing"))
    except ValueError as exc:
        log.warning("%s/%s: %s", namespace, body["metadata"]["name"], exc)
        wanted = {}
    route_changes = decisions.template_annotation_changes(template.get("annotations"), wanted)
    routes: dict[str, Any] = (
        {"spec": {"template": {"metadata": {"annotations": route_changes}}}} if route_changes else {}
    )
    remember = {"metadata": {"annotations": {decisions.REPLICAS_ANNOTATION: plan.annotation or None}}}
    if plan.annotation:  # pausing: remember the count before it becomes 0
        await ctx.kube.patch_deployment(namespace, target, {**remember, **routes})
        routes = {}
    if plan.replicas is not None:
        await ctx.kube.scale_deployment(namespace, target, plan.replicas)
    if plan.annotation == "":  # restored: forget the count only once it is back
        await ctx.kube.patch_deployment(namespace, target, {**remember, **routes})
        routes = {}
    if routes:
        await ctx.kube.patch_deployment(namespace, target, routes)
    if plan.event is not None:
        kopf.event(_body(body), type=plan.event[0], reason=plan.event[1], message=plan.event[2])
    return True


async def enforce(ctx: Context, namespace: str, name: str) -> None:
    """A paused agent's Deployment was scaled up by hand: reconcile scales it down again."""
    try:
        await reconcile(ctx, namespace, name)
    except (kopf.TemporaryError, errors.BudgetError) as exc:  # the next event or the resync retries
        log.warning("%s/%s: enforcement deferred: %s", namespace, name, exc)


async def delete(ctx: Context, body: Mapping[str, Any]) -> None:
    """The budget stops (its ledger stays for audit); a Deployment the operator paused comes back."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        await ctx.authority.delete_budget(decisions.budget_name(namespace, name), allow_missing=True)
    except errors.UnavailableError as exc:
        raise kopf.TemporaryError(f"the authority is unavailable: {exc.message}", delay=2) from exc
    target = _target(body)
    if target is None:
        return
    deployment = await ctx.kube.get_deployment(namespace, target)
    if deployment is None:
        return
    remembered = (deployment["metadata"].get("annotations") or {}).get(decisions.REPLICAS_ANNOTATION)
    plan = decisions.scale_plan(False, 0, remembered, "")
    if plan.replicas is not None:
        await ctx.kube.scale_deployment(namespace, target, plan.replicas)
        patch = {"metadata": {"annotations": {decisions.REPLICAS_ANNOTATION: None}}}
        await ctx.kube.patch_deployment(namespace, target, patch)


async def follow(ctx: Context, body: Mapping[str, Any], stopped: Any) -> None:
    """Apply the authority's events for this budget as they come, resuming after the last one applied."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    cursor = int((body.get("status") or {}).get("lastEventId") or 0)
    attempt = 0
    while not stopped:
        try:
            async for event in ctx.authority.watch_events(
                after_id=cursor, budgets=[decisions.budget_name(namespace, name)]
            ):
                attempt = 0
                posted = decisions.kube_event(event)
                current = await ctx.kube.get_budget(namespace, name)
                if current is None:
                    return
                if posted is not None:
                    kopf.event(_body(current), type=posted[0], reason=posted[1], message=posted[2])
                with contextlib.suppress(kopf.TemporaryError):
                    await reconcile(ctx, namespace, name, event_id=event.id)
                cursor = event.id
                if stopped:
                    return
        except errors.BudgetError as exc:
            log.info("%s/%s: event stream interrupted (%s); resuming after %d", namespace, name, exc.reason, cursor)
        await stopped.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
        attempt += 1
