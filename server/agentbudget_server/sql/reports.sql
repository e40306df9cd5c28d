-- Spend reports (QuerySpend) and the audits of `agentbudget verify`. Loaded with queries.sql.

-- name: report_settings
-- The report query switches its branches and filters on and off by parameter ($n IS NULL OR
-- ...; $a < $b AND ...): a plan made for the actual values prunes them, a generic plan could not.
-- JIT compilation costs more than these aggregates over indexed ranges take; a month of a large
-- fleet is hundreds of thousands of rollup rows, grouped in memory.
SET LOCAL plan_cache_mode = force_custom_plan;
SET LOCAL jit = off;
SET LOCAL work_mem = '64MB';

-- name: spend_budget_ids
-- Deleted budgets included: their spend stays reportable.
SELECT id, name FROM budgets WHERE name = ANY ($1::text[]);

-- name: query_spend
-- Committed spend (COMMIT and CHARGE rows) grouped by the dimensions asked for, most expensive
-- first, with a total per currency. Each part of the time range is read from one source:
--   $1, $2        whole UTC months [from, to) from spend_monthly
--   $3..$6        two ranges of whole UTC days from spend_daily
--   $7..$10       two time ranges from the ledger itself
-- Filters (NULL or '' means all): $11 budget ids, $12 namespace, $13 kinds, $14 models,
-- $15 task types, $16 labels the entry must contain (jsonb), $17 currency.
-- Grouping: $18 budget, $19 model, $20 task type, $21 kind, $22 time bucket ('', 'day', 'week',
-- 'month') in the zone $23; $24 counts distinct task ids (ledger ranges only).
-- Page: $25 rows, after $26 rows. $27 principals who caused the entries ('' matches none
-- recorded; ledger ranges only: the rollup keeps no principal).
WITH src AS (
    SELECT m.budget_id, m.month::timestamp AT TIME ZONE 'UTC' AS at, m.kind, m.model, m.task_type,
           m.cost_nanos::bigint AS cost_nanos, m.entries, m.input_tokens::bigint AS input_tokens,
           m.output_tokens::bigint AS output_tokens, m.cache_read_tokens::bigint AS cache_read_tokens,
           m.cache_write_tokens::bigint AS cache_write_tokens, m.sandbox_nanos::bigint AS sandbox_nanos,
           NULL::text AS task_id
    FROM spend_monthly m
    WHERE $1::date < $2::date AND m.month >= $1 AND m.month < $2
      AND ($11::bigint[] IS NULL OR m.budget_id = ANY ($11))
      AND ($13::text[] IS NULL OR m.kind = ANY ($13))
      AND ($14::text[] IS NULL OR m.model = ANY ($14))
      AND ($15::text[] IS NULL OR m.task_type = ANY ($15))
    UNION ALL
    SELECT d.budget_id, d.day::timestamp AT TIME ZONE 'UTC', d.kind, d.model, d.task_type,
           d.cost_nanos::bigint, d.entries, d.input_tokens::bigint, d.output_tokens::bigint,
           d.cache_read_tokens::bigint, d.cache_write_tokens::bigint, d.sandbox_nanos::bigint, NULL
    FROM spend_daily d
    WHERE (($3::date < $4::date AND d.day >= $3 AND d.day < $4) OR ($5::date < $6::date AND d.day >= $5 AND d.day < $6))
      AND ($11::bigint[] IS NULL OR d.budget_id = ANY ($11))
      AND ($13::text[] IS NULL OR d.kind = ANY ($13))
      AND ($14::text[] IS NULL OR d.model = ANY ($14))
      AND ($15::text[] IS NULL OR d.task_type = ANY ($15))
    UNION ALL
    SELECT e.budget_id, e.created_at, coalesce(e.kind, ''), coalesce(e.model, ''), coalesce(e.task_type, ''),
           e.spent_delta, 1, coalesce(e.input_tokens, 0), coalesce(e.output_tokens, 0),
           coalesce(e.cache_read_tokens, 0), coalesce(e.cache_write_tokens, 0), coalesce(e.sandbox_nanos, 0),
           CASE WHEN $24 THEN e.task_id END
    FROM ledger_entries e
    WHERE e.entry_type IN ('COMMIT', 'CHARGE')
      AND (($7::timestamptz < $8::timestamptz AND e.created_at >= $7 AND e.created_at < $8)
           OR ($9::timestamptz < $10::timestamptz AND e.created_at >= $9 AND e.created_at < $10))
      AND ($11::bigint[] IS NULL OR e.budget_id = ANY ($11))
      AND ($13::text[] IS NULL OR coalesce(e.kind, '') = ANY ($13))
      AND ($14::text[] IS NULL OR coalesce(e.model, '') = ANY ($14))
      AND ($15::text[] IS NULL OR coalesce(e.task_type, '') = ANY ($15))
      -- labels <> '{}' is implied by any label filter; stating it lets the partial GIN index serve
      -- a fleet-wide one. Not for chosen budgets: their own index finds far fewer rows, and
      -- containment estimates are too rough for the planner to know that.
      AND ($16::jsonb IS NULL OR (e.labels @> $16 AND ($11::bigint[] IS NOT NULL OR e.labels <> '{}')))
      AND ($27::text[] IS NULL OR coalesce(e.principal, '') = ANY ($27))
),
keyed AS NOT MATERIALIZED (
    SELECT b.currency,
           CASE WHEN $18 THEN s.budget_id END AS budget_id,
           CASE WHEN $19 THEN s.model END AS model,
           CASE WHEN $20 THEN s.task_type END AS task_type,
           CASE WHEN $21 THEN s.kind END AS kind,
           CASE WHEN $22 <> '' THEN date_trunc($22, s.at, $23) END AS bucket,
           s.task_id, s.cost_nanos, s.entries, s.input_tokens, s.output_tokens, s.cache_read_tokens,
           s.cache_write_tokens, s.sandbox_nanos
    FROM src s
    JOIN budgets b ON b.id = s.budget_id
    WHERE ($12 = '' OR starts_with(b.name, $12 || '/')) AND ($17 = '' OR b.currency = $17)
),
sums AS (
    SELECT GROUPING(budget_id, model, task_type, kind, bucket) <> 0 AS is_total,
           currency, budget_id, model, task_type, kind, bucket,
           sum(cost_nanos) AS cost_nanos, sum(entries) AS entries, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
           sum(cache_write_tokens) AS cache_write_tokens, sum(sandbox_nanos) AS sandbox_nanos
    FROM keyed
    GROUP BY GROUPING SETS ((currency, budget_id, model, task_type, kind, bucket), (currency))
),
-- Distinct task ids, only when asked: one narrow row per group and task id (and per currency
-- and task id, for the totals), then counted. The sums above never carry a row per task.
tasks AS (
    SELECT is_total, currency, budget_id, model, task_type, kind, bucket, count(*) AS tasks
    FROM (SELECT GROUPING(budget_id, model, task_type, kind, bucket) <> 0 AS is_total,
                 currency, budget_id, model, task_type, kind, bucket
          FROM keyed
          WHERE $24 AND task_id IS NOT NULL
          GROUP BY GROUPING SETS ((currency, budget_id, model, task_type, kind, bucket, task_id),
                                  (currency, task_id))) AS per_task
    GROUP BY is_total, currency, budget_id, model, task_type, kind, bucket
),
grouped AS (
    -- Keys not grouped by are NULL on both sides; the sentinels make them equal for a hash join.
    SELECT s.*, coalesce(t.tasks, 0) AS tasks
    FROM sums s
    LEFT JOIN tasks t
           ON t.is_total = s.is_total AND t.currency = s.currency
          AND coalesce(t.budget_id, 0) = coalesce(s.budget_id, 0)
          AND coalesce(t.model, E'\x01') = coalesce(s.model, E'\x01')
          AND coalesce(t.task_type, E'\x01') = coalesce(s.task_type, E'\x01')
          AND coalesce(t.kind, E'\x01') = coalesce(s.kind, E'\x01')
          AND coalesce(t.bucket, '-infinity') = coalesce(s.bucket, '-infinity')
),
ranked AS (
    SELECT g.*, b.name AS budget,
           count(*) FILTER (WHERE NOT g.is_total) OVER () AS group_count,
           row_number() OVER (PARTITION BY g.is_total
                              ORDER BY g.cost_nanos DESC, b.name COLLATE "C", g.model COLLATE "C",
                                       g.task_type COLLATE "C", g.kind COLLATE "C", g.bucket, g.currency) AS rank
    FROM grouped g
    LEFT JOIN budgets b ON b.id = g.budget_id
)
SELECT is_total, currency, budget, model, task_type, kind, bucket, cost_nanos, entries, input_tokens,
       output_tokens, cache_read_tokens, cache_write_tokens, sandbox_nanos, tasks, group_count
