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
