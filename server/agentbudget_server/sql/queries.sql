-- Every query of the authority, by name. Loaded once by sql/__init__.py.
-- Lock order: budgets rows by name, then whatever belongs to them.

-- name: migration_lock
SELECT pg_advisory_lock($1);

-- name: migration_unlock
SELECT pg_advisory_unlock($1);

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version, checksum FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2);

-- name: lock_budget_and_read
-- The budget row is the lock that serialises every change of its money; its period and the named
-- reservations are read after the lock is granted (see agentbudget_lock, migration 0006). One
-- round trip: the first row has the budget, the clock and the period, each further row a hold.
SELECT * FROM agentbudget_lock($1, $2, $3::text[]);

-- name: read_budget_and_holds
-- What lock_budget_and_read gives, without the lock, in one statement (one snapshot): for a batch
-- that writes only if the budget's version has not moved meanwhile (write_unit with $65).
SELECT b AS budget, agentbudget_now() AS now, p AS period, NULL::reservations AS hold
FROM budgets b
JOIN budget_periods p ON p.budget_id = b.id AND p.period_start = b.period_start
WHERE b.name = $1 AND b.deleted_at IS NULL
UNION ALL
SELECT NULL, NULL, NULL, found.r
FROM budgets b
CROSS JOIN unnest($2::text[]) AS wanted (id)
CROSS JOIN LATERAL (
    SELECT r FROM reservations r WHERE r.budget_id = b.id AND r.reservation_id = wanted.id LIMIT 1
) AS found
WHERE b.name = $1 AND b.deleted_at IS NULL;

-- name: lock_budget_skip_locked
SELECT b.*, agentbudget_now() AS now
FROM budgets b
WHERE b.name = $1
FOR UPDATE OF b SKIP LOCKED;

-- name: get_period
SELECT * FROM budget_periods WHERE budget_id = $1 AND period_start = $2;

-- name: insert_budget
INSERT INTO budgets (name, currency, limit_nanos, period, time_zone, thresholds_ppm, paused, labels,
                     period_start, period_end, created_at, updated_at, routing, agent_principals)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $11, $12::jsonb, $13)
RETURNING *;

-- name: update_budget_spec
UPDATE budgets
SET limit_nanos = $2, period = $3, time_zone = $4, thresholds_ppm = $5, paused = $6, labels = $7::jsonb,
    deleted_at = NULL, updated_at = $8, routing = $9::jsonb, agent_principals = $10, version = version + 1
WHERE id = $1
RETURNING *;

-- name: move_budget_period
UPDATE budgets SET period_start = $2, period_end = $3, version = version + 1 WHERE id = $1;

-- name: delete_budget
UPDATE budgets SET deleted_at = $2, updated_at = $2, version = version + 1 WHERE id = $1;

-- name: insert_period
INSERT INTO budget_periods (budget_id, period_start, period_end, limit_nanos, spent_nanos, held_nanos,
                            crossed_ppm, phase)
VALUES ($1, $2, $3, $4, 0, 0, $5, $6);

-- name: update_period
UPDATE budget_periods
SET limit_nanos = $3, spent_nanos = $4, held_nanos = $5, crossed_ppm = $6, phase = $7
WHERE budget_id = $1 AND period_start = $2;

-- name: get_reservations
-- By primary key, one probe per id (see agentbudget_lock in migration 0006).
SELECT found.* FROM unnest($2::text[]) AS wanted (id)
CROSS JOIN LATERAL (
    SELECT * FROM reservations WHERE budget_id = $1 AND reservation_id = wanted.id LIMIT 1
) AS found;

-- name: due_holds
-- Read under the budget's lock; the unit ends them in memory and writes them with the rest.
SELECT * FROM reservations
WHERE budget_id = $1 AND state = 'ACTIVE' AND expires_at <= $2
ORDER BY expires_at, reservation_id;

