"""TLS for the gRPC port from PEM files: a certificate and key, and with a client CA, mTLS."""

from __future__ import annotations

from pathlib import Path

import grpc


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """None without a certificate (plaintext). With ``client_ca`` every client must present a
    certificate that CA signed; the handshake fails otherwise, before any call."""
    if not cert:
        return None
    chain, private_key = _read(cert, "certificate"), _read(key, "key")
    roots = _read(client_ca, "client CA") if client_ca else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
