"""The operator's settings, from the environment (the chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from agentbudget import credentials


@dataclass(frozen=True)
class OperatorConfig:
    # Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    authority: str = "127.0.0.1:50051"
    # TLS towards the authority: on with `tls`, or implied by a CA bundle (else the system roots
    # verify it); a client certificate and key add mTLS.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # The operator's own bearer token for the authority (a projected ServiceAccount token with
    # audience "agentbudget"), re-read when the kubelet rotates it. Empty: no token.
    token_file: str = ""
    # The name on the authority's certificate, when it is not the host of `authority`.
    server_name: str = ""
    # The safety net: every budget is re-read from the authority this often.
    resync_seconds: float = 30.0
    # An explicit API server (tests, or running outside the cluster with no kubeconfig).
    kube_url: str = ""
    liveness: str = "http://0.0.0.0:8080/healthz"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The agents' variables (AGENTBUDGET_TLS, _CA_FILE, _CERT_FILE, _KEY_FILE, _TOKEN_FILE,
        _SERVER_NAME) and, for the files, the operator's older AGENTBUDGET_AUTHORITY_TLS_CA / _CERT / _KEY."""
        env = os.environ if env is None else env
        get = env.get
        namespaces = tuple(n.strip() for n in get("AGENTBUDGET_OPERATOR_NAMESPACES", "").split(",") if n.strip())
        token_file = get("AGENTBUDGET_TOKEN_FILE")
        if token_file is None and os.path.exists(credentials.DEFAULT_TOKEN_FILE):
            token_file = credentials.DEFAULT_TOKEN_FILE
        return cls(
            namespaces=namespaces,
            authority=get("AGENTBUDGET_AUTHORITY", cls.authority),
            tls=credentials.env_flag(get("AGENTBUDGET_TLS", ""), "AGENTBUDGET_TLS"),
            tls_ca=get("AGENTBUDGET_CA_FILE") or get("AGENTBUDGET_AUTHORITY_TLS_CA", ""),
            tls_cert=get("AGENTBUDGET_CERT_FILE") or get("AGENTBUDGET_AUTHORITY_TLS_CERT", ""),
            tls_key=get("AGENTBUDGET_KEY_FILE") or get("AGENTBUDGET_AUTHORITY_TLS_KEY", ""),
            token_file=token_file or "",
            server_name=get("AGENTBUDGET_SERVER_NAME", ""),
            resync_seconds=float(get("AGENTBUDGET_OPERATOR_RESYNC_SECONDS", cls.resync_seconds)),
            kube_url=get("AGENTBUDGET_OPERATOR_KUBE_URL", ""),
            liveness=get("AGENTBUDGET_OPERATOR_LIVENESS", cls.liveness),
        )
