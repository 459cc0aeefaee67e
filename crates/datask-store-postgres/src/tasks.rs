//! Tenants, credentials, tasks, leases and uploads on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use datask_core::index::IndexDef;
use datask_core::query::{Param, TaskQuery};
use datask_core::segment::Filter;
use datask_core::settings::ProfileSettings;
use datask_core::store::*;
use datask_core::task::{LogEntry, NewTask, Task, TaskUpdate};
use datask_core::{TaskId, TaskState, TenantId};
use jiff::Timestamp;
use serde_json::Value as Json;
use sqlx::postgres::PgRow;
use sqlx::types::Json as J;
use sqlx::{Postgres, Row, Transaction};

use crate::{PgStore, WORK_CHANNEL, backend};

const TASK_COLUMNS: &str = "id, tenant_id, identifier, \"desc\", state, trigger, target, logs, errors, \
     progress_done, progress_total, output, result, version, attempts, max_attempts, debug, priority, \
     cancel_requested, created_at, modified_at, started_at, finished_at, run_at, schedule_anchor, checkpoint";

fn us(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn ts(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::MAX)
}

fn decode<T: serde::de::DeserializeOwned>(v: Json) -> Result<T, sqlx::Error> {
    serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn task_from_row(r: &PgRow) -> Result<Task, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(Task {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        identifier: r.try_get("identifier")?,
        desc: r.try_get("desc")?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Fatal),
        trigger: decode(r.try_get::<J<Json>, _>("trigger")?.0)?,
        target: decode(r.try_get::<J<Json>, _>("target")?.0)?,
        logs: decode(r.try_get::<J<Json>, _>("logs")?.0)?,
        errors: decode(r.try_get::<J<Json>, _>("errors")?.0)?,
        progress_done: r.try_get("progress_done")?,
        progress_total: r.try_get("progress_total")?,
        output: r.try_get::<Option<J<Json>>, _>("output")?.map(|j| j.0),
        result: r.try_get("result")?,
        version: r.try_get("version")?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        debug: r.try_get("debug")?,
        priority: r.try_get("priority")?,
        cancel_requested: r.try_get("cancel_requested")?,
        created_at: ts(r.try_get("created_at")?),
        modified_at: ts(r.try_get("modified_at")?),
        started_at: r.try_get::<Option<i64>, _>("started_at")?.map(ts),
        finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(ts),
        run_at: ts(r.try_get("run_at")?),
        schedule_anchor: r.try_get::<Option<i64>, _>("schedule_anchor")?.map(ts),
        checkpoint: r.try_get::<Option<J<Json>>, _>("checkpoint")?.map(|j| j.0),
    })
}

fn logs_json(logs: &[LogEntry]) -> J<Json> {
    J(serde_json::to_value(logs).unwrap_or(Json::Array(vec![])))
}

fn to_json<T: serde::Serialize>(v: &T) -> J<Json> {
    J(serde_json::to_value(v).unwrap_or(Json::Null))
}

async fn load_for_update(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    id: TaskId,
) -> StoreResult<Task> {
    let sql =
        format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND tenant_id = $2 FOR UPDATE");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend)?;
    match row {
        Some(r) => task_from_row(&r).map_err(backend),
        None => Err(StoreError::NotFound),
    }
}

async fn load(tx: &mut Transaction<'_, Postgres>, id: TaskId) -> StoreResult<Task> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(&mut **tx)
        .await
        .map_err(backend)?;
    task_from_row(&row).map_err(backend)
}

/// Checks and locks the fence; `LeaseLost` unless INPROGRESS with it.
pub(crate) async fn check_fence(
    tx: &mut Transaction<'_, Postgres>,
    id: TaskId,
    fence: i64,
) -> StoreResult<()> {
    let ok = sqlx::query(
        "SELECT 1 FROM tasks WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS' FOR UPDATE",
    )
    .bind(id)
    .bind(fence)
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    if ok.is_some() {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(id))
    }
}

