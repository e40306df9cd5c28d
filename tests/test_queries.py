"""How the hold path's reads are planned: by primary key, however far the statistics lag behind.

A hot budget gains thousands of reservations between two ANALYZE runs. A plain ``= ANY`` join was
planned then as a scan of all the budget's reservations, so every transaction of that budget got
slower with every hold granted (seen in the hot-spot benchmark: 6 ms per batch read at 6,700
holds). The plan must not depend on the statistics being fresh.
"""

from __future__ import annotations

import asyncpg
import pytest
from agentbudget_server.sql import QUERIES as Q
from conftest import make_budget


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_a_batch_reads_its_reservations_by_primary_key_with_stale_statistics(authority, stub, dsn, mode):
    await make_budget(stub, "team/a", "10")
    conn = await asyncpg.connect(dsn)
    try:
        budget_id, start = await conn.fetchrow("SELECT budget_id, period_start FROM budget_periods")
        await conn.execute("ANALYZE reservations")  # statistics of an empty table ...
        await conn.execute(  # ... then many holds, as on a busy first day
            """INSERT INTO reservations (budget_id, reservation_id, period_start, amount_nanos, state,
                   created_at, expires_at, details, reserve_fingerprint, reserve_response)
               SELECT $1, 'r-' || i, $2, 1, 'ACTIVE', now(), now() + interval '1 day', '{}', '\\x00', '\\x00'
               FROM generate_series(1, 20000) AS i""",
            budget_id,
            start,
        )
        await conn.execute(f"SET plan_cache_mode = {mode}")
        wanted = [f"r-{i}" for i in range(100, 164)]
        rows = await conn.fetch(Q["get_period_with_holds"], budget_id, start, wanted)
        assert sorted(r["reservation_id"] for r in rows) == sorted(wanted)
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + Q["get_period_with_holds"], budget_id, start, wanted)
        )
        assert len(await conn.fetch(Q["get_reservations"], budget_id, wanted)) == len(wanted)
        plan_later = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + Q["get_reservations"], budget_id, wanted))
    finally:
        await conn.close()
    for p in (plan, plan_later):  # the batch's read, and a later read in the same unit
        assert "Index Scan using reservations_pkey" in p, p
        assert "reservation_id = wanted.id" in p, p  # both key columns in the index condition
        assert "Seq Scan on reservations" not in p and "Bitmap Heap Scan on reservations" not in p, p