FROM ranked
WHERE is_total OR (rank > $26 AND rank <= $26 + $25)
ORDER BY is_total DESC, rank;

-- name: audit_spend_rollup
-- Every rollup row (daily or monthly) that differs from the ledger's sums, or is missing.
WITH ledger AS (
    SELECT budget_id, (created_at AT TIME ZONE 'UTC')::date AS day, coalesce(kind, '') AS kind,
           coalesce(model, '') AS model, coalesce(task_type, '') AS task_type,
           sum(spent_delta) AS cost_nanos, count(*) AS entries
    FROM ledger_entries
    WHERE entry_type IN ('COMMIT', 'CHARGE')
    GROUP BY 1, 2, 3, 4, 5
),
by_month AS (
    SELECT budget_id, date_trunc('month', day::timestamp)::date AS month, kind, model, task_type,
           sum(cost_nanos) AS cost_nanos, sum(entries) AS entries
    FROM ledger
    GROUP BY 1, 2, 3, 4, 5
)
SELECT 'daily' AS rollup, b.name, x.day AS bucket, x.kind, x.model, x.task_type,
       x.ledger_cost, x.rollup_cost, x.ledger_entries, x.rollup_entries
FROM (SELECT coalesce(l.budget_id, d.budget_id) AS budget_id, coalesce(l.day, d.day) AS day,
             coalesce(l.kind, d.kind) AS kind, coalesce(l.model, d.model) AS model,
             coalesce(l.task_type, d.task_type) AS task_type,
             coalesce(l.cost_nanos, 0) AS ledger_cost, coalesce(d.cost_nanos, 0) AS rollup_cost,
             coalesce(l.entries, 0) AS ledger_entries, coalesce(d.entries, 0) AS rollup_entries
      FROM ledger l
      FULL JOIN spend_daily d USING (budget_id, day, kind, model, task_type)) x