async fn notify_work(tx: &mut Transaction<'_, Postgres>) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WORK_CHANNEL)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

fn anchor_for(trigger: &datask_core::Trigger) -> Option<i64> {
    trigger.repeat.and(trigger.once).map(us)
}

#[async_trait]
impl Store for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn create_tenant(&self, new: NewTenant) -> StoreResult<Tenant> {
        let now = us(Timestamp::now());
        let id: i64 = sqlx::query_scalar("INSERT INTO tenants (name, timezone, concurrency, created_at) VALUES ($1, $2, $3, $4) RETURNING id")
            .bind(&new.name)
            .bind(&new.timezone)
            .bind(new.concurrency)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(Tenant {
            id,
            name: new.name,
            timezone: new.timezone,
            concurrency: new.concurrency,
            created_at: ts(now),
        })
    }

    async fn tenant(&self, id: TenantId) -> StoreResult<Option<Tenant>> {
        let row = sqlx::query(
            "SELECT id, name, timezone, concurrency, created_at FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| -> Result<Tenant, sqlx::Error> {
            Ok(Tenant {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                timezone: r.try_get(2)?,
                concurrency: r.try_get(3)?,
                created_at: ts(r.try_get(4)?),
            })
        })
        .transpose()
        .map_err(backend)
    }

    async fn profile_settings(&self, tenant: TenantId) -> StoreResult<ProfileSettings> {
        let row: Option<(Option<J<Json>>,)> =
            sqlx::query_as("SELECT settings FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        match row {
            None => Err(StoreError::NotFound),
            Some((None,)) => Ok(ProfileSettings::default()),
            Some((Some(j),)) => decode(j.0).map_err(backend),
        }
    }

    async fn update_tenant(&self, tenant: Tenant, settings: ProfileSettings) -> StoreResult<()> {
        let n = sqlx::query("UPDATE tenants SET name = $2, timezone = $3, concurrency = $4, settings = $5 WHERE id = $1")
            .bind(tenant.id)
            .bind(&tenant.name)
            .bind(&tenant.timezone)
            .bind(tenant.concurrency)
            .bind(to_json(&settings))
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected();
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn add_credential(&self, cred: Credential) -> StoreResult<()> {
        sqlx::query("INSERT INTO credentials (secret_sha256, tenant_id, kind) VALUES ($1, $2, $3)")
            .bind(&cred.secret_sha256)
            .bind(cred.tenant_id)
            .bind(cred.kind.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn credential_by_hash(&self, secret_sha256: &str) -> StoreResult<Option<Credential>> {
        let row = sqlx::query(
            "SELECT secret_sha256, tenant_id, kind FROM credentials WHERE secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.and_then(|r| {
            let kind: String = r.try_get(2).ok()?;
            Some(Credential {
                secret_sha256: r.try_get(0).ok()?,
                tenant_id: r.try_get(1).ok()?,
                kind: CredentialKind::parse(&kind)?,
            })
        }))
    }

    async fn create_user(&self, name: &str, token_sha256: &str) -> StoreResult<User> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (name, token_sha256, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(token_sha256)
        .bind(us(Timestamp::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(User {
            id,
            name: name.to_string(),
        })
    }

    async fn user_by_token(&self, token_sha256: &str) -> StoreResult<Option<User>> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM users WHERE token_sha256 = $1")
                .bind(token_sha256)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.map(|(id, name)| User { id, name }))
    }

    async fn set_membership(&self, tenant: TenantId, user: i64, level: Level) -> StoreResult<()> {
        let n = sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, level)
             SELECT t.id, u.id, $3 FROM tenants t, users u WHERE t.id = $1 AND u.id = $2
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET level = EXCLUDED.level",
        )
        .bind(tenant)
        .bind(user)
        .bind(level.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn membership(&self, tenant: TenantId, user: i64) -> StoreResult<Option<Level>> {
        let level: Option<String> = sqlx::query_scalar(
            "SELECT level FROM memberships WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant)
        .bind(user)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(level.as_deref().and_then(Level::parse))
    }

    async fn insert_task(&self, new: NewTask, now: Timestamp) -> StoreResult<InsertedTask> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // ON CONFLICT DO NOTHING keeps the first task of an idempotency key,
        // even when two requests race.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO tasks (tenant_id, identifier, \"desc\", state, trigger, target, max_attempts, priority,
                 created_at, modified_at, run_at, schedule_anchor, idempotency_key)
             VALUES ($1, $2, $3, 'READY', $4, $5, $6, $7, $8, $8, $9, $10, $11)
             ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(new.tenant_id)
        .bind(&new.identifier)
        .bind(&new.desc)
        .bind(to_json(&new.trigger))
        .bind(to_json(&new.target))
        .bind(new.max_attempts)
        .bind(new.priority)
        .bind(us(now))
        .bind(us(new.run_at))
        .bind(anchor_for(&new.trigger))
        .bind(&new.idempotency_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let (id, created) = match id {
            Some(id) => (id, true),
            None => {
                let id: i64 = sqlx::query_scalar(
                    "SELECT id FROM tasks WHERE tenant_id = $1 AND idempotency_key = $2",
                )
                .bind(new.tenant_id)
                .bind(&new.idempotency_key)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
                (id, false)
            }
        };
        if created {
            notify_work(&mut tx).await?;
        }
        let task = load(&mut tx, id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(InsertedTask { task, created })
    }

    async fn get_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND tenant_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| task_from_row(&r)).transpose().map_err(backend)
    }

    async fn list_tasks(&self, tenant: TenantId, f: &TaskFilter) -> StoreResult<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1
               AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR identifier = $3)
               AND ($4::bigint IS NULL OR created_at > $4) AND ($5::bigint IS NULL OR created_at < $5)
               AND ($6::bigint IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(f.state.map(|s| s.as_str()))
            .bind(&f.identifier)
            .bind(f.created_after.map(us))
            .bind(f.created_before.map(us))
            .bind(f.before_id)
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(task_from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn query_tasks(&self, tenant: TenantId, query: &TaskQuery) -> StoreResult<Vec<Task>> {
        let (where_sql, order_sql, params) = query.to_sql(2, |n| format!("${n}"));
        let n = params.len();
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND {where_sql} ORDER BY {order_sql} LIMIT ${} OFFSET ${}",
            n + 2,
            n + 3
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
        for p in params {
            q = match p {
                Param::Int(i) => q.bind(i),
                Param::Text(t) => q.bind(t),
            };
        }
        let rows = q
            .bind(query.limit)
            .bind(query.offset)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(task_from_row)
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn update_task(
        &self,
        tenant: TenantId,
        id: TaskId,
        update: TaskUpdate,
        now: Timestamp,
    ) -> StoreResult<Task> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let task = load_for_update(&mut tx, tenant, id).await?;
        if let Some(v) = update.expected_version
            && v != task.version
        {
            return Err(StoreError::VersionConflict {
                current: task.version,
            });
        }
        if task.state == TaskState::InProgress {
            return Err(StoreError::Conflict(format!(
                "task {id} is running; cancel it or wait until it finishes"
            )));
        }
        sqlx::query(
            "UPDATE tasks SET \"desc\" = $2, trigger = $3, target = $4, run_at = $5, schedule_anchor = $6,
                 version = version + 1, modified_at = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(&update.desc)
        .bind(to_json(&update.trigger))
        .bind(to_json(&update.target))
        .bind(us(update.run_at))
        .bind(anchor_for(&update.trigger))
        .bind(us(now))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        notify_work(&mut tx).await?;
        let task = load(&mut tx, id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(task)
    }

    async fn delete_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let task = load_for_update(&mut tx, tenant, id).await?;
        if task.state == TaskState::InProgress {
            return Err(StoreError::Conflict(format!(
                "task {id} is running; cancel it before deleting it"
            )));
        }
        sqlx::query("DELETE FROM task_rejects WHERE task_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn execute_now(&self, tenant: TenantId, id: TaskId, now: Timestamp) -> StoreResult<Task> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let task = load_for_update(&mut tx, tenant, id).await?;
        if task.state == TaskState::InProgress {
            return Err(StoreError::Conflict(format!(
                "task {id} is already running"
            )));
        }
        let logs = if task.state != TaskState::Ready {
            vec![LogEntry::transition(task.state, TaskState::Ready, now)]
        } else {
            vec![]
        };
        sqlx::query(
            "UPDATE tasks SET state = 'READY', run_at = $2, checkpoint = NULL, progress_done = 0, progress_total = NULL,
                 cancel_requested = FALSE, version = version + 1, modified_at = $2, logs = logs || $3 WHERE id = $1",
        )
        .bind(id)
        .bind(us(now))
        .bind(logs_json(&logs))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        notify_work(&mut tx).await?;
        let task = load(&mut tx, id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(task)
    }

    async fn request_cancel(
        &self,
        tenant: TenantId,
        id: TaskId,
        now: Timestamp,
    ) -> StoreResult<Task> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let task = load_for_update(&mut tx, tenant, id).await?;
        match task.state {
            TaskState::Ready => {
                let logs = vec![LogEntry::transition(
                    TaskState::Ready,
                    TaskState::Cancelled,
                    now,
                )];
                sqlx::query(
                    "UPDATE tasks SET state = 'CANCELLED', finished_at = $2, version = version + 1, modified_at = $2, logs = logs || $3 WHERE id = $1",
                )
                .bind(id)
                .bind(us(now))
                .bind(logs_json(&logs))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
            TaskState::InProgress => {
                sqlx::query("UPDATE tasks SET cancel_requested = TRUE, version = version + 1, modified_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(us(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            done => {
                return Err(StoreError::Conflict(format!(
                    "task {id} has already finished ({done})"
                )));
            }
        }
        let task = load(&mut tx, id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(task)
    }

    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<ClaimedTask>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // One claimer at a time across nodes, so per-tenant limits hold; the
        // lock is held for one short statement.
        sqlx::query("SELECT pg_advisory_xact_lock(7268617)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let log = logs_json(&[LogEntry::transition(
            TaskState::Ready,
            TaskState::InProgress,
            now,
        )]);
        let sql = format!(
            "WITH running AS (
                 SELECT tenant_id, COUNT(*) AS n FROM tasks WHERE state = 'INPROGRESS' GROUP BY tenant_id
             ), candidates AS (
                 SELECT id, tenant_id, priority, run_at FROM tasks
                 WHERE state = 'READY' AND run_at <= $1
                 ORDER BY priority, run_at, id
                 LIMIT $6
                 FOR UPDATE SKIP LOCKED
             ), ranked AS (
                 SELECT c.*, ROW_NUMBER() OVER (PARTITION BY c.tenant_id ORDER BY c.priority, c.run_at, c.id) AS rn FROM candidates c
             ), chosen AS (
                 SELECT r.id FROM ranked r
                 JOIN tenants te ON te.id = r.tenant_id
                 LEFT JOIN running ru ON ru.tenant_id = r.tenant_id
                 WHERE r.rn + COALESCE(ru.n, 0) <= te.concurrency
                 ORDER BY r.priority, r.run_at, r.id
                 LIMIT $2
             )
             UPDATE tasks t SET state = 'INPROGRESS', attempts = attempts + 1, fence = nextval('task_fence_seq'),
                 lease_owner = $3, lease_expires_at = $4, started_at = $1, cancel_requested = FALSE,
                 version = version + 1, modified_at = $1, logs = logs || $5
             FROM chosen WHERE t.id = chosen.id
             RETURNING {cols}, t.fence",
            cols = TASK_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
        );
        // Look past the head of the queue so one tenant at its limit does
        // not hide the others' tasks.
        let window = (limit as i64).saturating_mul(20).max(1000);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(us(now))
            .bind(limit as i64)
            .bind(worker)
            .bind(us(now) + lease.as_micros() as i64)
            .bind(log)
            .bind(window)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(ClaimedTask {
                    task: task_from_row(r)?,
                    fence: r.try_get("fence")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(backend)?;
        claimed.sort_by_key(|c| (c.task.priority, c.task.run_at, c.task.id));
        Ok(claimed)
    }

    async fn heartbeat(&self, id: TaskId, fence: i64, lease_until: Timestamp) -> StoreResult<bool> {
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE tasks SET lease_expires_at = $3 WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS' RETURNING cancel_requested",
        )
        .bind(id)
        .bind(fence)
        .bind(us(lease_until))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        cancel.ok_or(StoreError::LeaseLost(id))
    }

    async fn set_progress(
        &self,
        id: TaskId,
        fence: i64,
        done: i64,
        total: Option<i64>,
    ) -> StoreResult<()> {
        let n = sqlx::query(
            "UPDATE tasks SET progress_done = $3, progress_total = COALESCE($4, progress_total), version = version + 1, modified_at = $5
             WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS'",
        )
        .bind(id)
        .bind(fence)
        .bind(done)
        .bind(total)
        .bind(us(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        if n == 0 {
            Err(StoreError::LeaseLost(id))
        } else {
            Ok(())
        }
    }

    async fn append_logs(&self, id: TaskId, fence: i64, logs: Vec<LogEntry>) -> StoreResult<()> {
        let n = sqlx::query(
            "UPDATE tasks SET logs = logs || $3, version = version + 1, modified_at = $4 WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS'",
        )
        .bind(id)
        .bind(fence)
        .bind(logs_json(&logs))
        .bind(us(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        if n == 0 {
            Err(StoreError::LeaseLost(id))
        } else {
            Ok(())
        }
    }

    async fn complete(&self, id: TaskId, fence: i64, done: Completion) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        check_fence(&mut tx, id, fence).await?;
        let mut logs = vec![LogEntry::transition(
            TaskState::InProgress,
            done.state,
            done.now,
        )];
        logs.extend(done.logs);
        let (state, run_at) = match done.reschedule {
            Some(at) => {
                logs.push(LogEntry::transition(done.state, TaskState::Ready, done.now));
                (TaskState::Ready, Some(us(at)))
            }
            None => (done.state, None),
        };
        sqlx::query(
            "UPDATE tasks SET state = $2, errors = $3, output = $4, result = $5, finished_at = $6, modified_at = $6,
                 version = version + 1, lease_owner = NULL, lease_expires_at = NULL, checkpoint = NULL,
                 run_at = COALESCE($7, run_at),
                 trigger = CASE WHEN $7::bigint IS NULL THEN trigger ELSE jsonb_set(trigger, '{once}', to_jsonb($8::text)) END,
                 logs = logs || $9
             WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(to_json(&done.errors))
        .bind(done.output.map(J))
        .bind(&done.result)
        .bind(us(done.now))
        .bind(run_at)
        .bind(done.reschedule.map(|t| t.to_string()))
        .bind(logs_json(&logs))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if run_at.is_some() {
            notify_work(&mut tx).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn retry_later(
        &self,
        id: TaskId,
        fence: i64,
        run_at: Timestamp,
        logs: Vec<LogEntry>,
    ) -> StoreResult<()> {
        self.back_to_ready(id, fence, Some(run_at), logs, false)
            .await
    }

    async fn release(&self, id: TaskId, fence: i64, logs: Vec<LogEntry>) -> StoreResult<()> {
        self.back_to_ready(id, fence, None, logs, true).await
    }

    async fn reclaim_expired(&self, now: Timestamp) -> StoreResult<Vec<TaskId>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let expired: Vec<(i64, i64, i64, bool)> = sqlx::query_as(
            "SELECT id, attempts, max_attempts, cancel_requested FROM tasks
             WHERE state = 'INPROGRESS' AND lease_expires_at < $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(us(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        for &(id, attempts, max_attempts, cancel) in &expired {
            let to = if cancel {
                TaskState::Cancelled
            } else if attempts >= max_attempts {
                TaskState::Fatal
            } else {
                TaskState::Ready
            };
            let msg = if to == TaskState::Fatal {
                format!("lease expired; all {max_attempts} attempts are spent")
            } else {
                "lease expired".into()
            };
            let logs = [
                LogEntry::transition(TaskState::InProgress, to, now),
                LogEntry::new(msg, now),
            ];
            let finished = (to != TaskState::Ready).then_some(us(now));
            sqlx::query(
                "UPDATE tasks SET state = $2, run_at = $3, finished_at = COALESCE($4, finished_at), lease_owner = NULL,
                     lease_expires_at = NULL, version = version + 1, modified_at = $3, logs = logs || $5 WHERE id = $1",
            )
            .bind(id)
            .bind(to.as_str())
            .bind(us(now))
            .bind(finished)
            .bind(logs_json(&logs))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        if !expired.is_empty() {
            notify_work(&mut tx).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(expired.into_iter().map(|e| e.0).collect())
    }

    async fn next_due(&self) -> StoreResult<Option<Timestamp>> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT MIN(run_at) FROM tasks WHERE state = 'READY'")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok(at.map(ts))
    }

    async fn wait_for_work(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.work.notified()).await;
    }

    async fn try_lead(&self, node: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        let n = sqlx::query(
            "INSERT INTO leader (name, node, expires_at) VALUES ('scheduler', $1, $2)
             ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, expires_at = EXCLUDED.expires_at
             WHERE leader.node = EXCLUDED.node OR leader.expires_at < $3",
        )
        .bind(node)
        .bind(us(now) + ttl.as_micros() as i64)
        .bind(us(now))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(n > 0)
    }

    async fn insert_upload(&self, u: Upload) -> StoreResult<()> {
        sqlx::query("INSERT INTO uploads (id, tenant_id, size, sha256, object_key, filename, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&u.id)
            .bind(u.tenant_id)
            .bind(u.size)
            .bind(&u.sha256)
            .bind(&u.object_key)
            .bind(&u.filename)
            .bind(us(u.created_at))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_upload(&self, tenant: TenantId, id: &str) -> StoreResult<Option<Upload>> {
        let row = sqlx::query("SELECT id, tenant_id, size, sha256, object_key, filename, created_at FROM uploads WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|r| -> Result<Upload, sqlx::Error> {
            Ok(Upload {
                id: r.try_get(0)?,
                tenant_id: r.try_get(1)?,
                size: r.try_get(2)?,
                sha256: r.try_get(3)?,
                object_key: r.try_get(4)?,
                filename: r.try_get(5)?,
                created_at: ts(r.try_get(6)?),
            })
        })
        .transpose()
        .map_err(backend)
    }

    async fn import_batch(&self, batch: ImportBatch) -> StoreResult<BatchOutcome> {
        crate::data::import_batch(&self.pool, batch).await
    }

    async fn clear_rejects(&self, task: TaskId, fence: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        check_fence(&mut tx, task, fence).await?;
        sqlx::query("DELETE FROM task_rejects WHERE task_id = $1")
            .bind(task)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn reject_summary(&self, task: TaskId) -> StoreResult<Vec<RejectGroup>> {
        crate::data::reject_summary(&self.pool, task).await
    }

    async fn rejects(
        &self,
        task: TaskId,
        after_row: i64,
        limit: i64,
    ) -> StoreResult<Vec<RowReject>> {
        crate::data::rejects(&self.pool, task, after_row, limit).await
    }

    async fn count_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: Option<&Filter>,
    ) -> StoreResult<i64> {
        let (where_sql, bounds) = crate::data::segment_sql(filter);
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE tenant_id = $1 AND {where_sql}",
            index.table
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant);
        let row = crate::data::bind_bounds(q, bounds)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        row.try_get(0).map_err(backend)
    }

    async fn export_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: Option<&Filter>,
    ) -> StoreResult<RowStream> {
        Ok(crate::data::export_rows(
            self.pool.clone(),
            tenant,
            index,
            filter,
        ))
    }
}

impl PgStore {
    async fn back_to_ready(
        &self,
        id: TaskId,
        fence: i64,
        run_at: Option<Timestamp>,
        mut logs: Vec<LogEntry>,
        give_back: bool,
    ) -> StoreResult<()> {
        let now = Timestamp::now();
        let mut tx = self.pool.begin().await.map_err(backend)?;
        check_fence(&mut tx, id, fence).await?;
        logs.insert(
            0,
            LogEntry::transition(TaskState::InProgress, TaskState::Ready, now),
        );
        sqlx::query(
            "UPDATE tasks SET state = 'READY', run_at = COALESCE($2, run_at), attempts = attempts - $3, lease_owner = NULL, lease_expires_at = NULL,
                 version = version + 1, modified_at = $4, logs = logs || $5 WHERE id = $1",
        )
        .bind(id)
        .bind(run_at.map(us))
        .bind(give_back as i64)
        .bind(us(now))
        .bind(logs_json(&logs))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        notify_work(&mut tx).await?;
        tx.commit().await.map_err(backend)
    }
}
