"""The operator's settings, from the environment (the chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    authority: str = "127.0.0.1:50051"
    # TLS towards the authority: a CA bundle turns it on; a client certificate and key add mTLS.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # The safety net: every budget is re-read from the authority this often.
    resync_seconds: float = 30.0
    # An explicit API server (tests, or running outside the cluster with no kubeconfig).
    kube_url: str = ""
    liveness: str = "http://0.0.0.0:8080/healthz"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        get = env.get
        namespaces = tuple(n.strip() for n in get("AGENTBUDGET_OPERATOR_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=namespaces,
            authority=get("AGENTBUDGET_AUTHORITY", cls.authority),
            tls_ca=get("AGENTBUDGET_AUTHORITY_TLS_CA", ""),
            tls_cert=get("AGENTBUDGET_AUTHORITY_TLS_CERT", ""),
            tls_key=get("AGENTBUDGET_AUTHORITY_TLS_KEY", ""),
            resync_seconds=float(get("AGENTBUDGET_OPERATOR_RESYNC_SECONDS", cls.resync_seconds)),
            kube_url=get("AGENTBUDGET_OPERATOR_KUBE_URL", ""),
            liveness=get("AGENTBUDGET_OPERATOR_LIVENESS", cls.liveness),
        )
