"""How a client proves who it is to the authority: TLS (a CA bundle or the system roots, and a
client certificate for mTLS) and a bearer token on every call.

The token comes from a string or from a file. A file is what Kubernetes gives a pod (a projected
ServiceAccount token, rotated by the kubelet before it expires), so it is re-read when it changes.
Tokens are never logged, and never part of a ``repr``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

log = logging.getLogger("agentbudget.client")

DEFAULT_TARGET = "127.0.0.1:50051"
# Where the operator's injected projected token (and the documented manual volume) puts it.
DEFAULT_TOKEN_FILE = "/var/run/secrets/agentbudget.io/token"
# A changed file (inode, size or mtime) is re-read at once; an unchanged one every few seconds
# anyway, in case it was rewritten in place within the mtime's granularity.
TOKEN_REREAD_SECONDS = 5.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_flag(value: str, name: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be 1 or 0 (true/false), got {value!r}")


class TokenSource:
    """The current bearer token: a fixed string, or the content of a file re-read when it changes.

    An unreadable or empty file means no token (the authority then answers CREDENTIALS_MISSING);
    a token already read is kept while the file is briefly missing, as during a rotation.
    """

    def __init__(
        self,
        token: str | None = None,
        token_file: str | None = None,
        *,
        reread_seconds: float = TOKEN_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token and token_file:
            raise ValueError("give a token or a token file, not both")
        self._fixed = token.strip() if token else None
        self.path = token_file or None
        self._reread = reread_seconds
        self._clock = clock
        self._lock = threading.Lock()  # the interceptor runs on the event loop, tests may call from threads
        self._token = ""
        self._seen: tuple[int, int, int] | None = None
        self._read_at = float("-inf")
        self._failing = False

    def __repr__(self) -> str:
        kind = f"file={self.path!r}" if self.path else ("fixed" if self._fixed else "none")
        return f"TokenSource({kind})"

    def __bool__(self) -> bool:
        return bool(self._fixed or self.path)

    def current(self) -> str:
        if self._fixed is not None or self.path is None:
            return self._fixed or ""
        with self._lock:
            try:
                st = os.stat(self.path)
                seen = (st.st_ino, st.st_size, st.st_mtime_ns)
                if seen != self._seen or self._clock() - self._read_at >= self._reread:
                    with open(self.path, encoding="utf-8") as f:
                        self._token = f.read().strip()
                    self._seen, self._read_at = seen, self._clock()
                    if self._failing:
                        log.info("token file %s readable again", self.path)
                        self._failing = False
            except (OSError, UnicodeDecodeError) as exc:
                if not self._failing:  # once per outage, and never the token itself
                    log.warning("cannot read the token file %s: %s", self.path, exc.__class__.__name__)
                    self._failing = True
            return self._token


if TYPE_CHECKING:  # generic in the stubs only
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _Bearer:
    """Adds ``authorization: Bearer <token>`` to a call, over TLS or plaintext alike.

    Interceptors rather than call credentials: gRPC refuses call credentials on a plaintext
    channel, and plaintext to a sidecar proxy that does the TLS (a service mesh) is a real setup.
    """

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        token = self.source.current()
        if not token:
            return details
        metadata = grpc.aio.Metadata(*[(k, v) for k, v in (details.metadata or ()) if k != "authorization"])
        metadata.add("authorization", f"Bearer {token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under one kind of call only: one class per kind.
class _UnaryUnaryBearer(_Bearer, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStreamBearer(_Bearer, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _StreamUnaryBearer(_Bearer, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


class _StreamStreamBearer(_Bearer, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


def bearer_interceptors(source: TokenSource) -> list[Any]:
    """The interceptors that send ``source``'s token on every call, of every kind."""
    return [kind(source) for kind in (_UnaryUnaryBearer, _UnaryStreamBearer, _StreamUnaryBearer, _StreamStreamBearer)]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def channel_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """TLS verified against ``ca_file`` (else the system roots), with a client certificate for mTLS."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both a certificate file and a key file")
    root = _read(ca_file, "CA file") if ca_file else None
    key = _read(key_file, "client key file") if key_file else None
    cert = _read(cert_file, "client certificate file") if cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)


def is_loopback(target: str) -> bool:
    """Whether ``target`` (host:port, a gRPC URI or unix:) stays on this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.split("///", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ConnectionOptions:
    """Everything ``connect()`` needs beyond the target; ``from_env`` reads the agents' defaults."""

    tls: bool | None = None  # None: TLS if a CA file or a client certificate is given
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    server_name: str | None = None

    def __repr__(self) -> str:  # the dataclass one would show the token
        token = "<set>" if self.token else None
        return (
            f"ConnectionOptions(tls={self.tls}, ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, "
            f"key_file={self.key_file!r}, token={token}, token_file={self.token_file!r}, "
            f"server_name={self.server_name!r})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectionOptions:
        """AGENTBUDGET_TLS, _CA_FILE, _CERT_FILE, _KEY_FILE, _TOKEN, _TOKEN_FILE, _SERVER_NAME.

        With neither AGENTBUDGET_TOKEN nor AGENTBUDGET_TOKEN_FILE set, the token file is
        ``DEFAULT_TOKEN_FILE`` if it exists; AGENTBUDGET_TOKEN_FILE set empty turns that off.
        """
        env = os.environ if env is None else env
        token = env.get("AGENTBUDGET_TOKEN") or None
        token_file = env.get("AGENTBUDGET_TOKEN_FILE")
        if token_file is None and token is None and os.path.exists(DEFAULT_TOKEN_FILE):
            token_file = DEFAULT_TOKEN_FILE
        tls = env.get("AGENTBUDGET_TLS", "")
        return cls(
            tls=env_flag(tls, "AGENTBUDGET_TLS") if tls.strip() else None,
            ca_file=env.get("AGENTBUDGET_CA_FILE") or None,
            cert_file=env.get("AGENTBUDGET_CERT_FILE") or None,
            key_file=env.get("AGENTBUDGET_KEY_FILE") or None,
            token=token,
            token_file=token_file or None,
            server_name=env.get("AGENTBUDGET_SERVER_NAME") or None,
        )

    @property
    def uses_tls(self) -> bool:
        """A CA bundle or a client certificate only make sense over TLS, so they turn it on."""
        files = bool(self.ca_file or self.cert_file or self.key_file)
        if self.tls is False and files:
            raise ValueError("TLS is off, yet a CA file or a client certificate is given")
        return files if self.tls is None else self.tls
