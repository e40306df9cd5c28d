"""Metrics and alert webhooks, started and stopped as one piece of the authority's lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from .groupcommit import GroupCommit
from .layers import Layer
from .metrics import Exporter, GroupCommitCollector, Metrics, PoolCollector, RpcMetrics
from .settings import Settings
from .tally import Tally
from .webhooks import Webhooks


@dataclass
class Observability:
    metrics: Metrics
    webhooks: Webhooks
    exporter: Exporter | None = None
    metrics_port: int = 0  # the bound metrics port; 0 when metrics are off
    layers: list[Layer] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, dsn: str, pool: asyncpg.Pool, holds: GroupCommit) -> Observability:
        """Before the gRPC server starts: the metrics layer must exist, and the positions must be
        in place before the first call, so nothing it does goes uncounted or unalerted."""
        metrics = Metrics()
        webhooks = Webhooks(settings.webhooks, dsn, settings.event_poll_seconds, metrics)
        obs = cls(metrics, webhooks)
        if settings.metrics_listen:
            metrics.register(PoolCollector(pool))
            metrics.register(GroupCommitCollector(holds))
            tally = Tally(pool, metrics)
            await tally.start()
            obs.layers.append(RpcMetrics(metrics))
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
