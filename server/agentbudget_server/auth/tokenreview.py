"""Kubernetes service-account tokens, validated by the API server's TokenReview, behind a short cache.

An agent sends its projected service-account token (audience ``agentbudget``). The authority
asks the API server (``authentication.k8s.io/v1`` TokenReview with ``spec.audiences =
["agentbudget"]``) whether it is valid; the principal is the reviewed ``user.username``
(``system:serviceaccount:<namespace>:<name>``). An API server that does not echo the audience in
``status.audiences`` is not trusted to have checked it: the token is refused.

Answers are cached by the token's SHA-256: a valid token for ``token_cache_seconds`` (30) or until
the ``exp`` of its JWT payload if sooner (read without verification: it can only shorten the
time), an invalid one for a few seconds. The authority's own service account needs the right to
create TokenReviews (the ``system:auth-delegator`` ClusterRole).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kubernetes

from .cache import TtlCache
from .errors import AuthenticationUnavailable, CredentialsInvalid

log = logging.getLogger(__name__)
AUDIENCE = "agentbudget"
NEGATIVE_SECONDS = 5.0
CACHE_SIZE = 10_000
REVIEW_TIMEOUT = 5.0
# TokenReviews in flight at once per replica: a flood of unknown tokens queues here instead of
# hitting the API server (and the thread pool) all at once.
REVIEW_CONCURRENCY = 8

# A TokenReview body in, the answered TokenReview (a dict) out; raises AuthenticationUnavailable.
Review = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT's payload (Unix seconds), unverified; None if there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def positive_ttl(now: float, expiry: float | None, cache_seconds: float) -> float:
    """How long a valid token's review may be reused: the cache time, never past the token's expiry."""
    return cache_seconds if expiry is None else min(cache_seconds, expiry - now)


def review_body(token: str, audience: str = AUDIENCE) -> dict[str, Any]:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }


def reviewed_user(review: dict[str, Any], audience: str = AUDIENCE) -> str | None:
    """The username of an answered TokenReview if the token is valid for ``audience``, else None."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        return None
    if audience not in (status.get("audiences") or ()):
        return None
    username = (status.get("user") or {}).get("username")
    return username if isinstance(username, str) and username else None


class TokenReviewer:
    """Who a token belongs to, from the API server, cached."""

    def __init__(
        self,
        review: Review,
        cache_seconds: float,
        audience: str = AUDIENCE,
        wall_clock: Callable[[], float] = time.time,
        cache: TtlCache[bytes, str | None] | None = None,
    ) -> None:
        self.review = review
        self.cache_seconds = cache_seconds
        self.audience = audience
        self.wall_clock = wall_clock
        self.cache: TtlCache[bytes, str | None] = TtlCache(CACHE_SIZE) if cache is None else cache

    async def username(self, token: str) -> str:
        key = hashlib.sha256(token.encode("utf-8")).digest()  # the cache holds no token in clear
        user = await self.cache.get_or_load(key, lambda: self._review(token))
        if user is None:
            raise CredentialsInvalid()
        return user

    async def _review(self, token: str) -> tuple[str | None, float]:
        now = self.wall_clock()
        expiry = jwt_expiry(token)
        if expiry is not None and expiry <= now:
            log.debug("refused an expired token")
            return None, NEGATIVE_SECONDS
        user = reviewed_user(await self.review(review_body(token, self.audience)), self.audience)
        if user is None:
            log.debug("TokenReview refused a token")
            return None, NEGATIVE_SECONDS
        return user, positive_ttl(now, expiry, self.cache_seconds)


def api_client(kube_config: str) -> kubernetes.client.ApiClient | None:
    """A client for the kubeconfig at ``kube_config``, or in-cluster when it is "" (None outside a cluster)."""
    if kube_config:
        client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(config_file=kube_config)  # type: ignore[no-untyped-call]
        return client
    configuration = kubernetes.client.Configuration()
    try:
        # Refreshes the projected token the authority itself runs with as the kubelet rotates it.
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        return None
    return kubernetes.client.ApiClient(configuration)


def kube_review(client: kubernetes.client.ApiClient) -> Review:
    """TokenReviews through the (blocking) ``kubernetes`` client, in a worker thread."""
    # Typed for a V1TokenReview; a plain dict is sent as it is.
    create: Any = kubernetes.client.AuthenticationV1Api(client).create_token_review

    def call(body: dict[str, Any]) -> dict[str, Any]:
        # Unparsed: a parsed answer would be kept in a model that repeats the token.
        resp = create(body, _preload_content=False, _request_timeout=REVIEW_TIMEOUT)
        answer: dict[str, Any] = json.loads(resp.data)
        return answer

    slots = asyncio.Semaphore(REVIEW_CONCURRENCY)

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with slots:
                return await asyncio.to_thread(call, body)
        except kubernetes.client.ApiException as exc:
            hint = " (the authority needs the system:auth-delegator ClusterRole)" if exc.status in (401, 403) else ""
            log.warning("TokenReview failed: HTTP %s %s%s", exc.status, exc.reason, hint)
        except Exception as exc:  # the API server unreachable, a timeout, an answer that is not JSON
            log.warning("TokenReview failed: %s: %s", type(exc).__name__, exc)
        raise AuthenticationUnavailable("cannot check the token with the Kubernetes API server now; retry")

    return review
