"""Bringing the cluster in line with the authority, for one AgentBudget at a time.

Four paths lead here — the kopf handlers (create, update, resume, delete), the event stream
follower (one per AgentBudget, resuming after the last event applied), the periodic resync and
changes of a target Deployment — and all of them call :func:`reconcile`, serialised per object.
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

import kopf
from agentbudget import errors, routing
from agentbudget.client import BudgetClient, connect
from agentbudget.v1 import budget_authority_pb2 as pb

from . import decisions
from .config import OperatorConfig
from .kube import Conflict, Kube, api_client

log = logging.getLogger(__name__)
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class Context:
    """What every handler shares (kept in kopf's memo)."""

    config: OperatorConfig
    authority: BudgetClient
    kube: Kube
    locks: defaultdict[tuple[str, str], asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # The agent principal last given to the authority for each AgentBudget, by this process.
    principals: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # AgentBudgets whose target's new ServiceAccount could not be synced: the resync retries them.
    unsynced: set[tuple[str, str]] = field(default_factory=set)
    # Set by close(): the event streams end instead of retrying on a closed channel.
    closed: bool = False

    @classmethod
    def create(cls, config: OperatorConfig) -> Context:
        authority = connect(
            config.authority,
            tls=config.tls or None,  # else implied by the CA file or a client certificate
            ca_file=config.tls_ca or None,
            cert_file=config.tls_cert or None,
            key_file=config.tls_key or None,
            token_file=config.token_file or None,
            server_name=config.server_name or None,
        )
        return cls(config, authority, Kube(api_client(config.kube_url)))

    async def close(self) -> None:
        self.closed = True
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


def _retry_later(exc: errors.BudgetError) -> kopf.TemporaryError:
    """The authority cannot take the call now: unavailable, rate-limited, or refusing the operator
    (no or a bad token, or a role without the admin calls: fixed outside, so retried slowly)."""
    if isinstance(exc, errors.UnauthenticatedError | errors.PermissionDeniedError):
        return kopf.TemporaryError(f"the authority refuses the operator ({exc.reason}): {exc.message}", delay=30)
    if isinstance(exc, errors.RateLimitedError):
        return kopf.TemporaryError("the authority rate-limits the operator", delay=max(1.0, exc.retry_after_ms / 1000))
    return kopf.TemporaryError(f"the authority is unavailable: {exc.message}", delay=2)


RETRY_LATER = (
    errors.UnavailableError,
    errors.RateLimitedError,
    errors.UnauthenticatedError,
    errors.PermissionDeniedError,
)


async def sync_spec(ctx: Context, body: Mapping[str, Any]) -> None:
    """Create / update / resume: the spec, with the agent's principal, into the authority (idempotent),
    then reconcile."""
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 0)
    spec = body.get("spec") or {}
    async with ctx.locks[(namespace, name)]:  # a target's ServiceAccount change syncs too: one at a time
        target = _target(body)
        deployment = None
        if target is not None and not spec.get("serviceAccountName"):
            deployment = await ctx.kube.get_deployment(namespace, target)
        try:
            account = decisions.service_account(spec, deployment)
            request = decisions.upsert_request(namespace, name, spec, account)
            response = await ctx.authority.call(ctx.authority.stub.UpsertBudget, request)
        except (decisions.SpecError, errors.InvalidRequestError, errors.BudgetConflictError) as exc:
            why = exc.message if isinstance(exc, errors.BudgetError) else str(exc)
            await _set_conditions(ctx, body, [("Synced", False, "SpecRejected", why)])
            kopf.event(_body(body), type="Warning", reason="SpecRejected", message=why)
            raise kopf.PermanentError(f"the authority rejects this spec: {why}") from exc
        except (errors.UnauthenticatedError, errors.PermissionDeniedError) as exc:
            reason = "Unauthenticated" if isinstance(exc, errors.UnauthenticatedError) else "NotAllowed"
            await _set_conditions(ctx, body, [("Synced", False, reason, f"{exc.reason}: {exc.message}")])
            raise _retry_later(exc) from exc
        except RETRY_LATER as exc:
            raise _retry_later(exc) from exc
        ctx.principals[(namespace, name)] = decisions.agent_principal(namespace, account)
        ctx.unsynced.discard((namespace, name))
        # still under the lock: no event's reconcile between the upsert and its status
        await _reconcile(ctx, namespace, name, budget=response.budget, event_id=None, synced_generation=generation)


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
        await _reconcile(ctx, namespace, name, budget=budget, event_id=event_id, synced_generation=synced_generation)


async def _reconcile(
    ctx: Context,
    namespace: str,
    name: str,
    *,
    budget: pb.Budget | None,
    event_id: int | None,
    synced_generation: int | None,
) -> None:
    body = await ctx.kube.get_budget(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    if budget is None:
        try:
            budget = await ctx.authority.get_budget(decisions.budget_name(namespace, name))
        except errors.BudgetNotFoundError:
            return  # not (yet) in the authority: the sync handler owns that, and says why
        except RETRY_LATER as exc:
            raise _retry_later(exc) from exc
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
    pod_template = (deployment.get("spec") or {}).get("template") or {}
    template = pod_template.get("metadata") or {}
    spec = body.get("spec") or {}
    try:
        wanted = routing.pod_annotations(spec.get("routing"))
    except ValueError as exc:
        log.warning("%s/%s: %s", namespace, body["metadata"]["name"], exc)
        wanted = {}
    route_changes = decisions.template_annotation_changes(template.get("annotations"), wanted)
    routes: dict[str, Any] = (
        {"spec": {"template": {"metadata": {"annotations": route_changes}}}} if route_changes else {}
    )
    injection = decisions.token_injection_patch(pod_template) if spec.get("injectToken") else None
    if injection is not None:  # first, and with the routing: one rollout of the agent, not two
        patch = decisions.merge_patches(routes, {"spec": {"template": injection}})
        # whole lists: only onto the version they were computed from
        patch["metadata"] = {"resourceVersion": deployment["metadata"]["resourceVersion"]}
        try:
            await ctx.kube.patch_deployment(namespace, target, patch, merge=True)
        except Conflict:
            log.info(
                "%s/%s: Deployment %s changed meanwhile; the token is added at the next reconcile",
                namespace,
                body["metadata"]["name"],
                target,
            )
        else:
            routes = {}
            message = f"added the projected token {decisions.TOKEN_VOLUME} to the pod template of Deployment {target}"
            kopf.event(_body(body), type="Normal", reason="TokenInjected", message=message)
    remember = {"metadata": {"annotations": {decisions.REPLICAS_ANNOTATION: plan.annotation or None}}}
    if plan.annotation:  # pausing: remember the count before it becomes 0
        await ctx.kube.patch_deployment(namespace, target, decisions.merge_patches(remember, routes))
        routes = {}
    if plan.replicas is not None:
        await ctx.kube.scale_deployment(namespace, target, plan.replicas)
    if plan.annotation == "":  # restored: forget the count only once it is back
        await ctx.kube.patch_deployment(namespace, target, decisions.merge_patches(remember, routes))
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


async def target_changed(
    ctx: Context,
    namespace: str,
    name: str,
    deployment: Mapping[str, Any] | None,
    *,
    names_account: bool,
    injects_token: bool,
) -> None:
    """The Deployment the AgentBudget ``name`` targets was added, changed or deleted (None): a new
    ServiceAccount becomes the budget's agent principal; a pod template that lost the token gets it back."""
    key = (namespace, name)
    principal = (
        None
        if names_account
        else decisions.agent_principal(namespace, decisions.deployment_service_account(deployment))
    )
    try:
        if not names_account and (key not in ctx.principals or ctx.principals[key] != principal):
            body = await ctx.kube.get_budget(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            await sync_spec(ctx, body)
        elif injects_token and deployment is not None:
            template = (deployment.get("spec") or {}).get("template") or {}
            if decisions.token_injection_patch(template) is not None:
                await reconcile(ctx, namespace, name)
    except kopf.PermanentError:
        return  # the spec itself is rejected: said already, and its next change syncs again
    except (kopf.TemporaryError, errors.BudgetError, Conflict) as exc:  # the next event or the resync retries
        log.info("%s/%s: after a change of its target: %s", namespace, name, exc)
    if not names_account and ctx.principals.get(key) != principal:
        log.warning("%s/%s: the agent principal %s is not in force yet; the resync retries", namespace, name, principal)
        ctx.unsynced.add(key)


async def resync(ctx: Context, namespace: str, name: str) -> None:
    """The safety net: the authority's state into the status, and a pending principal change retried."""
    if (namespace, name) in ctx.unsynced:
        body = await ctx.kube.get_budget(namespace, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            await sync_spec(ctx, body)
            return
    await reconcile(ctx, namespace, name)


async def delete(ctx: Context, body: Mapping[str, Any]) -> None:
    """The budget stops (its ledger stays for audit); a Deployment the operator paused comes back."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        await ctx.authority.delete_budget(decisions.budget_name(namespace, name), allow_missing=True)
    except RETRY_LATER as exc:
        raise _retry_later(exc) from exc
    ctx.principals.pop((namespace, name), None)
    ctx.unsynced.discard((namespace, name))
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
