-- The claim as one function: one round trip instead of four (BEGIN, the
-- lock, the claim, COMMIT), which were half of a claim's time in
-- `datask-bench burndown`. Called outside a transaction, it is its own:
-- the advisory lock ends with it. Each statement of a plpgsql function
-- takes a fresh snapshot, so the claim sees every commit made before the
-- lock was granted.
--
-- One claimer at a time across nodes, so that the running counts are exact
-- and per-tenant limits hold. Candidates are read in queue order from the
-- READY rows, skipping tenants already at their limit, so that a tenant with
-- a long backlog cannot hide the others' tasks; each tenant then gets at
-- most its free slots, in queue order. Only the chosen rows are locked (the
-- lock is a write to every row it takes): claims are serialised already,
-- and SKIP LOCKED passes over a row that a client is changing right now,
-- whose state and run_at are checked again once locked.
--
-- The candidates must come from walking `tasks_ready` in queue order,
-- stopping after the window. Right after a burst of inserts the statistics
-- still say few tasks are due, and the planner would rather collect every
-- due task (bitmap or `tasks_ready_due`) and sort them: 30-60 ms a claim at
-- 100k due. So no bitmap scans here, and `run_at` is wrapped so that
-- `tasks_ready_due` does not apply.
CREATE FUNCTION datask_claim(
    p_now         TIMESTAMPTZ,
    p_limit       BIGINT,
    p_worker      TEXT,
    p_lease_until TIMESTAMPTZ,
    p_log         JSONB,
    p_window      BIGINT
) RETURNS SETOF tasks LANGUAGE plpgsql AS $$
BEGIN
    -- "datask" on a phone keypad; any fixed number would do.
    PERFORM pg_advisory_xact_lock(3282757);
    PERFORM set_config('enable_bitmapscan', 'off', true);
    RETURN QUERY
    WITH running AS (
        SELECT tenant_id, n FROM tenant_running WHERE n > 0
    ), full_tenants AS (
        SELECT ru.tenant_id FROM running ru JOIN tenants te ON te.id = ru.tenant_id
        WHERE ru.n >= te.concurrency
    ), candidates AS (
        SELECT c.id, c.tenant_id, c.priority, c.run_at FROM tasks c
        WHERE c.state = 'READY' AND c.run_at + INTERVAL '0 s' <= p_now
          AND c.tenant_id NOT IN (SELECT f.tenant_id FROM full_tenants f)
        ORDER BY c.priority, c.run_at, c.id
        LIMIT p_window
    ), ranked AS (
        SELECT c.*, ROW_NUMBER() OVER (PARTITION BY c.tenant_id ORDER BY c.priority, c.run_at, c.id) AS rn
        FROM candidates c
    ), chosen AS (
        SELECT r.id FROM ranked r
        JOIN tenants te ON te.id = r.tenant_id
        LEFT JOIN running ru ON ru.tenant_id = r.tenant_id
        WHERE r.rn + COALESCE(ru.n, 0) <= te.concurrency
        ORDER BY r.priority, r.run_at, r.id
        LIMIT p_limit
    ), locked AS (
        SELECT l.id FROM tasks l
        WHERE l.id IN (SELECT ch.id FROM chosen ch) AND l.state = 'READY' AND l.run_at <= p_now
        FOR UPDATE SKIP LOCKED
    )
    UPDATE tasks t SET state = 'INPROGRESS', attempts = t.attempts + 1, fence = nextval('task_fence_seq'),
        lease_owner = p_worker, lease_expires_at = p_lease_until, started_at = p_now,
        cancel_requested = FALSE, version = t.version + 1, modified_at = p_now, logs = t.logs || p_log
    FROM locked WHERE t.id = locked.id
    RETURNING t.*;
END
$$;
