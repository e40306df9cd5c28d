"""``agentbudget verify``: recompute every balance, hold and spend sum from the ledger.

Read-only, in one repeatable-read snapshot, so concurrent writers cannot make a consistent
database look inconsistent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from .sql import QUERIES as Q


@dataclass
class Findings:
    periods: int = 0
    reservations: int = 0
    entries: int = 0
    balances: list[dict[str, object]] = field(default_factory=list)
    holds: list[dict[str, object]] = field(default_factory=list)
    rollup: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.balances or self.holds or self.rollup)


async def verify(dsn: str) -> Findings:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "agentbudget-verify", "timezone": "UTC"})
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            counts = await conn.fetchrow(Q["audit_counts"])
            assert counts is not None
            return Findings(
                periods=counts["periods"],
                reservations=counts["reservations"],
                entries=counts["entries"],
                balances=[dict(r) for r in await conn.fetch(Q["audit_balances"])],
                holds=[dict(r) for r in await conn.fetch(Q["audit_holds"])],
                rollup=[dict(r) for r in await conn.fetch(Q["audit_spend_rollup"])],
            )
    finally:
        await conn.close()
