-- Run ends and the next claim in one round trip.
--
-- `datask-bench burndown` spent its time in a chain of small steps: a
-- claim of ~28 tasks (0.8 ms fixed + 20 µs a task), their completion batch
-- (0.1 ms + 11 µs a task), a wake-up, the next claim. With the server a
-- third idle, the chain, not the server, set the pace. The engine's
-- completion writer now records a batch of ends and claims as many tasks as
-- the freed slots allow in one call, so each trip carries both halves and
-- claims are as large as the batches.

-- Records run ends (one statement for the batch, every column one array)
-- and answers the ids whose fence no longer held; those rows are untouched.
CREATE FUNCTION datask_complete(
    p_ids         BIGINT[],
    p_fences      BIGINT[],
    p_states      TEXT[],
    p_errors      JSONB[],
    p_outputs     JSONB[],
    p_results     TEXT[],
    p_nows        TIMESTAMPTZ[],
    p_reschedules TIMESTAMPTZ[],
    p_onces       JSONB[],
    p_logs        JSONB[]
) RETURNS SETOF BIGINT LANGUAGE plpgsql AS $$
DECLARE
    recorded BIGINT[];
    rescheduled BOOLEAN;
BEGIN
    WITH ended AS (
        UPDATE tasks t SET state = d.state, errors = d.errors, output = d.output, result = d.result,
            finished_at = d.now, modified_at = d.now,
            version = t.version + 1, lease_owner = NULL, lease_expires_at = NULL, checkpoint = NULL,
            run_at = COALESCE(d.reschedule, t.run_at),
            attempts = CASE WHEN d.reschedule IS NULL THEN t.attempts ELSE 0 END,
            trigger = CASE WHEN d.reschedule IS NULL THEN t.trigger ELSE jsonb_set(t.trigger, '{once}', d.once) END,
            logs = t.logs || d.logs
        FROM UNNEST(p_ids, p_fences, p_states, p_errors, p_outputs, p_results,
                    p_nows, p_reschedules, p_onces, p_logs)
             AS d(id, fence, state, errors, output, result, now, reschedule, once, logs)
        WHERE t.id = d.id AND t.fence = d.fence AND t.state = 'INPROGRESS'
        RETURNING t.id, t.state
    )
    SELECT COALESCE(array_agg(e.id), '{}'), COALESCE(bool_or(e.state = 'READY'), FALSE)
    INTO recorded, rescheduled FROM ended e;
    -- A repeating task waits for its next run: wake the workers.
    IF rescheduled THEN
        PERFORM pg_notify('datask_work', '');
    END IF;
    RETURN QUERY SELECT i FROM UNNEST(p_ids) i WHERE i <> ALL (recorded);
END
$$;

-- `datask_complete`, then `datask_claim` (0007), in one transaction: the
-- claim sees the running counts the ends lowered. Lost ends come first, as
-- rows whose only fields are `id` and `state` = 'LOST' (a `tasks` row, so
-- that one result carries both answers); the claimed tasks follow.
--
-- The claim lock is taken before the ends are written: they lock tenants'
-- `tenant_running` rows, which another node's claim (holding the claim
-- lock) may be waiting for. Taking it first keeps the order every claim
-- uses (claim lock, then counters), so the two cannot deadlock.
CREATE FUNCTION datask_complete_and_claim(
    p_ids         BIGINT[],
    p_fences      BIGINT[],
    p_states      TEXT[],
    p_errors      JSONB[],
    p_outputs     JSONB[],
    p_results     TEXT[],
    p_nows        TIMESTAMPTZ[],
    p_reschedules TIMESTAMPTZ[],
    p_onces       JSONB[],
    p_logs        JSONB[],
    p_now         TIMESTAMPTZ,
    p_limit       BIGINT,
    p_worker      TEXT,
    p_lease_until TIMESTAMPTZ,
    p_log         JSONB,
    p_window      BIGINT
) RETURNS SETOF tasks LANGUAGE plpgsql AS $$
BEGIN
    -- The same number as datask_claim's.
    PERFORM pg_advisory_xact_lock(3282757);
    RETURN QUERY
    SELECT (jsonb_populate_record(NULL::tasks, jsonb_build_object('id', lost, 'state', 'LOST'))).*
    FROM datask_complete(p_ids, p_fences, p_states, p_errors, p_outputs, p_results,
                         p_nows, p_reschedules, p_onces, p_logs) lost;
    RETURN QUERY SELECT * FROM datask_claim(p_now, p_limit, p_worker, p_lease_until, p_log, p_window);
END
$$;
