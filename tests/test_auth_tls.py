"""TLS and mTLS on the gRPC port: the right certificates connect, wrong ones (or none) do not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from agentbudget.v1 import budget_authority_pb2 as pb
from agentbudget.v1 import budget_authority_pb2_grpc as pb_grpc
from agentbudget_server import app
from auth_support import Pki, keys_file, make_pki
from conftest import expect_error, server_settings, usd
from grpc_health.v1 import health_pb2, health_pb2_grpc

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(pki: Pki, mtls: bool, **overrides: object) -> dict[str, object]:
    files = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    return {**files, "tls_client_ca": str(pki.ca) if mtls else "", **overrides}


async def _authority(dsn: str, pki: Pki, mtls: bool) -> AsyncIterator[app.Authority]:
    authority = await app.start(server_settings(**tls_settings(pki, mtls)), dsn)
    try:
        yield authority
    finally:
        await authority.stop(grace=0.5)


@pytest.fixture
async def tls(dsn: str, pki: Pki) -> AsyncIterator[app.Authority]:
    async for a in _authority(dsn, pki, mtls=False):
        yield a


@pytest.fixture
async def mtls(dsn: str, pki: Pki) -> AsyncIterator[app.Authority]:
    async for a in _authority(dsn, pki, mtls=True):
        yield a


def credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def health(port: int, creds: grpc.ChannelCredentials | None) -> int:
    """The health status over a channel with ``creds`` (plaintext if None); raises if it cannot connect."""
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(answer.status)


async def refused(port: int, creds: grpc.ChannelCredentials | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health(port, creds)
    assert caught.value.code() == Code.UNAVAILABLE, caught.value


async def test_tls_serves_a_client_that_trusts_the_ca(tls: app.Authority, pki: Pki):
    assert await health(tls.port, credentials(pki.ca)) == health_pb2.HealthCheckResponse.SERVING


async def test_tls_refuses_plaintext_and_a_client_that_trusts_another_ca(tls: app.Authority, pki: Pki):
    await refused(tls.port, None)
    await refused(tls.port, credentials(pki.other_ca))


async def test_mtls_serves_a_client_with_a_certificate_of_the_client_ca(mtls: app.Authority, pki: Pki):
    creds = credentials(pki.ca, pki.client_cert, pki.client_key)
    assert await health(mtls.port, creds) == health_pb2.HealthCheckResponse.SERVING


async def test_mtls_refuses_a_client_without_a_certificate_or_with_a_strangers(mtls: app.Authority, pki: Pki):
    await refused(mtls.port, credentials(pki.ca))
    await refused(mtls.port, credentials(pki.ca, pki.other_client_cert, pki.other_client_key))
    await refused(mtls.port, None)


async def test_an_api_key_over_mtls_is_the_production_path(dsn: str, pki: Pki, tmp_path: Path):
    keys = keys_file(tmp_path / "keys.yaml", {"ops": ("admin", [])})
    values = tls_settings(pki, True, auth="required", api_keys_file=str(tmp_path / "keys.yaml"))
    authority = await app.start(server_settings(**values), dsn)
    try:
        tls_creds = credentials(pki.ca, pki.client_cert, pki.client_key)
        key_creds = grpc.composite_channel_credentials(tls_creds, grpc.access_token_call_credentials(keys["ops"]))
        async with grpc.aio.secure_channel(f"127.0.0.1:{authority.port}", key_creds) as channel:
            stub = pb_grpc.BudgetAuthorityStub(channel)
            await stub.UpsertBudget(pb.UpsertBudgetRequest(name="team/a", spec=pb.BudgetSpec(limit=usd("1"))))
            assert (await stub.GetBudget(pb.GetBudgetRequest(name="team/a"))).budget.name == "team/a"
        async with grpc.aio.secure_channel(f"127.0.0.1:{authority.port}", tls_creds) as channel:  # no key
            call = pb_grpc.BudgetAuthorityStub(channel).GetBudget(pb.GetBudgetRequest(name="team/a"))
            await expect_error(call, Code.UNAUTHENTICATED, "CREDENTIALS_MISSING")
    finally:
        await authority.stop(grace=0.5)
