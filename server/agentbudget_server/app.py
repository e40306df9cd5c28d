"""The authority process: pool, event hub, sweeper and gRPC server, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from . import db, ledger, pricing
from .auth.access import Access
from .events import EventHub
from .groupcommit import GroupCommit
from .layers import Layer, Registrar
from .observability import Observability
from .servicer import SERVICE, BudgetAuthority
from .settings import Settings

log = logging.getLogger(__name__)
# grpc_health sets .aio at import time; its stubs do not know it.
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]
ReflectionServicer: Any = reflection.aio.ReflectionServicer  # type: ignore[attr-defined]  # likewise


def create_server(
    address: str,
    servicer: BudgetAuthority,
    *,
    reuse_port: bool = False,
    layers: Sequence[Layer] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, Any]:
    """A server bound to ``address`` (port 0 picks a free one); returns it with the bound port.

    ``reuse_port`` lets worker processes share one port; otherwise a port in use is an error, not
    a silent share with whatever holds it. With ``credentials`` the port speaks TLS only. Every
    method of every service is wrapped in ``layers`` (the first outermost).
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    services = Registrar()
    servicer.register(services)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
    names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionServicer(names), services)
    services.install(server, layers)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return server, port, health_servicer


@dataclass
class Authority:
    settings: Settings
    pool: asyncpg.Pool
    hub: EventHub
    server: grpc.aio.Server
    health: Any  # grpc_health's aio HealthServicer
    port: int
    sweeper: asyncio.Task[None]
    holds: GroupCommit
    observability: Observability
    access: Access | None = None

    @property
    def metrics_port(self) -> int:
        """The bound Prometheus port; 0 when metrics are off."""
        return self.observability.metrics_port

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (load balancers drain), then finish calls in flight, then the pool."""
        await self.health.enter_graceful_shutdown()
        self.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sweeper
        await self.hub.close()  # ends WatchEvents streams, so stop() need not wait the whole grace
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        await self.holds.close()
        if self.access is not None:
            self.access.close()
        await self.observability.close()  # before the pool: a scrape reads through it
        await self.pool.close()


async def _sweep_forever(pool: asyncpg.Pool, interval: float) -> None:
    while True:
        try:
            await ledger.sweep(pool)
        except Exception as exc:  # the sweeper must outlive database outages
            log.warning("sweeper: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval)


async def start(settings: Settings, dsn: str, *, reuse_port: bool = False) -> Authority:
    access = Access.load(settings)  # first: a bad certificate or keys file fails before anything starts
    pool = await db.create_pool(dsn, settings.pool_min, settings.pool_max)
    hub = EventHub(pool, dsn, settings.event_poll_seconds)
    await hub.start()
    holds = GroupCommit(pool, settings.max_batch)
    servicer = BudgetAuthority(pool, hub, settings, pricing.load(settings.price_config), holds)
    observability = await Observability.start(settings, dsn, pool, holds)
    server, port, health_servicer = create_server(
        settings.listen,
        servicer,
        reuse_port=reuse_port,
        # Metrics outermost: refusals are counted by their code like any other answer.
        layers=[*observability.layers, access.layer(settings, pool)],
        credentials=access.credentials,
    )
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    sweeper = asyncio.create_task(_sweep_forever(pool, settings.sweep_interval_seconds), name="sweeper")
    return Authority(
        settings, pool, hub, server, health_servicer, port, sweeper, holds, observability=observability, access=access
    )


async def serve(settings: Settings, dsn: str, *, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order."""
    await db.migrate(dsn)
    authority = await start(settings, dsn, reuse_port=reuse_port)
    host = settings.listen.rsplit(":", 1)[0]
    log.info("serving agentbudget.v1.BudgetAuthority on %s:%d", host, authority.port)
    if authority.metrics_port:
        log.info("metrics on http://%s:%d/metrics", settings.metrics_listen.rsplit(":", 1)[0], authority.metrics_port)
    if settings.ready_file:
        await asyncio.to_thread(Path(settings.ready_file).write_text, str(authority.port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", settings.grace_seconds)
    await authority.stop()
    log.info("stopped")
