"""Metrics and alert webhooks, started and stopped as one piece of the authority's lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .metrics import Exporter, Metrics, PoolCollector, RpcInterceptor
from .settings import Settings
from .tally import Tally
from .webhooks import Webhooks


@dataclass
class Observability:
    metrics: Metrics
    webhooks: Webhooks
    exporter: Exporter | None = None
    metrics_port: int = 0  # the bound metrics port; 0 when metrics are off
    interceptors: list[Any] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, dsn: str, pool: asyncpg.Pool) -> Observability:
        """Before the gRPC server starts: the interceptor must exist, and the positions must be
        in place before the first call, so nothing it does goes uncounted or unalerted."""
        metrics = Metrics()
        webhooks = Webhooks(settings.webhooks, dsn, settings.event_poll_seconds, metrics)
        obs = cls(metrics, webhooks)
        if settings.metrics_listen:
            metrics.register(PoolCollector(pool))
            tally = Tally(pool, metrics)
            await tally.start()
            obs.interceptors.append(RpcInterceptor(metrics))
            obs.exporter = Exporter(metrics, tally.refresh)
            obs.metrics_port = await obs.exporter.start(settings.metrics_listen)
        try:
            await webhooks.start()
        except BaseException:
            await obs.close()
            raise
        return obs

    async def close(self) -> None:
        await self.webhooks.close()
        if self.exporter is not None:
            await self.exporter.close()
