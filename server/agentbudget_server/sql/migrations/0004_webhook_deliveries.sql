-- Positions of the readers that consume the event outbox or the ledger exactly once across all
-- replicas: each alert webhook ('webhook:<digest of kind and URL>' — the URL, often a secret, is
-- never stored) and the metrics tallies ('metrics:ledger', 'metrics:events').
CREATE TABLE read_cursors (
    name        text        PRIMARY KEY,
    last_id     bigint      NOT NULL,
    -- Ledger ids are not in commit order: a gap at or below seen_id is final (a rolled-back
    -- write) once every transaction older than horizon_xid has ended.
    seen_id     bigint      NOT NULL DEFAULT 0,
    horizon_xid bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
