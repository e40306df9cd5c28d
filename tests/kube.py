"""An emulated Kubernetes API for running the real kopf operator in-process in tests.

Two pieces, each a context manager, each with its own thread and event loop (so tests can be
plain sync functions and can call the blocking ``kubernetes`` client freely):

* :class:`KubeEmulator` serves a stateful Kubernetes API (kmock's emulator, made to behave
  enough like a real API server for kopf) on ``127.0.0.1`` and a random port, and offers
  kubectl-like helpers that act on its state directly (they are not in the request log).
* :class:`OperatorRunner` runs ``kopf.operator()`` against it, as kopf's "embedding" docs
  advise: in a thread of its own, since kopf cancels every task of its loop when it stops.

Usage::

    @pytest.fixture
    def kube() -> Iterator[KubeEmulator]:
        with KubeEmulator() as kube:
            yield kube

    def test_it(kube: KubeEmulator) -> None:
        with OperatorRunner(kube, registry):
            kube.create(AGENTBUDGETS, {"metadata": {"name": "ab1"}, "spec": {}})
            eventually(lambda: kube.get(AGENTBUDGETS, "ab1")["status"]["phase"] == "Active")
        assert not kube.requests("PATCH", DEPLOYMENTS)  # nothing sent to any Deployment

Not emulated: PUT (replace), collection DELETE, label/field selectors, strategic-merge list
semantics (treated as a JSON merge patch), schema validation, namespace existence, and
``timeoutSeconds`` on watches; kmock also cannot parse ``/api/v1/namespaces`` URLs, so
operators must run cluster-wide or with explicit namespace names (both work).
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import copy
import dataclasses
import datetime
import secrets
import threading
import time
import types
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from typing import Any, Self, TypeVar

import aiohttp.web
import crd
import jsonpatch
import jsonpointer
import kmock
import kopf
import kubernetes.client

T = TypeVar("T")
Body = dict[str, Any]

AGENTBUDGETS = crd.resource()  # from the chart's CRD file
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
EVENTS = kmock.resource("", "v1", "events")
EVENTS_K8S = kmock.resource("events.k8s.io", "v1", "events")
NAMESPACES = kmock.resource("", "v1", "namespaces")

_VERBS = {"create", "delete", "get", "list", "patch", "watch"}
_NON_SPEC_PARTS = ("metadata", "status")  # changes elsewhere bump metadata.generation


def default_resources() -> dict[kmock.resource, kmock.ResourceInfo]:
    """The resources the emulator serves unless told otherwise (fresh objects: they are mutable)."""

    def info(kind: str, namespaced: bool, **kwargs: Any) -> kmock.ResourceInfo:
        return kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=_VERBS, **kwargs)

    return {
        AGENTBUDGETS: crd.resource_info(_VERBS),
        DEPLOYMENTS: info("Deployment", True, shortnames={"deploy"}, subresources={"status", "scale"}),
        EVENTS: info("Event", True, shortnames={"ev"}),
        EVENTS_K8S: info("Event", True, shortnames={"ev"}),
        NAMESPACES: info("Namespace", False, shortnames={"ns"}, subresources={"status"}),
    }


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _apply_patch(body: Body, patch: Any, *, json_patch: bool) -> Body:
    if json_patch:
        if not isinstance(patch, list):
            raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(body, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            # A failed "test" op is how kopf detects a stale resourceVersion: 422, like the real API.
            raise _error(422, "Invalid", f"the JSON patch cannot be applied: {e}") from None
    else:
        if not isinstance(patch, dict):
            raise _error(400, "BadRequest", "a merge patch must be a JSON object")
        result = _merge_patch(copy.deepcopy(body), patch)  # deep: the result must not share dicts with body
    if not isinstance(result, dict):
        raise _error(422, "Invalid", "the patched object is not an object")
    return result


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the semantics kopf relies on (see the module's and methods' notes).

    All state changes go through ``_create``/``_update``/``_delete`` under ``self._lock``;
    every change gets the next global resourceVersion and is appended to a change log,
    from which watch-streams are served (so a watch from a resourceVersion loses nothing).
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = 0
        self._log: list[tuple[int, kmock.resource, Body]] = []  # (resourceVersion, resource, event)
        self._changed = asyncio.Condition(self._lock)
        self._closing = False

    async def close_watches(self) -> None:
        async with self._changed:
            self._closing = True
            self._changed.notify_all()

    # The request path: bypass kmock's own state-keeping in KubernetesEmulator._handle(),
    # but keep user-defined kmock reactions (e.g. ``handler['patch', DEPLOYMENTS] << 500``) working.
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        return await kmock.KubernetesScaffold._handle(self, request)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        resource, info = self._resource(request)
        async with self._lock:
            items = [
                copy.deepcopy(obj.raw)
                for (res, ns, _), obj in self._objects.items()
                if res == resource and not obj.deleted and request.namespace in (None, ns)
            ]
            return {
                "apiVersion": _api_version(resource),
                "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        resource, _ = self._resource(request)
        yield b""  # send the headers now
        since = request.params.get("resourceVersion", "")
        initial: list[Body]
        async with self._lock:
            if since.isdigit() and since != "0":  # continue from that point: replay what followed it
                initial, cursor = [], bisect.bisect_right(self._log, int(since), key=lambda entry: entry[0])
            else:  # "start at most recent": synthetic ADDED events for what exists now, then changes
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(obj.raw)}
                    for (res, ns, _), obj in self._objects.items()
                    if res == resource and not obj.deleted and request.namespace in (None, ns)
                ]
                cursor = len(self._log)
        for event in initial:
            yield event
        while True:
            async with self._changed:
                while not self._closing and cursor >= len(self._log):
                    await self._changed.wait()
                if self._closing:
                    return
                batch, cursor = self._log[cursor:], len(self._log)
            for _, res, event in batch:
                if res == resource and request.namespace in (None, event["object"]["metadata"].get("namespace")):
                    yield event

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._resource(request)
        assert request.name is not None  # FETCH is only guessed for URLs with a name
        async with self._lock:
            body = self._current(resource, request.namespace, request.name)
        if request.subresource == "scale" and self._has(resource, "scale"):
            return self._scale_of(body)
        if request.subresource not in (None, "status") or not self._has(resource, request.subresource or ""):
            raise _error(404, "NotFound", f"no such subresource: {request.subresource}")
        return body

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._resource(request)
        if request.subresource is not None or not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "expected an object to create")
        async with self._lock:
            return self._create(resource, request.namespace, request.data)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._resource(request)
        assert request.name is not None  # UPDATE is only guessed for URLs with a name
        content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        if "apply-patch" in content_type:
            raise _error(415, "UnsupportedMediaType", "server-side apply is not emulated")
        async with self._lock:
            return self._update(
                resource,
                request.namespace,
                request.name,
                request.data,
                subresource=request.subresource,
                json_patch="json-patch" in content_type,
            )

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._resource(request)
        assert request.name is not None  # DELETE is only guessed for URLs with a name
        async with self._lock:
            return self._delete(resource, request.namespace, request.name)

    # The state changes; callers hold self._lock.
    def _create(self, resource: kmock.resource, namespace: str | None, data: Body) -> Body:
        info = self.resources[resource]
        body = copy.deepcopy(data)
        meta = body.setdefault("metadata", {})
        if info.namespaced:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise _error(422, "Invalid", "metadata.namespace is required")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name or metadata.generateName is required")
        key = (resource, namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise _error(409, "AlreadyExists", f"{resource.plural} {meta['name']!r} already exists")
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        body.setdefault("apiVersion", _api_version(resource))
        body.setdefault("kind", info.kind)
        if "status" in info.subresources:
            body.pop("status", None)  # as the real API: status is written only via /status
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._validate(resource, body)
        return self._store("ADDED", resource, body)

    def _update(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        json_patch: bool = False,
    ) -> Body:
        old = self._current(resource, namespace, name)
        if subresource == "scale" and self._has(resource, "scale"):
            scale = _apply_patch(self._scale_of(old), patch, json_patch=json_patch)
            replicas = scale.get("spec", {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise _error(422, "Invalid", f"spec.replicas must be a non-negative integer, got {replicas!r}")
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["replicas"] = replicas  # the only field a Scale writes
        elif subresource == "status" and self._has(resource, "status"):
            new = copy.deepcopy(old)  # the real API ignores everything but .status here
            new.pop("status", None)
            patched = _apply_patch(old, patch, json_patch=json_patch)
            if "status" in patched:
                new["status"] = patched["status"]
        elif subresource is None:
            new = _apply_patch(old, patch, json_patch=json_patch)
            if self._has(resource, "status"):  # the real API ignores .status here
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        else:
            raise _error(404, "NotFound", f"no such subresource: {subresource}")

        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        if meta.get("resourceVersion") not in (None, old_meta["resourceVersion"]):
            raise _error(409, "Conflict", "the object has been modified; apply your changes to the latest version")
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            meta.pop(field, None)
            if field in old_meta:
                meta[field] = old_meta[field]
        self._validate(resource, new)
        if new == old:
            # A no-op write changes nothing: no new resourceVersion, no watch event.
            return self._scale_of(old) if subresource == "scale" else old
        if {k: v for k, v in new.items() if k not in _NON_SPEC_PARTS} != {
            k: v for k, v in old.items() if k not in _NON_SPEC_PARTS
        }:
            meta["generation"] = old_meta.get("generation", 0) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            stored = self._store("DELETED", resource, new)  # the last finalizer is gone
        else:
            stored = self._store("MODIFIED", resource, new)
        return self._scale_of(stored) if subresource == "scale" else stored

    @staticmethod
    def _validate(resource: kmock.resource, body: Body) -> None:
        """AgentBudgets are checked against the CRD's schema, as the API server would."""
        if resource == AGENTBUDGETS:
            problems = crd.errors(body)
            if problems:
                raise _error(422, "Invalid", "; ".join(problems))

    def _delete(self, resource: kmock.resource, namespace: str | None, name: str) -> Body:
        body = self._current(resource, namespace, name)
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return body  # already being deleted, waiting for its finalizers
        if meta.get("finalizers"):
            meta.update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            return self._store("MODIFIED", resource, body)
        return self._store("DELETED", resource, body)

    def _store(self, event_type: str, resource: kmock.resource, body: Body) -> Body:
        meta = body["metadata"]
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        key = (resource, meta.get("namespace"), meta["name"])
        if key not in self._objects:
            self._objects[key] = copy.deepcopy(body)
        elif self._objects[key].deleted:
            self._objects[key].create(copy.deepcopy(body))
        else:
            self._objects[key].history.append(copy.deepcopy(body))
        if event_type == "DELETED":
            self._objects[key].delete()  # soft: the history stays available for assertions
        self._log.append((self._rv, resource, {"type": event_type, "object": copy.deepcopy(body)}))
        self._changed.notify_all()
        return copy.deepcopy(body)

    # Lookups.
    def _resource(self, request: kmock.Request) -> tuple[kmock.resource, kmock.ResourceInfo]:
        resource = request.resource
        if resource is None or resource not in self.resources:
            raise _error(404, "NotFound", f"the server could not find the requested resource: {request.url.path}")
        return resource, self.resources[resource]

    def _has(self, resource: kmock.resource, subresource: str) -> bool:
        return subresource == "" or subresource in self.resources[resource].subresources

    def _current(self, resource: kmock.resource, namespace: str | None, name: str) -> Body:
        namespace = namespace if self.resources[resource].namespaced else None
        key = (resource, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            raise _error(404, "NotFound", f"{resource.plural} {name!r} not found")
        return copy.deepcopy(self._objects[key].raw)

    @staticmethod
    def _scale_of(body: Body) -> Body:
        meta = body["metadata"]
        labels = body.get("spec", {}).get("selector", {}).get("matchLabels", {})
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": body.get("spec", {}).get("replicas", 1)},
            "status": {
                "replicas": body.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            },
        }


