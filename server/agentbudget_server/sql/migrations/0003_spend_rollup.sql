-- Spend reports: committed spend (COMMIT and CHARGE rows) summed per budget, UTC day and month,
-- kind, model and task type, kept by a trigger in the very transaction that writes the ledger
-- rows, so a report over whole days or months never scans the ledger. Labels, other time zones
-- and the partial days at the ends of a range are answered from the ledger itself.
--
-- '' stands for "none recorded" in the key columns, so the keys have no NULLs. The sums are
-- numeric: a rollup must never make a ledger write fail on overflow. No foreign key to budgets:
-- the rows are derived from ledger rows that have one, and the check would cost every write.

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

-- Created before the backfill: the trigger's lock on ledger_entries keeps writers out until this
-- migration commits, so no row is missed or counted twice.
CREATE TRIGGER ledger_entries_spend_rollup
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION agentbudget_roll_up_spend();

INSERT INTO spend_daily (budget_id, day, kind, model, task_type, cost_nanos, entries, input_tokens, output_tokens,
                         cache_read_tokens, cache_write_tokens, sandbox_nanos)
SELECT budget_id, (created_at AT TIME ZONE 'UTC')::date, coalesce(kind, ''), coalesce(model, ''),
       coalesce(task_type, ''), sum(spent_delta), count(*), coalesce(sum(input_tokens), 0),
       coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0),
       coalesce(sum(sandbox_nanos), 0)
FROM ledger_entries
WHERE entry_type IN ('COMMIT', 'CHARGE')
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO spend_monthly (budget_id, month, kind, model, task_type, cost_nanos, entries, input_tokens,
                           output_tokens, cache_read_tokens, cache_write_tokens, sandbox_nanos)
SELECT budget_id, date_trunc('month', day::timestamp)::date, kind, model, task_type, sum(cost_nanos), sum(entries),
       sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(sandbox_nanos)
FROM spend_daily
GROUP BY 1, 2, 3, 4, 5;

-- For what the rollup cannot answer. Entries are written in time order, so a BRIN index finds a
-- time range of the whole fleet for the cost of a few pages per write; label filters go
-- through a GIN index of the cost rows' labels.
CREATE INDEX ledger_entries_created_brin ON ledger_entries USING brin (created_at);
CREATE INDEX ledger_entries_cost_labels_idx ON ledger_entries USING gin (labels jsonb_path_ops)
    WHERE entry_type IN ('COMMIT', 'CHARGE') AND labels <> '{}';
