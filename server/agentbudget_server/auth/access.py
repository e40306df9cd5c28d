"""The authentication layer of one authority, configured from its settings.

Everything that can be wrong with the configuration (a missing certificate, a malformed keys or
roles file, an unreadable kubeconfig) fails in :meth:`Access.load`, before the authority starts
anything; the layer is made once the pool exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from ..settings import Settings
from . import apikeys, mode, roles, tls, tokenreview
from .agents import BudgetAgents
from .authenticate import Authenticator
from .gate import Gate
from .layer import AuthLayer
from .ratelimit import RateLimiter

log = logging.getLogger("agentbudget_server.auth")


@dataclass
class Access:
    mode: str
    credentials: grpc.ServerCredentials | None
    authenticator: Authenticator | None
    kube: Any = None  # the kubernetes ApiClient of the TokenReviews, closed with the authority

    @classmethod
    def load(cls, settings: Settings) -> Access:
        credentials = tls.server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        resolved = mode.resolve(settings.auth, settings.database_url)
        if resolved == mode.NONE:
            log.warning("%s", mode.banner(settings.auth, settings.listen))
            return cls(resolved, credentials, None)
        keys = apikeys.load(settings.api_keys_file)
        assigned = roles.load(settings.admin_principals, settings.roles_file)
        kube = tokenreview.api_client(settings.kube_config)
        reviewer = None
        if kube is None:
            log.warning("not in a Kubernetes cluster and no kube_config: service-account tokens are refused")
        else:
            reviewer = tokenreview.TokenReviewer(tokenreview.kube_review(kube), settings.token_cache_seconds)
        if kube is None and not len(keys):
            log.warning("authentication is required but no API keys and no Kubernetes: every call will be refused")
        if credentials is None:
            log.warning("bearer tokens travel in plaintext: configure tls_cert and tls_key outside a trusted network")
        log.info(
            "authentication required: %d API key(s), %d admin principal(s), %d assigned role(s), TokenReview %s%s",
            len(keys),
            len(assigned.admins),
            len(assigned.assigned),
            "on" if reviewer else "off",
            ", mTLS" if settings.tls_client_ca else (", TLS" if credentials else ""),
        )
        return cls(resolved, credentials, Authenticator(keys, reviewer, assigned), kube)

    def layer(self, settings: Settings, pool: asyncpg.Pool) -> AuthLayer:
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        return AuthLayer(Gate(self.authenticator, limiter, BudgetAgents(pool)))

    def close(self) -> None:
        if self.kube is not None:
            self.kube.close()
