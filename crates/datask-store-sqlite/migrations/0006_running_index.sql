-- One partial index over running tasks instead of two. A claim moved each
-- task into both (`lease_expires_at` for the lease sweep, `tenant_id` for
-- the running counts) and its end out of both: four B-tree writes a task of
-- the burn-down's five. Leading with `tenant_id` serves the counts' GROUP
-- BY; the lease sweep reads the whole index, which holds only the tasks
-- running now (at most the engines' slots).
DROP INDEX tasks_running;
DROP INDEX tasks_running_tenant;
CREATE INDEX tasks_running ON tasks (tenant_id, lease_expires_at) WHERE state = 'INPROGRESS';