JOIN budgets b ON b.id = x.budget_id
WHERE x.ledger_cost <> x.rollup_cost OR x.ledger_entries <> x.rollup_entries
UNION ALL
SELECT 'monthly', b.name, x.month, x.kind, x.model, x.task_type,
       x.ledger_cost, x.rollup_cost, x.ledger_entries, x.rollup_entries
FROM (SELECT coalesce(l.budget_id, m.budget_id) AS budget_id, coalesce(l.month, m.month) AS month,
             coalesce(l.kind, m.kind) AS kind, coalesce(l.model, m.model) AS model,
             coalesce(l.task_type, m.task_type) AS task_type,
             coalesce(l.cost_nanos, 0) AS ledger_cost, coalesce(m.cost_nanos, 0) AS rollup_cost,
             coalesce(l.entries, 0) AS ledger_entries, coalesce(m.entries, 0) AS rollup_entries
      FROM by_month l
      FULL JOIN spend_monthly m USING (budget_id, month, kind, model, task_type)) x
JOIN budgets b ON b.id = x.budget_id
WHERE x.ledger_cost <> x.rollup_cost OR x.ledger_entries <> x.rollup_entries
ORDER BY 2, 1, 3, 4, 5, 6;

-- name: audit_holds
-- Every hold whose ledger rows disagree with its state: one HOLD row of its amount, then exactly
-- one ending (COMMIT, RELEASE or EXPIRY) unless it is still ACTIVE; a late commit is an EXPIRY and
-- a CHARGE.
SELECT b.name, r.reservation_id, r.state, r.amount_nanos,
       count(*) FILTER (WHERE e.entry_type = 'HOLD') AS holds,
       coalesce(sum(e.held_delta) FILTER (WHERE e.entry_type = 'HOLD'), 0) AS held,
       count(*) FILTER (WHERE e.entry_type IN ('COMMIT', 'RELEASE', 'EXPIRY')) AS endings,
       string_agg(e.entry_type, ',' ORDER BY e.id) AS entries
FROM reservations r
JOIN budgets b ON b.id = r.budget_id
LEFT JOIN ledger_entries e ON e.budget_id = r.budget_id AND e.reservation_id = r.reservation_id
GROUP BY b.name, r.budget_id, r.reservation_id, r.state, r.amount_nanos
HAVING count(*) FILTER (WHERE e.entry_type = 'HOLD') <> 1
    OR coalesce(sum(e.held_delta) FILTER (WHERE e.entry_type = 'HOLD'), 0) <> r.amount_nanos
    OR count(*) FILTER (WHERE e.entry_type IN ('COMMIT', 'RELEASE', 'EXPIRY'))
       <> CASE WHEN r.state = 'ACTIVE' THEN 0 ELSE 1 END
    OR (r.state = 'COMMITTED') <> bool_or(e.entry_type = 'COMMIT' OR (e.entry_type = 'CHARGE' AND e.late))
ORDER BY b.name, r.reservation_id;

-- name: audit_counts
SELECT (SELECT count(*) FROM budget_periods) AS periods,
       (SELECT count(*) FROM reservations) AS reservations,
       (SELECT count(*) FROM ledger_entries) AS entries;
