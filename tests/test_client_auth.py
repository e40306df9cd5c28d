"""The client's side of "who may spend what": the bearer token on every call (a rotated token file
re-read), TLS and mTLS, the agents' environment, and the CLI flags that reach the client.

The authority here is a tiny gRPC server in the test that answers with what it received (the
``authorization`` metadata, the client certificate's name), so the client is checked on the wire.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentbudget import client as ab
from agentbudget import credentials
from agentbudget.credentials import ConnectionOptions, TokenSource, is_loopback
from agentbudget.errors import RateLimitedError, UnauthenticatedError, UnavailableError
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import cli
from certs import CLIENT_NAME, SERVER_NAME, Certs, make_certs
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ENV = (
    "AGENTBUDGET_TARGET",
    "AGENTBUDGET_TLS",
    "AGENTBUDGET_CA_FILE",
    "AGENTBUDGET_CERT_FILE",
    "AGENTBUDGET_KEY_FILE",
    "AGENTBUDGET_TOKEN",
    "AGENTBUDGET_TOKEN_FILE",
    "AGENTBUDGET_SERVER_NAME",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    # No test may pick up a real pod's token.
    monkeypatch.setattr(credentials, "DEFAULT_TOKEN_FILE", str(tmp_path / "no-such-dir" / "token"))


@dataclass
class Seen:
    method: str
    authorization: str | None
    client_name: str | None


def error(code: int, reason: str, message: str, **metadata: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain="agentbudget.io", metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=[detail]))


@dataclass
class Echo(pb_grpc.BudgetAuthorityServicer):  # type: ignore[misc]
    """Answers GetBudget and WatchEvents, recording what each call carried; ``failures`` are
    answered first, one per call."""

    calls: list[Seen] = field(default_factory=list)
    failures: list[grpc.Status] = field(default_factory=list)

    def _seen(self, method: str, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        names = (context.auth_context() or {}).get("x509_common_name") or []
        self.calls.append(Seen(method, metadata.get("authorization"), names[0].decode() if names else None))
        if self.failures:
            context.abort_with_status(self.failures.pop(0))

    def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.ServicerContext) -> pb.GetBudgetResponse:
        self._seen("GetBudget", context)
        return pb.GetBudgetResponse(budget=pb.Budget(name=request.name))

    def WatchEvents(self, request: pb.WatchEventsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        self._seen("WatchEvents", context)
        yield pb.WatchEventsResponse(event=pb.Event(id=request.after_id + 1))


@contextlib.contextmanager
def serving(credentials: grpc.ServerCredentials | None = None) -> Iterator[tuple[Echo, str]]:
    echo = Echo()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_BudgetAuthorityServicer_to_server(echo, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield echo, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@pytest.fixture
def plain() -> Iterator[tuple[Echo, str]]:
    with serving() as running:
        yield running


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def server_credentials(certs: Certs, *, require_client_cert: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes() if require_client_cert else None,
        require_client_auth=require_client_cert,
    )


def by_name(running: tuple[Echo, str]) -> tuple[Echo, str]:
    """The server at localhost, a name its certificate carries (127.0.0.1 it does not)."""
    echo, address = running
    return echo, "localhost:" + address.rsplit(":", 1)[1]


@pytest.fixture
def tls(certs: Certs) -> Iterator[tuple[Echo, str]]:
    with serving(server_credentials(certs, require_client_cert=False)) as running:
        yield by_name(running)


@pytest.fixture
def mtls(certs: Certs) -> Iterator[tuple[Echo, str]]:
    with serving(server_credentials(certs, require_client_cert=True)) as running:
        yield by_name(running)


def rotate(path: Path, token: str) -> None:
    """As the kubelet does: a new file, renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(token + "\n")
    os.replace(fresh, path)


# --- the bearer token -------------------------------------------------------------------------


async def test_a_token_is_sent_on_every_call_unary_and_streaming(plain: tuple[Echo, str]) -> None:
    echo, address = plain
    async with ab.connect(address, token="t0ken") as client:
        assert (await client.get_budget("team/research")).name == "team/research"
        events = client.watch_events(after_id=41)
        assert (await events.__anext__()).id == 42
        await events.aclose()
        await client.get_budget("team/research")
    assert [(c.method, c.authorization) for c in echo.calls] == [
        ("GetBudget", "Bearer t0ken"),
        ("WatchEvents", "Bearer t0ken"),
        ("GetBudget", "Bearer t0ken"),
    ]


