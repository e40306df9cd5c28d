"""Test certificates made with the openssl command: a CA, a server certificate, a client certificate.

    paths = make_certs(tmp_path)      # ca.crt, server.crt/.key, client.crt/.key (EC P-256, 2 days)

The server certificate names ``SERVER_NAME`` and ``localhost`` (no IP address: a client reaching
it at 127.0.0.1 must say which name to expect); the client's subject is
``CN=CLIENT_NAME``. Another CA (``other-ca.crt``) signs nothing the servers use.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "authority.test"
CLIENT_NAME = "agent-7"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def _ca(name: str, cwd: Path) -> None:
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, subject: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=cwd,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("other-ca", directory)
    _leaf(
        "server",
        f"/CN={SERVER_NAME}",
        f"subjectAltName=DNS:{SERVER_NAME},DNS:localhost\nextendedKeyUsage=serverAuth\n",
        directory,
    )
    _leaf("client", f"/CN={CLIENT_NAME}", "extendedKeyUsage=clientAuth\n", directory)
    return Certs(
        ca=directory / "ca.crt",
        other_ca=directory / "other-ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