-- name: write_unit
-- Everything a unit of work changed but its events, in one statement (one round trip): its ledger
-- rows, the holds it granted (in their final state) and ended, its periods' balances, and the
-- versions of its budgets ($64, and $66 when it changed two: a transfer), moved by one. The parts touch different rows, so running them
-- side by side in one snapshot is safe. The events go in their own statement (insert_events), only
-- when there are any: even a conditional update of the event counter inside this statement was
-- seen to lock its row, serialising every transaction of every budget.
--
-- $65 NULL: the unit holds its budgets' locks. $65 a version: the unit read its one budget without
-- the lock (read_budget_and_holds), and nothing is written unless that budget's version is still
-- $65; the UPDATE of the version takes the row lock, waiting for a transaction holding it and then
-- checking the version that transaction left. No rows back: the version had moved.
WITH versions AS (
    -- Two scalars, not `id = ANY(array)`: that generic plan scans every budget once the table has
    -- about a thousand (it estimates ten ids), in every transaction of the hold path.
    UPDATE budgets SET version = version + 1
    WHERE (id = $64::bigint OR id = $66::bigint) AND ($65::bigint IS NULL OR version = $65)
    RETURNING id
),
go AS (
    SELECT $65::bigint IS NULL OR EXISTS (SELECT FROM versions) AS ok
),
entries AS (
    INSERT INTO ledger_entries (budget_id, period_start, entry_type, created_at, spent_delta, held_delta,
                                limit_delta, reservation_id, request_id, overrun, late, kind, model,
                                input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
                                sandbox_nanos, api_name, api_calls, task_id, task_type, labels,
                                catalog_version, counterparty, reason, reasoning_tokens, sandbox_class,
                                provider, principal)
    SELECT e.budget_id, e.period_start, e.entry_type, $1, e.spent_delta, e.held_delta, e.limit_delta,
           e.reservation_id, e.request_id, e.overrun, e.late, e.kind, e.model, e.input_tokens, e.output_tokens,
           e.cache_read_tokens, e.cache_write_tokens, e.sandbox_nanos, e.api_name, e.api_calls, e.task_id,
           e.task_type, e.labels::jsonb, e.catalog_version, e.counterparty, e.reason, e.reasoning_tokens,
           e.sandbox_class, e.provider, e.principal
    FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],
                $8::text[], $9::text[], $10::boolean[], $11::boolean[], $12::text[], $13::text[], $14::bigint[],
                $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], $19::text[], $20::bigint[],
                $21::text[], $22::text[], $23::text[], $24::text[], $25::text[], $26::text[], $27::bigint[],
                $28::text[], $29::text[], $63::text[])
         AS e (budget_id, period_start, entry_type, spent_delta, held_delta, limit_delta, reservation_id,
               request_id, overrun, late, kind, model, input_tokens, output_tokens, cache_read_tokens,
               cache_write_tokens, sandbox_nanos, api_name, api_calls, task_id, task_type, labels,
               catalog_version, counterparty, reason, reasoning_tokens, sandbox_class, provider, principal)
    WHERE (SELECT ok FROM go)
    RETURNING id
),
granted AS (
    INSERT INTO reservations (budget_id, reservation_id, period_start, amount_nanos, state, created_at,
                              expires_at, ended_at, committed_nanos, overrun, late, details,
                              reserve_fingerprint, reserve_response, end_fingerprint, end_response)
    SELECT r.budget_id, r.reservation_id, r.period_start, r.amount_nanos, r.state, r.created_at, r.expires_at,
           r.ended_at, r.committed_nanos, r.overrun, r.late, r.details::jsonb, r.reserve_fingerprint,
           r.reserve_response, r.end_fingerprint, r.end_response
    FROM unnest($30::bigint[], $31::text[], $32::timestamptz[], $33::bigint[], $34::text[], $35::timestamptz[],
                $36::timestamptz[], $37::timestamptz[], $38::bigint[], $39::boolean[], $40::boolean[],
                $41::text[], $42::bytea[], $43::bytea[], $44::bytea[], $45::bytea[])
         AS r (budget_id, reservation_id, period_start, amount_nanos, state, created_at, expires_at, ended_at,
               committed_nanos, overrun, late, details, reserve_fingerprint, reserve_response,
               end_fingerprint, end_response)
    WHERE (SELECT ok FROM go)
    RETURNING 1
),
ended AS (
    UPDATE reservations r
    SET state = u.state, ended_at = u.ended_at, committed_nanos = u.committed_nanos, overrun = u.overrun,
        late = u.late, details = u.details::jsonb, end_fingerprint = u.end_fingerprint,
        end_response = u.end_response
    FROM unnest($46::bigint[], $47::text[], $48::text[], $49::timestamptz[], $50::bigint[], $51::boolean[],
                $52::boolean[], $53::text[], $54::bytea[], $55::bytea[])
         AS u (budget_id, reservation_id, state, ended_at, committed_nanos, overrun, late, details,
               end_fingerprint, end_response)
    WHERE r.budget_id = u.budget_id AND r.reservation_id = u.reservation_id AND (SELECT ok FROM go)
    RETURNING 1
),
balances AS (
    UPDATE budget_periods p
    SET limit_nanos = b.limit_nanos, spent_nanos = b.spent_nanos, held_nanos = b.held_nanos,
        crossed_ppm = b.crossed_ppm::integer[], phase = b.phase
    FROM unnest($56::bigint[], $57::timestamptz[], $58::bigint[], $59::bigint[], $60::bigint[], $61::text[],
                $62::text[])
         AS b (budget_id, period_start, limit_nanos, spent_nanos, held_nanos, crossed_ppm, phase)
    WHERE p.budget_id = b.budget_id AND p.period_start = b.period_start AND (SELECT ok FROM go)
    RETURNING 1
)
SELECT id FROM entries;

-- name: insert_events
-- The last statement of a transaction that has events: taking the counter row last serialises
-- only the final moments of event-writing transactions, and makes ids increase in commit order.
WITH seq AS (
    UPDATE event_sequence SET last_id = last_id + cardinality($1::text[]) RETURNING last_id
)
INSERT INTO events (id, budget_id, budget_name, event_type, created_at, payload, principal)
SELECT seq.last_id - cardinality($1::text[]) + e.ord, e.budget_id, e.budget_name, e.event_type, $5,
       e.payload::jsonb, e.principal
