-- Metrics (tally.py): the ledger and the event outbox counted once across replicas, through
-- positions in read_cursors; and the budgets' gauges.

-- name: metrics_init_ledger_cursor
-- A new position starts at the end: what happened before metrics were enabled is not counted.
INSERT INTO read_cursors (name, last_id)
SELECT $1, coalesce(max(id), 0) FROM ledger_entries
ON CONFLICT (name) DO NOTHING;

-- name: metrics_init_events_cursor
INSERT INTO read_cursors (name, last_id)
SELECT $1, coalesce(max(id), 0) FROM events
ON CONFLICT (name) DO NOTHING;

-- name: metrics_claim_cursor
-- One replica reads on at a time; the others skip this round rather than wait.
SELECT last_id, seen_id, horizon_xid FROM read_cursors WHERE name = $1 FOR UPDATE SKIP LOCKED;

-- name: metrics_move_cursor
UPDATE read_cursors SET last_id = $2, seen_id = $3, horizon_xid = $4, updated_at = now() WHERE name = $1;

-- name: metrics_ledger_ids_after
-- The ledger ids after the position and the snapshot they were read in: one statement, one snapshot.
SELECT array(SELECT id FROM ledger_entries WHERE id > $1 ORDER BY id LIMIT $2) AS ids,
       pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax;

-- name: metrics_tally_ledger
SELECT b.name AS budget, b.currency, e.entry_type, coalesce(e.kind, '') AS kind, coalesce(e.model, '') AS model,
       count(*) AS entries, sum(e.spent_delta) AS spent_nanos
FROM ledger_entries e
JOIN budgets b ON b.id = e.budget_id
WHERE e.id > $1 AND e.id <= $2 AND e.entry_type IN ('HOLD', 'COMMIT', 'CHARGE', 'RELEASE', 'EXPIRY')
GROUP BY b.name, b.currency, e.entry_type, coalesce(e.kind, ''), coalesce(e.model, '');

-- name: metrics_tally_events
-- Event ids increase in commit order without gaps, so a plain position suffices.
WITH batch AS (SELECT id, event_type, budget_name FROM events WHERE id > $1 ORDER BY id LIMIT $2)
SELECT event_type, budget_name, count(*) AS events, max(id) AS last_id
FROM batch
GROUP BY event_type, budget_name;

-- name: metrics_budget_gauges
SELECT b.name, b.currency, b.thresholds_ppm, p.limit_nanos, p.spent_nanos, p.held_nanos, p.phase
FROM budgets b
JOIN budget_periods p ON p.budget_id = b.id AND p.period_start = b.period_start
WHERE b.deleted_at IS NULL;
