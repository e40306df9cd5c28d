-- Statements of bench/spend_gen.py (a synthetic ledger for the report benchmarks) and
-- bench/spend_write.py (the trigger's write-path cost). Named like the authority's own queries.

-- name: create_budgets
-- $1 budgets, $2 / $3 the current period, $4 created at. Ids are 1..$1 (a fresh identity).
-- One namespace in fifty; one budget in fifty is in EUR.
INSERT INTO budgets (name, currency, limit_nanos, period, thresholds_ppm, labels, period_start, period_end,
                     created_at, updated_at)
SELECT format('ns-%s/agent-%s', i % 50, i), CASE WHEN i % 50 = 49 THEN 'EUR' ELSE 'USD' END,
       1000000000000, 'MONTHLY', '{800000}', jsonb_build_object('team', 'team-' || (i % 20)), $2, $3, $4, $4
FROM generate_series(1, $1::int) AS i;

-- name: create_periods
-- Every budget's period of every month ($1 starts, $2 ends); balances are set after the load.
INSERT INTO budget_periods (budget_id, period_start, period_end, limit_nanos, phase)
SELECT b.id, m.s, m.e, 0, 'ACTIVE'
FROM budgets b, unnest($1::timestamptz[], $2::timestamptz[]) AS m (s, e);

-- name: open_periods
INSERT INTO ledger_entries (budget_id, period_start, entry_type, created_at, limit_delta)
SELECT id, $1, 'PERIOD_OPENED', $1, limit_nanos FROM budgets ORDER BY id;

-- name: load_operations
-- Operations $1..$2, one every $4 seconds from $3, over $5 budgets; two ledger rows each:
-- HOLD + COMMIT (88%), HOLD + RELEASE (5%), HOLD + EXPIRY (2%) or two CHARGEs (5%).
-- The budget is skewed (budget 1 gets 1% of all operations, the median one 0.005%); each budget
-- uses three of eight models and three of ten task types, most often its first.
WITH ops AS (
    SELECT k, $3::timestamptz + (k * $4::float8) * interval '1 second' AS at,
           1 + floor($5::int * r_budget * r_budget)::bigint AS budget_id,
           random() AS r_kind, random() AS r_model, random() AS r_type, random() AS r_op, random() AS r_label,
           random() AS r_size, random() AS r_late
    FROM (SELECT k, random() AS r_budget FROM generate_series($1::bigint, $2::bigint) AS k) AS g
),
shaped AS (
    SELECT ops.*,
           CASE WHEN r_kind < 0.80 THEN 'MODEL_INFERENCE' WHEN r_kind < 0.92 THEN 'SANDBOX' ELSE 'EXTERNAL_API' END
               AS kind,
           1 + (budget_id + CASE WHEN r_model < 0.6 THEN 0 WHEN r_model < 0.9 THEN 1 ELSE 2 END) % 8 AS m,
           1 + (budget_id * 3 + floor(r_type * 3)::int) % 10 AS t,
           CASE WHEN r_op < 0.88 THEN 'COMMIT' WHEN r_op < 0.93 THEN 'RELEASE' WHEN r_op < 0.95 THEN 'EXPIRY'
                ELSE 'CHARGE' END AS ending,
           (500 + floor(r_size * 19500))::bigint AS input_tokens,
           (100 + floor(r_size * r_type * 3900))::bigint AS output_tokens
    FROM ops
),
costed AS (
    SELECT s.*,
           (ARRAY['claude-opus-4-1', 'claude-sonnet-4-5', 'claude-haiku-4-5', 'gpt-5', 'gpt-5-mini',
                  'gemini-2.5-pro', 'gemini-2.5-flash', 'llama-4-maverick'])[s.m] AS model,
           (ARRAY['lookup', 'monitoring', 'memory', 'reflection', 'analysis', 'reporting', 'research', 'planning',
                  'coding', 'support'])[s.t] AS task_type,
           CASE s.kind
               WHEN 'MODEL_INFERENCE' THEN s.input_tokens * (ARRAY[15000, 3000, 1000, 1250, 250, 1250, 300, 270])[s.m]
                                           + s.output_tokens * (ARRAY[75000, 15000, 5000, 10000, 2000, 10000, 2500, 850])[s.m]
               WHEN 'SANDBOX' THEN (10 + floor(s.r_size * 590))::bigint * 50000
               ELSE (1 + floor(s.r_size * 9))::bigint * 5000000
           END AS cost,
           date_trunc('month', s.at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start,
           CASE WHEN s.r_label < 0.25 THEN '{"env": "prod"}' WHEN s.r_label < 0.30 THEN '{"env": "staging"}'
                ELSE '{}' END::jsonb AS labels
    FROM shaped s
)
INSERT INTO ledger_entries (budget_id, period_start, entry_type, created_at, spent_delta, held_delta,
                            reservation_id, request_id, kind, model, input_tokens, output_tokens, sandbox_nanos,
                            api_name, api_calls, task_id, task_type, labels)
SELECT c.budget_id, c.period_start, row.entry_type,
       c.at + CASE WHEN part.n = 2 THEN (1 + c.r_late * 29) * interval '1 second' ELSE interval '0' END,
       row.spent, row.held,
       CASE WHEN c.ending <> 'CHARGE' THEN 'r-' || c.k END,
       CASE WHEN c.ending = 'CHARGE' THEN 'c-' || c.k || '-' || part.n END,
       c.kind,
       CASE WHEN c.kind = 'MODEL_INFERENCE' THEN c.model END,
       CASE WHEN c.kind = 'MODEL_INFERENCE' THEN c.input_tokens END,
       CASE WHEN c.kind = 'MODEL_INFERENCE' THEN c.output_tokens END,
       CASE WHEN c.kind = 'SANDBOX' THEN c.cost / 50000 * 1000000000 END,
       CASE WHEN c.kind = 'EXTERNAL_API' THEN 'search' END,
       CASE WHEN c.kind = 'EXTERNAL_API' THEN c.cost / 5000000 END,
       't-' || c.budget_id || '-' || (c.k / 5000),
       c.task_type,
       c.labels
FROM costed c
CROSS JOIN LATERAL (VALUES (1), (2)) AS part (n)
CROSS JOIN LATERAL (
    SELECT CASE WHEN c.ending = 'CHARGE' THEN 'CHARGE' WHEN part.n = 1 THEN 'HOLD' ELSE c.ending END AS entry_type,
           CASE WHEN c.ending = 'CHARGE' THEN c.cost / part.n
                WHEN part.n = 2 AND c.ending = 'COMMIT' THEN c.cost ELSE 0 END AS spent,
           CASE WHEN c.ending = 'CHARGE' THEN 0
                WHEN part.n = 1 THEN c.cost + c.cost / 5 ELSE -(c.cost + c.cost / 5) END AS held
) AS row
ORDER BY c.k, part.n;

-- name: drop_ledger_indexes
-- Secondary indexes are rebuilt after a bulk load (faster than maintaining them row by row).
DO $$
DECLARE r record;
BEGIN
    CREATE TABLE IF NOT EXISTS bench_dropped_indexes (name text PRIMARY KEY, definition text NOT NULL);
    FOR r IN SELECT indexname, indexdef FROM pg_indexes
             WHERE tablename = 'ledger_entries' AND indexname <> 'ledger_entries_pkey' LOOP
        INSERT INTO bench_dropped_indexes VALUES (r.indexname, r.indexdef) ON CONFLICT DO NOTHING;
        EXECUTE format('DROP INDEX %I', r.indexname);
    END LOOP;
END $$;

-- name: restore_ledger_indexes
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT name, definition FROM bench_dropped_indexes LOOP
        EXECUTE r.definition;
    END LOOP;
    DROP TABLE bench_dropped_indexes;
END $$;

-- name: rollup_always
-- The load runs with session_replication_role = replica (no foreign-key checks, which hold by
-- construction); the rollup trigger still fires.
ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_spend_rollup;

-- name: rollup_as_usual
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_spend_rollup;

-- name: settle_balances
-- Each period's balance as the sum of its ledger rows (what the authority keeps by construction),
-- so that `agentbudget verify` can be run on the result.
UPDATE budget_periods p
SET limit_nanos = l.limit_sum, spent_nanos = l.spent_sum, held_nanos = l.held_sum
FROM (SELECT budget_id, period_start, sum(limit_delta) AS limit_sum, sum(spent_delta) AS spent_sum,
             sum(held_delta) AS held_sum
      FROM ledger_entries GROUP BY budget_id, period_start) l
WHERE p.budget_id = l.budget_id AND p.period_start = l.period_start;

-- name: sizes
SELECT (SELECT count(*) FROM ledger_entries) AS entries,
       (SELECT count(*) FROM ledger_entries WHERE entry_type IN ('COMMIT', 'CHARGE')) AS cost_entries,
       (SELECT count(*) FROM spend_daily) AS daily_rows,
       (SELECT count(*) FROM spend_monthly) AS monthly_rows,
       pg_size_pretty(pg_total_relation_size('ledger_entries')) AS ledger_size,
       pg_size_pretty(pg_total_relation_size('spend_daily')) AS daily_size,
       pg_size_pretty(pg_total_relation_size('spend_monthly')) AS monthly_size;

-- name: busiest_budgets
-- The busiest budget, and the one at the median of cost entries.
WITH per AS (SELECT budget_id, count(*) AS n FROM ledger_entries WHERE entry_type IN ('COMMIT', 'CHARGE')
             GROUP BY budget_id)
SELECT b.name, per.n, rank() OVER (ORDER BY per.n DESC) AS rank, count(*) OVER () AS budgets
FROM per JOIN budgets b ON b.id = per.budget_id
ORDER BY per.n DESC;

-- name: write_bench_entries
-- bench/spend_write.py: $1 rows in one statement, the way a unit of work writes its ledger rows.
INSERT INTO ledger_entries (budget_id, period_start, entry_type, created_at, spent_delta, held_delta,
                            reservation_id, kind, model, input_tokens, output_tokens, task_id, task_type, labels)
SELECT e.budget_id, e.period_start, e.entry_type, now(), e.spent, e.held, e.reservation_id, 'MODEL_INFERENCE',
       e.model, 1200, 300, e.task_id, e.task_type, e.labels::jsonb
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[])
     AS e (budget_id, period_start, entry_type, spent, held, reservation_id, model, task_id, task_type, labels);

-- name: disable_rollup
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_spend_rollup;

-- name: enable_rollup
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_spend_rollup;

-- name: drop_report_indexes
DROP INDEX IF EXISTS ledger_entries_created_brin, ledger_entries_cost_labels_idx;

-- name: create_report_indexes
-- The same definitions as migration 0003.
CREATE INDEX IF NOT EXISTS ledger_entries_created_brin ON ledger_entries USING brin (created_at);
CREATE INDEX IF NOT EXISTS ledger_entries_cost_labels_idx ON ledger_entries USING gin (labels jsonb_path_ops)
    WHERE entry_type IN ('COMMIT', 'CHARGE') AND labels <> '{}';

-- name: reset_ledger
-- Between bench/spend_write.py runs only: the ledger refuses TRUNCATE otherwise.
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only;
TRUNCATE ledger_entries, spend_daily, spend_monthly;
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_append_only;

-- name: explain_bench_entries
-- The same write, with the time each trigger took (EXPLAIN ANALYZE runs it).
EXPLAIN (ANALYZE, FORMAT JSON)
INSERT INTO ledger_entries (budget_id, period_start, entry_type, created_at, spent_delta, held_delta,
                            reservation_id, kind, model, input_tokens, output_tokens, task_id, task_type, labels)
SELECT e.budget_id, e.period_start, e.entry_type, now(), e.spent, e.held, e.reservation_id, 'MODEL_INFERENCE',
       e.model, 1200, 300, e.task_id, e.task_type, e.labels::jsonb
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[])
     AS e (budget_id, period_start, entry_type, spent, held, reservation_id, model, task_id, task_type, labels);
