"""Migrations: their sum is the committed schema, applying twice changes nothing, racing is safe."""

from __future__ import annotations

import asyncio

import asyncpg
from agentbudget_server import db, sql

# A description of everything a migration can create, compared as sorted text.
DESCRIBE = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable
       || ' default=' || coalesce(column_default, '') || ' identity=' || is_identity AS item
FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  AND conrelid <> coalesce(to_regclass('public.schema_migrations'), 0)
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
UNION ALL
SELECT 'trigger ' || tgrelid::regclass || ' ' || pg_get_triggerdef(oid)
FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'function ' || p.proname || ' ' || md5(pg_get_functiondef(p.oid))
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
ORDER BY 1
"""


async def describe(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["item"] for r in await conn.fetch(DESCRIBE)]
    finally:
        await conn.close()


async def test_all_migrations_yield_the_committed_schema(fresh_db, template_db):
    from conftest import dsn_for

    conn = await asyncpg.connect(fresh_db)
    try:
        await conn.execute(sql.schema())
    finally:
        await conn.close()
    migrated = await describe(dsn_for(template_db))
    assert migrated == await describe(fresh_db)
    assert any(item.startswith("trigger ledger_entries") for item in migrated)


async def test_applying_twice_changes_nothing(fresh_db):
    first = await db.migrate(fresh_db)
    assert first == [version for version, _ in sql.migrations()]
    before = await describe(fresh_db)
    assert await db.migrate(fresh_db) == []
    assert await describe(fresh_db) == before


async def test_processes_migrating_at_once_apply_each_migration_once(fresh_db):
    results = await asyncio.gather(*(db.migrate(fresh_db) for _ in range(4)))
    applied = [v for r in results for v in r]
    assert sorted(applied) == [version for version, _ in sql.migrations()]
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(sql.migrations())
    finally:
        await conn.close()


async def test_the_ledger_is_append_only(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO budgets (name, currency, limit_nanos, period, thresholds_ppm, period_start, period_end)"
            " VALUES ('a/b', 'USD', 1, 'MONTHLY', '{}', now(), now() + interval '1 day')"
        )
        await conn.execute(
            "INSERT INTO budget_periods (budget_id, period_start, period_end, limit_nanos, phase)"
            " SELECT id, period_start, period_end, 1, 'ACTIVE' FROM budgets"
        )
        await conn.execute(
            "INSERT INTO ledger_entries (budget_id, period_start, entry_type, limit_delta)"
            " SELECT id, period_start, 'PERIOD_OPENED', 1 FROM budgets"
        )
        for statement in ("UPDATE ledger_entries SET limit_delta = 2", "DELETE FROM ledger_entries"):
            try:
                await conn.execute(statement)
            except asyncpg.InsufficientPrivilegeError as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{statement} was allowed")
        assert await conn.fetchval("SELECT limit_delta FROM ledger_entries") == 1
    finally:
        await conn.close()


async def test_a_changed_applied_migration_is_refused(fresh_db, monkeypatch):
    await db.migrate(fresh_db)
    original = sql.migrations()
    monkeypatch.setattr(sql, "migrations", lambda: [(original[0][0], original[0][1] + "\n-- edited")])
    try:
        await db.migrate(fresh_db)
    except RuntimeError as exc:
        assert "changed after it was applied" in str(exc)
    else:
        raise AssertionError("an edited migration was accepted")


def test_two_processes_migrating_an_empty_database_at_once(fresh_db):
    import subprocess

    from procs import agentbudget_executable

    command = [agentbudget_executable(), "migrate", "--database-url", fresh_db, "--log-level", "WARNING"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    said = sorted(out.strip() for out, _ in outputs)
    versions = ", ".join(v for v, _ in sql.migrations())
    assert said == sorted([f"applied: {versions}", "schema is up to date"]), said  # each applied exactly once

    async def count() -> int:
        conn = await asyncpg.connect(fresh_db)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM schema_migrations"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == len(sql.migrations())
