-- Alert webhooks (webhooks.py): one delivering replica per webhook, a position per webhook.

-- name: webhook_init_cursor
-- A webhook configured for the first time starts at the newest event: no flood of old alerts.
INSERT INTO read_cursors (name, last_id)
SELECT $1, coalesce(max(id), 0) FROM events
ON CONFLICT (name) DO NOTHING;

-- name: webhook_try_lock
-- A session lock on the webhook's own connection: it ends with the session, so a replica that
-- dies hands the delivery over to another.
SELECT pg_try_advisory_lock($1, hashtext($2));

-- name: webhook_position
SELECT last_id FROM read_cursors WHERE name = $1;

-- name: webhook_move
-- Compare-and-set: a position moves only from where its holder last left it.
UPDATE read_cursors SET last_id = $3, updated_at = now() WHERE name = $1 AND last_id = $2;

-- name: webhook_alerts
SELECT e.*, b.currency
FROM events e
JOIN budgets b ON b.id = e.budget_id
WHERE e.id > $1 AND e.event_type = ANY ($2::text[])
ORDER BY e.id
LIMIT $3;

-- name: webhook_head
SELECT coalesce(max(id), 0) FROM events;
