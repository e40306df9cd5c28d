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

-- Spend reports: committed spend (COMMIT and CHARGE rows) summed per budget, UTC day and month,
-- kind, model and task type, kept by a trigger in the transaction that writes the ledger rows.
-- '' stands for "none recorded" in the key columns; the sums are numeric so that the rollup can
-- never make a ledger write fail on overflow.
CREATE TABLE spend_daily (
    budget_id           bigint  NOT NULL,
    day                 date    NOT NULL,   -- UTC
    kind                text    NOT NULL,
    model               text    NOT NULL,
    task_type           text    NOT NULL,
    cost_nanos          numeric NOT NULL,
    entries             bigint  NOT NULL,
    input_tokens        numeric NOT NULL,
    output_tokens       numeric NOT NULL,
    cache_read_tokens   numeric NOT NULL,
    cache_write_tokens  numeric NOT NULL,
    sandbox_nanos       numeric NOT NULL,
    PRIMARY KEY (budget_id, day, kind, model, task_type)
) WITH (fillfactor = 80);   -- room for HOT updates: the sums change, no indexed column does

CREATE INDEX spend_daily_day_idx ON spend_daily (day);

CREATE TABLE spend_monthly (
    budget_id           bigint  NOT NULL,
    month               date    NOT NULL,   -- the first day of the UTC month
    kind                text    NOT NULL,
    model               text    NOT NULL,
    task_type           text    NOT NULL,
    cost_nanos          numeric NOT NULL,
    entries             bigint  NOT NULL,
    input_tokens        numeric NOT NULL,
    output_tokens       numeric NOT NULL,
    cache_read_tokens   numeric NOT NULL,
    cache_write_tokens  numeric NOT NULL,
    sandbox_nanos       numeric NOT NULL,
    PRIMARY KEY (budget_id, month, kind, model, task_type)
) WITH (fillfactor = 80);

CREATE INDEX spend_monthly_month_idx ON spend_monthly (month);

-- Once per INSERT statement, over all the rows it wrote (a multi-row insert is one upsert per
-- key, not one per row). Rows of one budget are only written under that budget's row lock, so
-- two transactions never race for the same rollup row; the ORDER BY keeps the lock order fixed
-- anyway.
CREATE FUNCTION agentbudget_roll_up_spend() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM new_entries WHERE entry_type IN ('COMMIT', 'CHARGE')) THEN
        RETURN NULL;  -- holds, releases, expiries: nothing to roll up
    END IF;
    INSERT INTO spend_daily AS s (budget_id, day, kind, model, task_type, cost_nanos, entries, input_tokens,
                                  output_tokens, cache_read_tokens, cache_write_tokens, sandbox_nanos)
    SELECT budget_id, (created_at AT TIME ZONE 'UTC')::date, coalesce(kind, ''), coalesce(model, ''),
           coalesce(task_type, ''), sum(spent_delta), count(*), coalesce(sum(input_tokens), 0),
           coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0),
           coalesce(sum(cache_write_tokens), 0), coalesce(sum(sandbox_nanos), 0)
    FROM new_entries
    WHERE entry_type IN ('COMMIT', 'CHARGE')
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (budget_id, day, kind, model, task_type) DO UPDATE
    SET cost_nanos = s.cost_nanos + EXCLUDED.cost_nanos,
        entries = s.entries + EXCLUDED.entries,
        input_tokens = s.input_tokens + EXCLUDED.input_tokens,
        output_tokens = s.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = s.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = s.cache_write_tokens + EXCLUDED.cache_write_tokens,
        sandbox_nanos = s.sandbox_nanos + EXCLUDED.sandbox_nanos;

    INSERT INTO spend_monthly AS s (budget_id, month, kind, model, task_type, cost_nanos, entries, input_tokens,
                                    output_tokens, cache_read_tokens, cache_write_tokens, sandbox_nanos)
    SELECT budget_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, coalesce(kind, ''),
           coalesce(model, ''), coalesce(task_type, ''), sum(spent_delta), count(*),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0),
           coalesce(sum(cache_write_tokens), 0), coalesce(sum(sandbox_nanos), 0)
    FROM new_entries
    WHERE entry_type IN ('COMMIT', 'CHARGE')
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (budget_id, month, kind, model, task_type) DO UPDATE
    SET cost_nanos = s.cost_nanos + EXCLUDED.cost_nanos,
        entries = s.entries + EXCLUDED.entries,
        input_tokens = s.input_tokens + EXCLUDED.input_tokens,
        output_tokens = s.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = s.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = s.cache_write_tokens + EXCLUDED.cache_write_tokens,
        sandbox_nanos = s.sandbox_nanos + EXCLUDED.sandbox_nanos;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_entries_spend_rollup
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION agentbudget_roll_up_spend();

-- For what the rollup cannot answer. Entries are written in time order, so a BRIN index finds a
-- time range of the whole fleet for the cost of a few pages per write; label filters go
-- through a GIN index of the cost rows' labels.
CREATE INDEX ledger_entries_created_brin ON ledger_entries USING brin (created_at);
CREATE INDEX ledger_entries_cost_labels_idx ON ledger_entries USING gin (labels jsonb_path_ops)
    WHERE entry_type IN ('COMMIT', 'CHARGE') AND labels <> '{}';

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

-- Who may spend from a budget as its agent, and who caused each ledger row and event.
ALTER TABLE budgets ADD COLUMN agent_principals text[] NOT NULL DEFAULT '{}';
ALTER TABLE ledger_entries ADD COLUMN principal text;
ALTER TABLE events ADD COLUMN principal text;

-- Every change of a budget's money, holds or spec moves its version: a batch that read the
-- budget without its lock writes only if the version is still the one it read (write_unit).
ALTER TABLE budgets ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- A budget's lock and what its transaction reads first, in one round trip: the budget row (locked),
-- the database clock, its current period and the named reservations. The function's statements
-- run one after another, each with a snapshot of its own (a VOLATILE function under READ
-- COMMITTED): the period and the holds are read after the lock is granted, so they include the
-- previous holder's changes. (One statement could not do that: its snapshot predates the wait.)
-- The first row carries the budget, the clock and the period; each further row one reservation
-- found; no row: no such budget.
CREATE FUNCTION agentbudget_lock(p_name text, p_include_deleted boolean, p_holds text[])
    RETURNS TABLE (budget budgets, now timestamptz, period budget_periods, hold reservations)
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT b.* INTO budget FROM budgets b
    WHERE b.name = p_name AND (p_include_deleted OR b.deleted_at IS NULL)
    FOR UPDATE OF b;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    now := agentbudget_now();
    SELECT p.* INTO period FROM budget_periods p
    WHERE p.budget_id = (budget).id AND p.period_start = (budget).period_start;
    RETURN NEXT;
    -- One primary-key probe per id, whatever the statistics say: a plain `= ANY` join was planned
    -- as a scan of all of the budget's reservations while the table grew faster than ANALYZE ran.
    -- LIMIT keeps the planner from flattening the probe into a join over the same scan.
    RETURN QUERY
    SELECT NULL::budgets, NULL::timestamptz, NULL::budget_periods, found.r
    FROM unnest(p_holds) AS wanted (id)
    CROSS JOIN LATERAL (
        SELECT r FROM reservations r
        WHERE r.budget_id = (budget).id AND r.reservation_id = wanted.id
        LIMIT 1
    ) AS found;
END
$$;