FROM seq,
     unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $6::text[])
         WITH ORDINALITY AS e (event_type, budget_id, budget_name, payload, principal, ord);

-- name: get_idempotency_key
SELECT fingerprint, response FROM idempotency_keys WHERE scope = $1 AND request_id = $2;

-- name: insert_idempotency_key
INSERT INTO idempotency_keys (scope, request_id, fingerprint, response) VALUES ($1, $2, $3, $4);

-- name: get_idempotency_keys
-- By primary key, one probe per id (see get_reservations): a budget's keys grow like its holds.
SELECT found.* FROM unnest($2::text[]) AS wanted (id)
CROSS JOIN LATERAL (
    SELECT request_id, fingerprint, response FROM idempotency_keys
    WHERE scope = $1 AND request_id = wanted.id LIMIT 1
) AS found;

-- name: insert_idempotency_keys
INSERT INTO idempotency_keys (scope, request_id, fingerprint, response)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]);

-- name: read_budget
SELECT b.*, p.limit_nanos AS p_limit, p.spent_nanos, p.held_nanos, p.crossed_ppm, p.phase,
       agentbudget_now() AS now
FROM budgets b
JOIN budget_periods p ON p.budget_id = b.id AND p.period_start = b.period_start
WHERE b.name = $1 AND b.deleted_at IS NULL;

-- name: list_budgets
SELECT b.*, p.limit_nanos AS p_limit, p.spent_nanos, p.held_nanos, p.crossed_ppm, p.phase,
       agentbudget_now() AS now
FROM budgets b
JOIN budget_periods p ON p.budget_id = b.id AND p.period_start = b.period_start
WHERE b.deleted_at IS NULL AND b.name > $1 AND ($2 = '' OR b.name LIKE $2 || '/%')
ORDER BY b.name
LIMIT $3;

-- name: find_budget_id
-- Deleted budgets included: their ledger stays readable for audit.
SELECT id FROM budgets WHERE name = $1;

-- name: list_entries
SELECT e.*, b.name AS budget_name, b.currency
FROM ledger_entries e JOIN budgets b ON b.id = e.budget_id
WHERE e.budget_id = $1 AND e.id > $2
  AND ($3::timestamptz IS NULL OR e.created_at >= $3)
  AND ($4::timestamptz IS NULL OR e.created_at < $4)
ORDER BY e.id
LIMIT $5;

-- name: list_events
SELECT e.*, b.currency
FROM events e JOIN budgets b ON b.id = e.budget_id
WHERE e.id > $1
  AND (cardinality($2::text[]) = 0 OR e.budget_name = ANY ($2))
  AND (cardinality($3::text[]) = 0 OR e.event_type = ANY ($3))
ORDER BY e.id
LIMIT $4;

-- name: due_budgets
-- Budgets with holds past their TTL (through the partial index on ACTIVE holds), or whose
-- period has ended: the sweeper's work list.
SELECT b.name
FROM budgets b
WHERE b.id IN (SELECT r.budget_id FROM reservations r
               WHERE r.state = 'ACTIVE' AND r.expires_at <= agentbudget_now()
               ORDER BY r.expires_at
               LIMIT $1)
UNION
SELECT b.name FROM budgets b WHERE b.deleted_at IS NULL AND b.period_end <= agentbudget_now()
LIMIT $1;

-- name: audit_balances
-- Every period whose materialised balance differs from the sum of its ledger rows.
SELECT b.name, p.period_start, p.limit_nanos, p.spent_nanos, p.held_nanos,
       coalesce(l.limit_sum, 0) AS ledger_limit, coalesce(l.spent_sum, 0) AS ledger_spent,
       coalesce(l.held_sum, 0) AS ledger_held,
       coalesce(r.active_sum, 0) AS active_holds
FROM budget_periods p
JOIN budgets b ON b.id = p.budget_id
LEFT JOIN (SELECT budget_id, period_start, sum(limit_delta) AS limit_sum, sum(spent_delta) AS spent_sum,
                  sum(held_delta) AS held_sum
           FROM ledger_entries GROUP BY budget_id, period_start) l
       ON l.budget_id = p.budget_id AND l.period_start = p.period_start
LEFT JOIN (SELECT budget_id, period_start, sum(amount_nanos) AS active_sum
           FROM reservations WHERE state = 'ACTIVE' GROUP BY budget_id, period_start) r
       ON r.budget_id = p.budget_id AND r.period_start = p.period_start
WHERE p.limit_nanos <> coalesce(l.limit_sum, 0)
   OR p.spent_nanos <> coalesce(l.spent_sum, 0)
   OR p.held_nanos <> coalesce(l.held_sum, 0)
   OR p.held_nanos <> coalesce(r.active_sum, 0);

-- name: now
SELECT agentbudget_now();