async def test_without_a_token_no_authorization_is_sent(plain: tuple[Echo, str]) -> None:
    echo, address = plain
    async with ab.connect(address) as client:
        await client.get_budget("team/research")
    assert echo.calls[0].authorization is None


async def test_a_rotated_token_file_is_read_again(plain: tuple[Echo, str], tmp_path: Path) -> None:
    echo, address = plain
    token = tmp_path / "token"
    rotate(token, "first")
    async with ab.connect(address, token_file=str(token)) as client:
        await client.get_budget("a/b")
        await client.get_budget("a/b")
        rotate(token, "second")
        await client.get_budget("a/b")
    assert [c.authorization for c in echo.calls] == ["Bearer first", "Bearer first", "Bearer second"]


def test_a_file_rewritten_in_place_unnoticed_is_reread_after_a_few_seconds(tmp_path: Path) -> None:
    now = [100.0]
    token = tmp_path / "token"
    token.write_text("aaaa")
    source = TokenSource(token_file=str(token), clock=lambda: now[0])
    assert source.current() == "aaaa"
    stat = token.stat()
    with token.open("r+") as f:  # same inode, size and mtime: nothing to notice
        f.write("bbbb")
    os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now[0] += 1
    assert source.current() == "aaaa"  # not re-read on every call
    now[0] += credentials.TOKEN_REREAD_SECONDS
    assert source.current() == "bbbb"


def test_a_token_file_missing_for_a_moment_keeps_the_last_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    source = TokenSource(token_file=str(token))
    assert source.current() == "s3cret-token"
    token.unlink()
    with caplog.at_level(logging.DEBUG, logger="agentbudget.client"):
        assert source.current() == "s3cret-token"
        assert source.current() == "s3cret-token"
        rotate(token, "n3w-token")
        assert source.current() == "n3w-token"
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]  # once per outage
    assert "token" in caplog.text and "s3cret" not in caplog.text and "n3w" not in caplog.text


async def test_a_token_file_that_never_existed_sends_none(plain: tuple[Echo, str], tmp_path: Path) -> None:
    echo, address = plain
    async with ab.connect(address, token_file=str(tmp_path / "absent")) as client:
        await client.get_budget("a/b")
    assert echo.calls[0].authorization is None


def test_tokens_are_in_no_repr() -> None:
    options = ConnectionOptions(token="s3cret")
    assert "s3cret" not in repr(options) and "<set>" in repr(options)
    assert "s3cret" not in repr(TokenSource(token="s3cret"))


def test_a_token_and_a_token_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        ab.connect("127.0.0.1:1", token="t", token_file=str(tmp_path / "t"))


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/agentbudget.sock", True),
        ("dns:///localhost:50051", True),
        ("agentbudget.agentbudget.svc:50051", False),
        ("10.0.0.7:50051", False),
    ],
)
def test_loopback_targets(target: str, local: bool) -> None:
    assert is_loopback(target) is local


async def test_a_token_sent_in_plaintext_off_this_machine_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agentbudget.client"):
        await ab.connect("agentbudget.example:50051", token="s3cret").close()
        await ab.connect("127.0.0.1:50051", token="s3cret").close()
    assert len(caplog.records) == 1 and "without TLS" in caplog.text and "s3cret" not in caplog.text


async def test_errors_of_authentication_are_raised_not_retried(plain: tuple[Echo, str]) -> None:
    echo, address = plain
    echo.failures.append(error(code_pb2.UNAUTHENTICATED, "CREDENTIALS_MISSING", "no credentials"))
    async with ab.connect(address) as client:
        with pytest.raises(UnauthenticatedError) as raised:
            await client.get_budget("a/b")
    assert raised.value.reason == "CREDENTIALS_MISSING" and len(echo.calls) == 1


