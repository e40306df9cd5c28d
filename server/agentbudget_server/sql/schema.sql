-- The whole schema as the migrations leave it; a test checks that applying every migration yields it.
-- The ledger, the holds, the periods and the event outbox.
-- Money is integer nano-units (1e-9 of the budget's currency) in bigint columns.

-- The authority's clock. The database's, so every replica agrees; a database-level setting
-- agentbudget.clock_offset (an interval) moves it, which is how tests let a month pass.
CREATE FUNCTION agentbudget_now() RETURNS timestamptz
    LANGUAGE sql VOLATILE AS $$
    SELECT clock_timestamp()
           + coalesce(nullif(current_setting('agentbudget.clock_offset', true), '')::interval, interval '0')
$$;

CREATE TABLE budgets (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text        NOT NULL UNIQUE,           -- "namespace/name"
    currency        text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    limit_nanos     bigint      NOT NULL CHECK (limit_nanos >= 0),
    period          text        NOT NULL CHECK (period IN ('MONTHLY', 'WEEKLY', 'DAILY')),
    time_zone       text        NOT NULL DEFAULT '',
    thresholds_ppm  integer[]   NOT NULL,
    paused          boolean     NOT NULL DEFAULT false,
    labels          jsonb       NOT NULL DEFAULT '{}',
    routing         jsonb       NOT NULL DEFAULT '{}',      -- overrides of the default routing
    -- the period the budget is in now; the next operation after period_end opens a new one
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);

CREATE INDEX budgets_period_end_idx ON budgets (period_end) WHERE deleted_at IS NULL;

-- Materialised balances of one period, updated in the same transaction as the ledger rows
-- whose sums they are.
CREATE TABLE budget_periods (
    budget_id       bigint      NOT NULL REFERENCES budgets (id),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    limit_nanos     bigint      NOT NULL,   -- effective: spec limit + transfers in - out
    spent_nanos     bigint      NOT NULL DEFAULT 0,
    held_nanos      bigint      NOT NULL DEFAULT 0 CHECK (held_nanos >= 0),
    crossed_ppm     integer[]   NOT NULL DEFAULT '{}',
    phase           text        NOT NULL CHECK (phase IN ('ACTIVE', 'WARNING', 'EXHAUSTED', 'PAUSED')),
    PRIMARY KEY (budget_id, period_start)
);

CREATE TABLE reservations (
    budget_id           bigint      NOT NULL REFERENCES budgets (id),
    reservation_id      text        NOT NULL,
    period_start        timestamptz NOT NULL,
    amount_nanos        bigint      NOT NULL CHECK (amount_nanos >= 0),
    state               text        NOT NULL CHECK (state IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED')),
    created_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    ended_at            timestamptz,
    committed_nanos     bigint,
    overrun             boolean     NOT NULL DEFAULT false,
    late                boolean     NOT NULL DEFAULT false,
    details             jsonb       NOT NULL DEFAULT '{}',
    -- idempotency: a digest of the request and the response it got, replayed verbatim
    reserve_fingerprint bytea       NOT NULL,
    reserve_response    bytea       NOT NULL,
    end_fingerprint     bytea,
    end_response        bytea,
    PRIMARY KEY (budget_id, reservation_id),
    FOREIGN KEY (budget_id, period_start) REFERENCES budget_periods (budget_id, period_start)
);

CREATE INDEX reservations_due_idx ON reservations (expires_at) WHERE state = 'ACTIVE';

CREATE TABLE ledger_entries (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    budget_id           bigint      NOT NULL REFERENCES budgets (id),
    period_start        timestamptz NOT NULL,
    entry_type          text        NOT NULL CHECK (entry_type IN (
                            'PERIOD_OPENED', 'HOLD', 'COMMIT', 'RELEASE', 'EXPIRY', 'CHARGE',
                            'LIMIT_CHANGED', 'TRANSFER_OUT', 'TRANSFER_IN')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    spent_delta         bigint      NOT NULL DEFAULT 0,
    held_delta          bigint      NOT NULL DEFAULT 0,
    limit_delta         bigint      NOT NULL DEFAULT 0,
    reservation_id      text,
    request_id          text,
    overrun             boolean     NOT NULL DEFAULT false,
    late                boolean     NOT NULL DEFAULT false,
    kind                text,
    model               text,
    input_tokens        bigint,
    output_tokens       bigint,
    cache_read_tokens   bigint,
    cache_write_tokens  bigint,
    sandbox_nanos       bigint,
    api_name            text,
    api_calls           bigint,
    task_id             text,
    task_type           text,
    labels              jsonb       NOT NULL DEFAULT '{}',
    catalog_version     text,
    counterparty        text,
    reason              text,
    reasoning_tokens    bigint,
    sandbox_class       text,
    provider            text,
    FOREIGN KEY (budget_id, period_start) REFERENCES budget_periods (budget_id, period_start)
);

CREATE INDEX ledger_entries_budget_time_idx ON ledger_entries (budget_id, created_at, id);
CREATE INDEX ledger_entries_reservation_idx ON ledger_entries (budget_id, reservation_id)
    WHERE reservation_id IS NOT NULL;

CREATE FUNCTION agentbudget_ledger_is_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION agentbudget_ledger_is_append_only();

-- Replays of RecordCost and Transfer.
CREATE TABLE idempotency_keys (
    scope           text        NOT NULL,   -- 'charge:<budget id>' or 'transfer'
    request_id      text        NOT NULL,
    fingerprint     bytea       NOT NULL,
    response        bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, request_id)
);

-- The event outbox. Ids come from a one-row counter taken as the last write of a transaction,
-- so they increase in commit order and a reader resuming after id N never misses one.
CREATE TABLE event_sequence (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id     bigint  NOT NULL
);
INSERT INTO event_sequence VALUES (true, 0);

CREATE TABLE events (
    id          bigint      PRIMARY KEY,
    budget_id   bigint      NOT NULL REFERENCES budgets (id),
    budget_name text        NOT NULL,
    event_type  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL
);

CREATE INDEX events_budget_idx ON events (budget_name, id);

CREATE FUNCTION agentbudget_notify_events() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentbudget_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION agentbudget_notify_events();

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
