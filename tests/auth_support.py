"""Helpers of the authentication tests: an emulated TokenReview API, certificates, keys, tokens.

* :class:`TokenReviews` answers ``POST /apis/authentication.k8s.io/v1/tokenreviews`` like a
  Kubernetes API server: a token it was told about is authenticated for its audiences (the
  intersection with the requested ones, echoed in ``status.audiences``), any other is not; the
  caller must present the authority's own token. It counts the reviews it answered.
* :func:`make_pki` makes a CA, a server certificate for 127.0.0.1 / localhost and a client
  certificate with the ``openssl`` command, plus a second, unrelated CA with its own.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from agentbudget_server.auth import apikeys
from aiohttp import web

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
AUTHORITY_TOKEN = "the-authoritys-own-service-account-token"


def jwt(subject: str, exp: float | None = None, audience: str = "agentbudget") -> str:
    """A JWT-shaped token (unsigned: only the emulated API server decides whether it is valid)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims: dict[str, Any] = {"sub": subject, "aud": [audience], "iat": int(time.time())}
    if exp is not None:
        claims["exp"] = int(exp)
    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass
class Identity:
    username: str
    audiences: tuple[str, ...] = ("agentbudget",)
    echo_audiences: bool = True  # False: an API server that ignores spec.audiences


@dataclass
class TokenReviews:
    tokens: dict[str, Identity] = field(default_factory=dict)
    reviewed: list[str] = field(default_factory=list)  # usernames (or "") of the reviews answered
    down: bool = False  # answer 503, as an API server that is unavailable
    _runner: web.AppRunner | None = None
    port: int = 0

    def add(self, token: str, username: str, **kwargs: Any) -> str:
        self.tokens[token] = Identity(username, **kwargs)
        return token

    async def _review(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {AUTHORITY_TOKEN}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        if self.down:
            return web.json_response({"kind": "Status", "code": 503, "reason": "ServiceUnavailable"}, status=503)
        body = await request.json()
        spec = body.get("spec", {})
        identity = self.tokens.get(spec.get("token", ""))
        self.reviewed.append(identity.username if identity else "")
        wanted = spec.get("audiences") or []
        status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        if identity is not None:
            common = [a for a in wanted if a in identity.audiences] if wanted else list(identity.audiences)
            if not identity.echo_audiences:
                status = {"authenticated": True, "user": {"username": identity.username}}
            elif common:
                status = {"authenticated": True, "user": {"username": identity.username}, "audiences": common}
            else:
                status = {"authenticated": False, "error": "token audiences are invalid for the target audiences"}
        answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec, "status": status}
        return web.json_response(answer, status=201)

    async def start(self) -> TokenReviews:
        app = web.Application()
        app.router.add_post(REVIEW_PATH, self._review)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "authority", "user": {"token": AUTHORITY_TOKEN}}],
            "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "authority"}}],
            "current-context": "emulated",
        }
        path.write_text(yaml.safe_dump(config))
        return path


def keys_file(path: Path, keys: dict[str, tuple[str, list[str]]]) -> dict[str, str]:
    """Write a keys file for ``{name: (role, scope)}``; returns each name's new key."""
    made = {name: apikeys.new_key() for name in keys}
    entries = [apikeys.entry(name, role, scope, made[name]) for name, (role, scope) in keys.items()]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return made


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # unrelated to the first
    other_client_cert: Path  # signed by other_ca
    other_client_key: Path

    @staticmethod
    def read(path: Path) -> bytes:
        return path.read_bytes()


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def _signed(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server = _signed(folder, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client = _signed(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = _signed(folder, "stranger", other, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[1], *server, *client, other[1], *stranger)