async def test_a_rate_limited_call_is_retried_after_the_wait_asked_for(plain: tuple[Echo, str]) -> None:
    echo, address = plain
    echo.failures.append(error(code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", retry_after_ms="20"))
    async with ab.connect(address) as client:
        assert (await client.get_budget("a/b")).name == "a/b"
    assert len(echo.calls) == 2
    for _ in range(4):
        echo.failures.append(error(code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", retry_after_ms="1"))
    async with ab.connect(address, retries=3) as client:
        with pytest.raises(RateLimitedError):
            await client.get_budget("a/b")


# --- TLS and mTLS -----------------------------------------------------------------------------


async def test_tls_verified_against_a_ca_file(tls: tuple[Echo, str], certs: Certs) -> None:
    echo, address = tls
    async with ab.connect(address, ca_file=str(certs.ca), token="t0ken") as client:  # a CA file implies TLS
        assert (await client.get_budget("a/b")).name == "a/b"
    assert echo.calls[0].authorization == "Bearer t0ken"


async def test_tls_with_the_name_on_the_certificate_when_it_is_not_the_targets(
    tls: tuple[Echo, str], certs: Certs
) -> None:
    _, address = tls
    port = address.rsplit(":", 1)[1]
    target = f"127.0.0.1:{port}"
    async with ab.connect(target, tls=True, ca_file=str(certs.ca), server_name=SERVER_NAME) as client:
        assert (await client.get_budget("a/b")).name == "a/b"
    async with ab.connect(target, tls=True, ca_file=str(certs.ca), retries=0) as client:
        with pytest.raises(UnavailableError):
            await client.get_budget("a/b")


@pytest.mark.parametrize("how", ["plaintext", "system roots", "another CA", "another name"])
async def test_tls_that_cannot_verify_the_authority_does_not_connect(
    tls: tuple[Echo, str], certs: Certs, how: str
) -> None:
    echo, address = tls
    kwargs: dict[str, Any] = {
        "plaintext": {},
        "system roots": {"tls": True},
        "another CA": {"ca_file": str(certs.other_ca)},
        "another name": {"ca_file": str(certs.ca), "server_name": "someone-else.test"},
    }[how]
    async with ab.connect(address, retries=0, **kwargs) as client:
        with pytest.raises(UnavailableError):
            await client.get_budget("a/b")
    assert echo.calls == []


async def test_mtls_presents_the_client_certificate(mtls: tuple[Echo, str], certs: Certs) -> None:
    echo, address = mtls
    async with ab.connect(
        address, ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key)
    ) as client:
        await client.get_budget("a/b")
    assert echo.calls[0].client_name == CLIENT_NAME


async def test_mtls_without_a_client_certificate_does_not_connect(mtls: tuple[Echo, str], certs: Certs) -> None:
    echo, address = mtls
    async with ab.connect(address, ca_file=str(certs.ca), retries=0) as client:
        with pytest.raises(UnavailableError):
            await client.get_budget("a/b")
    assert echo.calls == []


def test_a_certificate_needs_its_key_and_files_must_be_readable(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        ab.connect("127.0.0.1:1", cert_file=str(certs.client_cert))
    with pytest.raises(ValueError, match="CA file"):
        ab.connect("127.0.0.1:1", ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(ValueError, match="not both"):
        ab.connect("127.0.0.1:1", ca_file=str(certs.ca), credentials=grpc.ssl_channel_credentials())


# --- the environment --------------------------------------------------------------------------


async def test_connect_from_env_takes_target_tls_and_token(tls: tuple[Echo, str], certs: Certs, tmp_path: Path) -> None:
    echo, address = tls
    token = tmp_path / "token"
    rotate(token, "from-the-pod")
    env = {
        "AGENTBUDGET_TARGET": address,
        "AGENTBUDGET_TLS": "1",
        "AGENTBUDGET_CA_FILE": str(certs.ca),
        "AGENTBUDGET_TOKEN_FILE": str(token),
    }
    async with ab.connect_from_env(env=env) as client:
        await client.get_budget("a/b")
    assert echo.calls[0].authorization == "Bearer from-the-pod"


async def test_the_default_token_file_is_used_when_it_exists(
    plain: tuple[Echo, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo, address = plain
    default = tmp_path / "agentbudget.io" / "token"
    monkeypatch.setattr(credentials, "DEFAULT_TOKEN_FILE", str(default))
    assert ConnectionOptions.from_env({}).token_file is None
    default.parent.mkdir()
    rotate(default, "projected")
    assert ConnectionOptions.from_env({}).token_file == str(default)
    assert ConnectionOptions.from_env({"AGENTBUDGET_TOKEN_FILE": ""}).token_file is None  # turned off
    assert ConnectionOptions.from_env({"AGENTBUDGET_TOKEN": "given"}).token_file is None
    async with ab.connect_from_env(address, env={}) as client:
        await client.get_budget("a/b")
    assert echo.calls[0].authorization == "Bearer projected"


async def test_arguments_win_over_the_environment(plain: tuple[Echo, str], tmp_path: Path) -> None:
    echo, address = plain
    token = tmp_path / "token"
    rotate(token, "from-file")
    env = {"AGENTBUDGET_TARGET": "127.0.0.1:1", "AGENTBUDGET_TOKEN": "from-env", "AGENTBUDGET_TLS": "1"}
    async with ab.connect_from_env(address, tls=False, token_file=str(token), env=env) as client:
        await client.get_budget("a/b")
    assert echo.calls[0].authorization == "Bearer from-file"


@pytest.mark.parametrize(("value", "on"), [("1", True), ("true", True), ("0", False), ("off", False), ("", None)])
def test_agentbudget_tls_values(value: str, on: bool | None) -> None:
    assert ConnectionOptions.from_env({"AGENTBUDGET_TLS": value}).tls is on  # None: TLS if a file says so


def test_tls_off_with_a_ca_file_is_a_contradiction(certs: Certs) -> None:
    with pytest.raises(ValueError, match="TLS is off"):
        ab.connect("127.0.0.1:1", tls=False, ca_file=str(certs.ca))
    with pytest.raises(ValueError, match="TLS is off"):
        ab.connect_from_env(env={"AGENTBUDGET_TLS": "0", "AGENTBUDGET_CA_FILE": str(certs.ca)})


def test_a_bad_agentbudget_tls_is_an_error() -> None:
    with pytest.raises(ValueError, match="AGENTBUDGET_TLS"):
        ConnectionOptions.from_env({"AGENTBUDGET_TLS": "maybe"})


# --- the CLI ----------------------------------------------------------------------------------


def test_the_cli_flags_reach_the_client(tls: tuple[Echo, str], certs: Certs, tmp_path: Path) -> None:
    echo, address = tls
    token = tmp_path / "token"
    rotate(token, "cli-token")
    port = address.rsplit(":", 1)[1]
    argv = ["budget", "get", "team/research", "--json", "--target", f"127.0.0.1:{port}"]
    argv += ["--ca-file", str(certs.ca), "--token-file", str(token), "--server-name", SERVER_NAME]
    assert cli.main(argv) == 0
    assert echo.calls[0].authorization == "Bearer cli-token"


def test_the_cli_presents_a_client_certificate(mtls: tuple[Echo, str], certs: Certs) -> None:
    echo, address = mtls
    argv = ["budget", "get", "team/research", "--target", address, "--tls", "--ca-file", str(certs.ca)]
    argv += ["--cert-file", str(certs.client_cert), "--key-file", str(certs.client_key)]
    assert cli.main(argv) == 0
    assert echo.calls[0].client_name == CLIENT_NAME


def test_the_cli_takes_the_agents_environment(
    tls: tuple[Echo, str], certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo, address = tls
    monkeypatch.setenv("AGENTBUDGET_TLS", "1")
    monkeypatch.setenv("AGENTBUDGET_CA_FILE", str(certs.ca))
    monkeypatch.setenv("AGENTBUDGET_TOKEN", "env-token")
    assert cli.main(["budget", "get", "team/research", "--target", address]) == 0
    assert echo.calls[0].authorization == "Bearer env-token"
    # --no-tls wins over the environment's TLS (and its CA file): plaintext, which this server refuses
    assert cli.main(["budget", "get", "team/research", "--target", address, "--no-tls"]) == 1
    assert len(echo.calls) == 1


def test_the_cli_refuses_a_bad_agentbudget_tls(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("AGENTBUDGET_TLS", "maybe")
    assert cli.main(["budget", "get", "team/research", "--target", "127.0.0.1:1"]) == 2
    assert "AGENTBUDGET_TLS" in capsys.readouterr().err
