"""The few Kubernetes calls the operator makes itself (kopf makes the rest), as plain dicts.

The ``kubernetes`` client is synchronous; every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes

GROUP, VERSION, PLURAL = "agentbudget.io", "v1alpha1", "agentbudgets"


def api_client(kube_url: str) -> kubernetes.client.ApiClient:
    """A client for ``kube_url`` if given, else in-cluster, else the local kubeconfig."""
    if kube_url:
        configuration = kubernetes.client.Configuration(host=kube_url)
        return kubernetes.client.ApiClient(configuration)
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


class Conflict(Exception):
    """409: the object changed since the version a patch was computed from."""


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.apps = kubernetes.client.AppsV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    @staticmethod
    async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                resp = fn(*args, _preload_content=False, **kwargs)
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status == 409:
                    raise Conflict(exc.reason) from None
                raise
            return json.loads(resp.data)

        return await asyncio.to_thread(run)

    async def get_budget(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
        return result

    async def patch_budget_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
        )

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call(self.apps.read_namespaced_deployment, name, namespace)
        return result

    async def patch_deployment(self, namespace: str, name: str, patch: dict[str, Any], *, merge: bool = False) -> None:
        """A strategic merge patch, or with ``merge`` a JSON merge patch: its lists replace the object's
        whole (the same on every API server, and in the tests' emulated one)."""
        if merge:
            await self._call(
                self.apps.patch_namespaced_deployment,
                name,
                namespace,
                patch,
                _content_type="application/merge-patch+json",
            )
        else:
            await self._call(self.apps.patch_namespaced_deployment, name, namespace, patch)

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Through the scale subresource, as an autoscaler would: only the replica count changes."""
        await self._call(self.apps.patch_namespaced_deployment_scale, name, namespace, {"spec": {"replicas": replicas}})
