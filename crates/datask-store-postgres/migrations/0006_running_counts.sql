-- Running tasks per tenant, kept by the database itself.
--
-- Every claim needs each tenant's count of INPROGRESS tasks. Counting them
-- through the partial index slowed down as a busy queue ran: each task
-- passes through INPROGRESS once, and until VACUUM runs every passage leaves
-- a dead entry that a bitmap scan reads again (64k entries for one live row
-- in `datask-bench burndown`). A counter per tenant costs one row, and the
-- statement-level trigger below keeps it exact: it sees every change of
-- `state`, whoever makes it, in the same transaction.

CREATE TABLE tenant_running (
    tenant_id BIGINT PRIMARY KEY REFERENCES tenants (id),
    n         BIGINT NOT NULL
);

INSERT INTO tenant_running (tenant_id, n)
SELECT tenant_id, COUNT(*) FROM tasks WHERE state = 'INPROGRESS' GROUP BY tenant_id;

CREATE FUNCTION tenant_running_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- In tenant order, so that two statements touching the same tenants
    -- lock their counters in the same order.
    INSERT INTO tenant_running AS r (tenant_id, n)
    SELECT tenant_id, SUM(d) FROM (
        SELECT tenant_id, 1 AS d FROM new_rows WHERE state = 'INPROGRESS'
        UNION ALL
        SELECT tenant_id, -1 AS d FROM old_rows WHERE state = 'INPROGRESS'
    ) changes
    GROUP BY tenant_id
    HAVING SUM(d) <> 0
    ORDER BY tenant_id
    ON CONFLICT (tenant_id) DO UPDATE SET n = r.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

-- Tasks are inserted READY and deleted only when not running, so these two
-- never fire in practice; their WHEN clauses keep them free when they don't.
CREATE FUNCTION tenant_running_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_running AS r (tenant_id, n) VALUES (NEW.tenant_id, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET n = r.n + 1;
    RETURN NULL;
END
$$;

CREATE FUNCTION tenant_running_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenant_running SET n = n - 1 WHERE tenant_id = OLD.tenant_id;
    RETURN NULL;
END
$$;

-- (Transition tables rule out `UPDATE OF state`: a heartbeat fires it too,
-- and finds nothing to count.)
CREATE TRIGGER tasks_running_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_running_count();
CREATE TRIGGER tasks_running_insert AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.state = 'INPROGRESS') EXECUTE FUNCTION tenant_running_add();
CREATE TRIGGER tasks_running_delete AFTER DELETE ON tasks
    FOR EACH ROW WHEN (OLD.state = 'INPROGRESS') EXECUTE FUNCTION tenant_running_remove();

-- Counting is the counter's job now; every claim and completion wrote to
-- this index for nothing.
DROP INDEX tasks_running_tenant;