@dataclasses.dataclass(frozen=True)
class Call:
    """One HTTP request as the emulator received it."""

    method: str
    path: str
    params: dict[str, str]
    body: Any  # parsed JSON, if any
    resource: kmock.resource | None
    namespace: str | None
    name: str | None
    subresource: str | None
    user_agent: str


class KubeEmulator:
    """A stateful Kubernetes API on 127.0.0.1 (random port), running in a background thread.

    The helpers act like a human with kubectl: they go through the same semantics as API calls
    (resourceVersions, generation, finalizers, watch events) but are not in :meth:`requests`.
    Failures raise :class:`kmock.KubernetesError` (``.status`` is the HTTP code).
    For a namespaced resource, ``namespace`` defaults to ``"default"``; it is ignored otherwise.
    """

    def __init__(self, resources: dict[kmock.resource, kmock.ResourceInfo] | None = None) -> None:
        self._resources = default_resources() if resources is None else resources
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-emulator", daemon=True)
        self._handler: _Emulator | None = None
        self._server: kmock.Server | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._run(self._start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _start(self) -> None:
        self._handler = _Emulator()
        for resource, info in self._resources.items():
            self._handler.resources[resource] = info
        await self._handler.__aenter__()
        self._server = kmock.Server(self._handler)
        await self._server.__aenter__()

    async def _stop(self) -> None:
        if self._handler is not None:
            await self._handler.close_watches()
        if self._server is not None:
            await self._server.__aexit__(None, None, None)
        if self._handler is not None:
            await self._handler.__aexit__(None, None, None)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def handler(self) -> _Emulator:
        """The kmock handler itself: for ``handler.objects[...]`` history or ``handler[...] << reaction``."""
        if self._handler is None:
            raise RuntimeError("The emulator is not running.")
        return self._handler

    @property
    def url(self) -> str:
        return str(self.handler.url).rstrip("/")

    def _ns(self, resource: kmock.resource, namespace: str | None) -> str | None:
        return (namespace or "default") if self.handler.resources[resource].namespaced else None

    async def _locked(self, fn: Callable[[], T]) -> T:
        async with self.handler._lock:
            return fn()

    def create(self, resource: kmock.resource, body: Body, namespace: str | None = None) -> Body:
        ns = self._ns(resource, namespace or body.get("metadata", {}).get("namespace"))
        return self._run(self._locked(lambda: self.handler._create(resource, ns, body)))

    def get(self, resource: kmock.resource, name: str, namespace: str | None = None) -> Body | None:
        """The object, or None if it does not exist."""
        try:
            return self._run(self._locked(lambda: self.handler._current(resource, self._ns(resource, namespace), name)))
        except kmock.KubernetesError as e:
            if e.status == 404:
                return None
            raise

    def objects(self, resource: kmock.resource, namespace: str | None = None) -> list[Body]:
        """All objects of the resource (in every namespace unless one is given)."""

        def collect() -> list[Body]:
            return [
                copy.deepcopy(obj.raw)
                for (res, ns, _), obj in self.handler.objects.items()
                if res == resource and not obj.deleted and namespace in (None, ns)
            ]

        return self._run(self._locked(collect))

    def patch(
        self,
        resource: kmock.resource,
        name: str,
        patch: Body | list[Body],
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Body:
        """A JSON merge patch (a dict) or a JSON patch (a list of operations); subresource "status"/"scale"."""
        ns = self._ns(resource, namespace)
        return self._run(
            self._locked(
                lambda: self.handler._update(
                    resource, ns, name, patch, subresource=subresource, json_patch=isinstance(patch, list)
                )
            )
        )

    def delete(self, resource: kmock.resource, name: str, namespace: str | None = None) -> Body:
        """Delete now, or (with finalizers) mark for deletion; returns the last state."""
        return self._run(self._locked(lambda: self.handler._delete(resource, self._ns(resource, namespace), name)))

    def requests(
        self, method: str | None = None, resource: kmock.resource | None = None, name: str | None = None
    ) -> list[Call]:
        """The HTTP requests received so far (discovery included), oldest first, optionally filtered."""

        def collect() -> list[Call]:
            return [
                Call(
                    method=str(r.method.value).upper(),
                    path=r.url.path,
                    params=dict(r.params),
                    body=r.data,
                    resource=r.resource,
                    namespace=r.namespace,
                    name=r.name,
                    subresource=r.subresource,
                    user_agent=next((v for k, v in r.headers.items() if k.lower() == "user-agent"), ""),
                )
                for r in self.handler
            ]

        return [
            c
            for c in self._run(self._locked(collect))
            if (method is None or c.method == method.upper())
            and (resource is None or c.resource == resource)
            and (name is None or c.name == name)
        ]

    def events(self, about: str | None = None) -> list[Body]:
        """Events posted (core v1 and events.k8s.io/v1), optionally only those about the named object."""
        events = self.objects(EVENTS) + self.objects(EVENTS_K8S)
        return [
            e
            for e in events
            if about is None or (e.get("involvedObject") or e.get("regarding") or {}).get("name") == about
        ]

    def client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client for this emulator (close it, or use ``with``)."""
        return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.url))


def eventually(check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    An exception (a failed assert, a KeyError on a field not there yet) counts as "not yet";
    at the deadline, the last one is chained to the AssertionError raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: Exception | None = None
        try:
            result = check()
        except Exception as e:
            failure, result = e, None
        if result and failure is None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what or check!r} (last: {result!r})") from failure
        time.sleep(interval)


def operator_settings() -> kopf.OperatorSettings:
    """Settings for tests: quick retries and exits, no peering, no CRD/namespace scanning."""
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.scanning.disabled = True  # no CRD watching; discovery still runs once at startup
    settings.process.ultimate_exiting_timeout = None  # never SIGKILL the test process
    settings.execution.default_backoff = 0.5
    settings.networking.error_backoffs = (0.1, 0.2, 0.5)
    settings.networking.request_timeout = 10.0
    settings.queueing.exit_timeout = 1.0
    settings.persistence.consistency_timeout = 2.0
    return settings


# The operator thread's emulator URL, read by the login handler added to each registry run here.
_emulator_url: contextvars.ContextVar[str] = contextvars.ContextVar("kube_emulator_url")
_logged_in_registries: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


async def _login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
    # Highest priority: it wins over any login handlers of the operator itself.
    return kopf.ConnectionInfo(server=_emulator_url.get(), default_namespace="default", priority=1_000_000)


class OperatorRunner:
    """Run ``kopf.operator()`` against a :class:`KubeEmulator` in a thread, for a ``with`` block.

    ``registry`` is a :class:`kopf.OperatorRegistry`, or a module whose import registered its
    handlers (its ``registry`` attribute if it has one, else kopf's default registry), or None
    (the default registry). A login handler for the emulator is added to it (once; harmless).
    Cluster-wide unless ``namespaces`` are given. Entering waits for the startup handlers;
    exiting stops the operator and re-raises its failure, if any.
    """

    def __init__(
        self,
        kube: KubeEmulator,
        registry: kopf.OperatorRegistry | types.ModuleType | None = None,
        *,
        settings: kopf.OperatorSettings | None = None,
        namespaces: Collection[str] = (),
        memo: object | None = None,
        timeout: float = 10.0,
    ) -> None:
        if isinstance(registry, types.ModuleType):
            registry = getattr(registry, "registry", None)
        self.registry = registry if isinstance(registry, kopf.OperatorRegistry) else kopf.get_default_registry()
        self.settings = settings if settings is not None else operator_settings()
        self._kube, self._namespaces, self._memo, self._timeout = kube, namespaces, memo, timeout
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._target, name="kopf-operator", daemon=True)
        self._error: BaseException | None = None
        if self.registry not in _logged_in_registries:
            kopf.on.login(registry=self.registry, id="kube-emulator-login")(_login_to_emulator)
            _logged_in_registries.add(self.registry)

    def _target(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e

    async def _main(self) -> None:
        _emulator_url.set(self._kube.url)  # inherited by every task the operator spawns
        await kopf.operator(
            registry=self.registry,
            settings=self.settings,
            memo=self._memo,
            standalone=True,
            clusterwide=not self._namespaces,
            namespaces=self._namespaces,
            ready_flag=self._ready,
            stop_flag=self._stop,
        )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._ready.wait(0.02):
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                self._shutdown()
                raise RuntimeError("The operator did not start.") from self._error
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._shutdown()
        if self._error is not None and exc_type is None:
            raise self._error

    def _shutdown(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            raise RuntimeError("The operator did not stop.")
