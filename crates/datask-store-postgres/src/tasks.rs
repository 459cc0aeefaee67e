//! Tenants, credentials, tasks, leases and uploads on PostgreSQL.
//!
//! Engine writes (claim, heartbeat, progress, logs, complete, retry,
//! release, reclaim) are one statement each: the fence is part of the
//! `WHERE`, so a stale worker changes nothing and learns it from the row
//! count, and the wake-up is sent from inside the same statement.

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

use crate::time::{PgTime, pg};
use crate::{PgStore, backend};

const TASK_COLUMNS: &str = "id, tenant_id, identifier, \"desc\", state, trigger, target, logs, errors, \
     progress_done, progress_total, output, result, version, attempts, max_attempts, debug, priority, \
     cancel_requested, created_at, modified_at, started_at, finished_at, run_at, schedule_anchor, checkpoint";

/// A `RETURNING` item that wakes the workers of every node when `cond` holds
/// for the written row: `pg_notify` inside the writing statement is delivered
/// when, and only if, it commits. PostgreSQL folds identical notifications of
/// one transaction into one. The value itself means nothing.
fn wake_when(cond: &str) -> String {
    format!(
        "(CASE WHEN {cond} THEN pg_notify('{}', '') END) IS NULL AS _wake",
        crate::WORK_CHANNEL
    )
}

/// `TASK_COLUMNS` qualified by a table alias.
fn task_columns(alias: &str) -> String {
    TASK_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode<T: serde::de::DeserializeOwned>(v: Json) -> Result<T, sqlx::Error> {
    serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn time(r: &PgRow, col: &str) -> Result<Timestamp, sqlx::Error> {
    Ok(r.try_get::<PgTime, _>(col)?.ts())
}

fn time_opt(r: &PgRow, col: &str) -> Result<Option<Timestamp>, sqlx::Error> {
    Ok(r.try_get::<Option<PgTime>, _>(col)?.map(PgTime::ts))
}

fn task_from_row(r: &PgRow) -> Result<Task, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(Task {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        identifier: r.try_get("identifier")?,
        desc: r.try_get("desc")?,
        state: TaskState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown task state {state:?}").into()))?,
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
        created_at: time(r, "created_at")?,
        modified_at: time(r, "modified_at")?,
        started_at: time_opt(r, "started_at")?,
        finished_at: time_opt(r, "finished_at")?,
        run_at: time(r, "run_at")?,
        schedule_anchor: time_opt(r, "schedule_anchor")?,
        checkpoint: r.try_get::<Option<J<Json>>, _>("checkpoint")?.map(|j| j.0),
    })
}

fn tasks_from_rows(rows: &[PgRow]) -> StoreResult<Vec<Task>> {
    rows.iter()
        .map(task_from_row)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

fn logs_json(logs: &[LogEntry]) -> J<Json> {
    J(serde_json::to_value(logs).unwrap_or(Json::Array(vec![])))
}

fn to_json<T: serde::Serialize>(v: &T) -> J<Json> {
    J(serde_json::to_value(v).unwrap_or(Json::Null))
}

/// Whether a database error is this SQLSTATE.
fn is_code(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(code))
}

const UNIQUE_VIOLATION: &str = "23505";

/// A duplicate of a unique value is the caller's conflict, not a failure of
/// the database.
fn unique_conflict(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if is_code(&e, UNIQUE_VIOLATION) {
            StoreError::Conflict(format!("{what} already exists"))
        } else {
            backend(e)
        }
    }
}

/// Locks the tenant's task and answers its state and version; NotFound for
/// another tenant's task.
async fn lock_task(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    id: TaskId,
) -> StoreResult<(TaskState, i64)> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT state, version FROM tasks WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    let (state, version) = row.ok_or(StoreError::NotFound)?;
    let state = TaskState::parse(&state)
        .ok_or_else(|| StoreError::Backend(format!("unknown task state {state:?}").into()))?;
    Ok((state, version))
}

/// Refuses a change after `lock_task`: ends the transaction now. A dropped
/// transaction is only rolled back when its connection is next used, and
/// until then holds the task's row lock (a claim's SKIP LOCKED passes the
/// task over; CI caught one doing so).
async fn refuse<T>(tx: Transaction<'_, Postgres>, why: StoreError) -> StoreResult<T> {
    tx.rollback().await.map_err(backend)?;
    Err(why)
}

/// Checks and locks the fence for a write of several statements;
/// `LeaseLost` unless INPROGRESS with it.
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

/// A fenced single-statement write changed nothing: the lease is gone.
fn fenced(id: TaskId, rows: u64) -> StoreResult<()> {
    if rows == 0 {
        Err(StoreError::LeaseLost(id))
    } else {
        Ok(())
    }
}

fn anchor_for(trigger: &datask_core::Trigger) -> Option<PgTime> {
    trigger.repeat.and(trigger.once).map(pg)
}

fn lease_until(now: Timestamp, lease: Duration) -> PgTime {
    PgTime(
        now.as_microsecond()
            .saturating_add(lease.as_micros() as i64),
    )
}

/// The log entry a claim appends to each task it takes.
fn claim_log(now: Timestamp) -> J<Json> {
    logs_json(&[LogEntry::transition(
        TaskState::Ready,
        TaskState::InProgress,
        now,
    )])
}

/// How far past the head of the queue one claim looks: enough to pass over
/// a few tenants with fewer free slots than due tasks (full tenants are
/// skipped by the scan itself). Every row in it is a heap visit, so not more.
fn claim_window(limit: usize) -> i64 {
    (limit as i64).saturating_mul(4).saturating_add(64)
}

/// Binds a claim's arguments (the parameters after the ends, if any, in
/// the order `datask_claim` takes them).
fn bind_claim<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    worker: &'q str,
    limit: usize,
    lease: Duration,
    now: Timestamp,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    q.bind(pg(now))
        .bind(limit as i64)
        .bind(worker)
        .bind(lease_until(now, lease))
        .bind(claim_log(now))
        .bind(claim_window(limit))
}

fn claimed_from_row(r: &PgRow) -> Result<ClaimedTask, sqlx::Error> {
    Ok(ClaimedTask {
        task: task_from_row(r)?,
        fence: r.try_get("fence")?,
    })
}

/// A batch of run ends as `datask_complete` takes them: each column one
/// array, bound as its first ten parameters.
struct Ends {
    ids: Vec<TaskId>,
    fences: Vec<i64>,
    states: Vec<&'static str>,
    errors: Vec<J<Json>>,
    outputs: Vec<Option<J<Json>>>,
    results: Vec<Option<String>>,
    nows: Vec<PgTime>,
    reschedules: Vec<Option<PgTime>>,
    onces: Vec<J<Json>>,
    logs: Vec<J<Json>>,
}

impl Ends {
    fn new(done: Vec<Finished>) -> Self {
        let n = done.len();
        let mut e = Ends {
            ids: Vec::with_capacity(n),
            fences: Vec::with_capacity(n),
            states: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            outputs: Vec::with_capacity(n),
            results: Vec::with_capacity(n),
            nows: Vec::with_capacity(n),
            reschedules: Vec::with_capacity(n),
            onces: Vec::with_capacity(n),
            logs: Vec::with_capacity(n),
        };
        for Finished {
            id,
            fence,
            completion: mut done,
        } in done
        {
            let (state, logs) = done.stored_state_and_logs();
            let reschedule = done.reschedule;
            e.ids.push(id);
            e.fences.push(fence);
            e.states.push(state.as_str());
            e.errors.push(to_json(&done.errors));
            e.outputs.push(done.output.map(J));
            e.results.push(done.result);
            e.nows.push(pg(done.now));
            e.reschedules.push(reschedule.map(pg));
            // `trigger.once` as serde writes a Timestamp.
            e.onces.push(to_json(&reschedule));
            e.logs.push(logs_json(&logs));
        }
        e
    }

    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.ids)
            .bind(&self.fences)
            .bind(&self.states)
            .bind(&self.errors)
            .bind(&self.outputs)
            .bind(&self.results)
            .bind(&self.nows)
            .bind(&self.reschedules)
            .bind(&self.onces)
            .bind(&self.logs)
    }
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
        let row = sqlx::query(
            "INSERT INTO tenants (name, timezone, concurrency, created_at) VALUES ($1, $2, $3, $4)
             RETURNING id, created_at",
        )
        .bind(&new.name)
        .bind(&new.timezone)
        .bind(new.concurrency)
        .bind(pg(Timestamp::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(Tenant {
            id: row.try_get(0).map_err(backend)?,
            name: new.name,
            timezone: new.timezone,
            concurrency: new.concurrency,
            created_at: time(&row, "created_at").map_err(backend)?,
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
                created_at: time(&r, "created_at")?,
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
            .map_err(unique_conflict("a credential with this secret"))?;
        Ok(())
    }

    async fn credential_by_hash(&self, secret_sha256: &str) -> StoreResult<Option<Credential>> {
        let row: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT secret_sha256, tenant_id, kind FROM credentials WHERE secret_sha256 = $1",
        )
        .bind(secret_sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        // A kind this version does not know grants nothing.
        Ok(row.and_then(|(secret_sha256, tenant_id, kind)| {
            Some(Credential {
                secret_sha256,
                tenant_id,
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
        .bind(pg(Timestamp::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(unique_conflict("a user with this token"))?;
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
        // Selecting from both tables makes a missing one insert nothing.
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
        // ON CONFLICT DO NOTHING keeps the first task of an idempotency key
        // even when two requests race: the second waits for the first to
        // commit and then inserts nothing. The repeat then reads the first
        // task; should that have been deleted in between, insert again.
        let insert = format!(
            "INSERT INTO tasks (tenant_id, identifier, \"desc\", state, trigger, target, max_attempts, priority,
                 created_at, modified_at, run_at, schedule_anchor, idempotency_key)
             VALUES ($1, $2, $3, 'READY', $4, $5, $6, $7, $8, $8, $9, $10, $11)
             ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING {TASK_COLUMNS}, {}",
            wake_when("TRUE")
        );
        let existing = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND idempotency_key = $2"
        );
        for _ in 0..3 {
            let row = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(new.tenant_id)
                .bind(&new.identifier)
                .bind(&new.desc)
                .bind(to_json(&new.trigger))
                .bind(to_json(&new.target))
                .bind(new.max_attempts)
                .bind(new.priority)
                .bind(pg(now))
                .bind(pg(new.run_at))
                .bind(anchor_for(&new.trigger))
                .bind(&new.idempotency_key)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            if let Some(row) = row {
                let task = task_from_row(&row).map_err(backend)?;
                return Ok(InsertedTask {
                    task,
                    created: true,
                });
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(existing.as_str()))
                .bind(new.tenant_id)
                .bind(&new.idempotency_key)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            if let Some(row) = row {
                let task = task_from_row(&row).map_err(backend)?;
                return Ok(InsertedTask {
                    task,
                    created: false,
                });
            }
        }
        Err(StoreError::Conflict(
            "the task of this idempotency key is being deleted; try again".into(),
        ))
    }

    async fn insert_tasks(&self, new: Vec<NewTask>, now: Timestamp) -> StoreResult<Vec<Enqueued>> {
        if new.is_empty() {
            return Ok(vec![]);
        }
        let mut out: Vec<Option<Enqueued>> = vec![None; new.len()];
        // A key repeated within the batch is the first one's task: only the
        // first travels (ON CONFLICT DO NOTHING would drop the repeat, but
        // its answer could not name the row the same statement wrote).
        let mut first_of_key: std::collections::HashMap<(TenantId, &str), usize> =
            std::collections::HashMap::new();
        let mut repeats = Vec::new();
        let mut pending = Vec::with_capacity(new.len());
        for (i, t) in new.iter().enumerate() {
            match &t.idempotency_key {
                Some(k) => match first_of_key.entry((t.tenant_id, k.as_str())) {
                    std::collections::hash_map::Entry::Occupied(e) => repeats.push((i, *e.get())),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(i);
                        pending.push(i);
                    }
                },
                None => pending.push(i),
            }
        }
        // One statement: each column travels as one array, ids are drawn
        // from the table's own sequence first so that every answer row
        // names its input (RETURNING cannot), and a key already stored
        // answers the stored task's id. A key whose task was committed by
        // someone else after this statement's snapshot reads as neither;
        // the statement runs again for those (a fresh snapshot within the
        // same transaction), as `insert_task` does.
        let sql = "WITH input AS MATERIALIZED (
                 SELECT nextval('tasks_id_seq'::regclass) AS id, d.*
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::bigint[],
                             $7::bigint[], $8::timestamptz[], $9::timestamptz[], $10::text[])
                      WITH ORDINALITY AS d(tenant_id, identifier, \"desc\", trigger, target, max_attempts,
                                           priority, run_at, schedule_anchor, idempotency_key, ord)
             ), ins AS (
                 INSERT INTO tasks (id, tenant_id, identifier, \"desc\", state, trigger, target, max_attempts,
                     priority, created_at, modified_at, run_at, schedule_anchor, idempotency_key)
                 SELECT id, tenant_id, identifier, \"desc\", 'READY', trigger, target, max_attempts,
                     priority, $11, $11, run_at, schedule_anchor, idempotency_key
                 FROM input
                 ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id
             )
             SELECT i.ord, COALESCE(ins.id, (
                     SELECT e.id FROM tasks e
                     WHERE e.tenant_id = i.tenant_id AND e.idempotency_key = i.idempotency_key
                 )), ins.id IS NOT NULL
             FROM input i LEFT JOIN ins ON ins.id = i.id
             ORDER BY i.ord";
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let mut created_any = false;
        for _ in 0..3 {
            if pending.is_empty() {
                break;
            }
            let n = pending.len();
            let (mut tenants, mut identifiers, mut descs) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut triggers, mut targets, mut max_attempts) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut priorities, mut run_ats, mut anchors, mut keys) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for &i in &pending {
                let t = &new[i];
                tenants.push(t.tenant_id);
                identifiers.push(t.identifier.as_str());
                descs.push(t.desc.as_str());
                triggers.push(to_json(&t.trigger));
                targets.push(to_json(&t.target));
                max_attempts.push(t.max_attempts);
                priorities.push(t.priority);
                run_ats.push(pg(t.run_at));
                anchors.push(anchor_for(&t.trigger));
                keys.push(t.idempotency_key.as_deref());
            }
            let rows: Result<Vec<(i64, Option<TaskId>, bool)>, _> = sqlx::query_as(sql)
                .bind(&tenants)
                .bind(&identifiers)
                .bind(&descs)
                .bind(&triggers)
                .bind(&targets)
                .bind(&max_attempts)
                .bind(&priorities)
                .bind(&run_ats)
                .bind(&anchors)
                .bind(&keys)
                .bind(pg(now))
                .fetch_all(&mut *tx)
                .await;
            // Ended now, not when the connection is next used: until then the
            // failed batch's keys would hold up anyone inserting the same ones.
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => return refuse(tx, backend(e)).await,
            };
            let mut again = Vec::new();
            for (ord, id, created) in rows {
                let i = pending[(ord - 1) as usize];
                match id {
                    Some(id) => {
                        created_any |= created;
                        out[i] = Some(Enqueued { id, created });
                    }
                    None => again.push(i),
                }
            }
            pending = again;
        }
        if !pending.is_empty() {
            tx.rollback().await.map_err(backend)?;
            return Err(StoreError::Conflict(
                "the task of this idempotency key is being deleted; try again".into(),
            ));
        }
        if created_any {
            // Delivered at commit, once for the whole batch.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(crate::WORK_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        for (i, first) in repeats {
            let id = out[first].map(|e| e.id);
            out[i] = id.map(|id| Enqueued { id, created: false });
        }
        out.into_iter()
            .map(|e| {
                e.ok_or_else(|| StoreError::Backend("a task of the batch went unanswered".into()))
            })
            .collect()
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
        // Walks (tenant_id, id DESC) newest first; the optional filters are
        // checked on the way.
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1
               AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR identifier = $3)
               AND ($4::timestamptz IS NULL OR created_at > $4)
               AND ($5::timestamptz IS NULL OR created_at < $5)
               AND ($6::bigint IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(f.state.map(|s| s.as_str()))
            .bind(&f.identifier)
            .bind(f.created_after.map(pg))
            .bind(f.created_before.map(pg))
            .bind(f.before_id)
            .bind(f.limit)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        tasks_from_rows(&rows)
    }

    async fn query_tasks(&self, tenant: TenantId, query: &TaskQuery) -> StoreResult<Vec<Task>> {
        // The dialect's fields are fixed SQL shared with SQLite, which reads
        // times as integer microseconds (`created_at / 1000000`). An inner
        // table named `tasks` shows the fields that way; the ids it picks,
        // in its order, then fetch the rows themselves.
        let (where_sql, order_sql, params) = query.to_sql(2, |n| format!("${n}"));
        let n = params.len();
        let micros = |c: &str| format!("(EXTRACT(EPOCH FROM {c}) * 1000000)::int8 AS {c}");
        let sql = format!(
            "SELECT {cols} FROM UNNEST(ARRAY(
                 SELECT id FROM (
                     SELECT id, identifier, state, \"desc\", result, attempts, version,
                            {created}, {started}, {finished}, {modified}
                     FROM tasks WHERE tenant_id = $1
                 ) AS tasks
                 WHERE {where_sql} ORDER BY {order_sql} LIMIT ${limit} OFFSET ${offset}
             )) WITH ORDINALITY AS picked (id, n)
             JOIN tasks t ON t.id = picked.id
             ORDER BY picked.n",
            cols = task_columns("t"),
            created = micros("created_at"),
            started = micros("started_at"),
            finished = micros("finished_at"),
            modified = micros("modified_at"),
            limit = n + 2,
            offset = n + 3,
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
        tasks_from_rows(&rows)
    }

    async fn update_task(
        &self,
        tenant: TenantId,
        id: TaskId,
        update: TaskUpdate,
        now: Timestamp,
    ) -> StoreResult<Task> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let (state, version) = lock_task(&mut tx, tenant, id).await?;
        if let Some(v) = update.expected_version
            && v != version
        {
            return refuse(tx, StoreError::VersionConflict { current: version }).await;
        }
        if state == TaskState::InProgress {
            let why = format!("task {id} is running; cancel it or wait until it finishes");
            return refuse(tx, StoreError::Conflict(why)).await;
        }
        // run_at may have moved earlier: a READY task may be due now.
        let sql = format!(
            "UPDATE tasks SET \"desc\" = $2, trigger = $3, target = $4, run_at = $5, schedule_anchor = $6,
                 version = version + 1, modified_at = $7 WHERE id = $1
             RETURNING {TASK_COLUMNS}, {}",
            wake_when("state = 'READY'")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&update.desc)
            .bind(to_json(&update.trigger))
            .bind(to_json(&update.target))
            .bind(pg(update.run_at))
            .bind(anchor_for(&update.trigger))
            .bind(pg(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let task = task_from_row(&row).map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(task)
    }

    async fn delete_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let (state, _) = lock_task(&mut tx, tenant, id).await?;
        if state == TaskState::InProgress {
            let why = format!("task {id} is running; cancel it before deleting it");
            return refuse(tx, StoreError::Conflict(why)).await;
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
        let (state, _) = lock_task(&mut tx, tenant, id).await?;
        if state == TaskState::InProgress {
            let why = format!("task {id} is already running");
            return refuse(tx, StoreError::Conflict(why)).await;
        }
        let logs = if state != TaskState::Ready {
            vec![LogEntry::transition(state, TaskState::Ready, now)]
        } else {
            vec![]
        };
        let sql = format!(
            "UPDATE tasks SET state = 'READY', run_at = $2, checkpoint = NULL, progress_done = 0, progress_total = NULL,
                 cancel_requested = FALSE, attempts = 0, version = version + 1, modified_at = $2, logs = logs || $3 WHERE id = $1
             RETURNING {TASK_COLUMNS}, {}",
            wake_when("TRUE")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(pg(now))
            .bind(logs_json(&logs))
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let task = task_from_row(&row).map_err(backend)?;
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
        let (state, _) = lock_task(&mut tx, tenant, id).await?;
        let q = match state {
            TaskState::Ready => sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET state = 'CANCELLED', finished_at = $2, version = version + 1, modified_at = $2,
                     logs = logs || $3 WHERE id = $1 RETURNING {TASK_COLUMNS}"
            )))
            .bind(id)
            .bind(pg(now))
            .bind(logs_json(&[LogEntry::transition(
                TaskState::Ready,
                TaskState::Cancelled,
                now,
            )])),
            // The worker learns it at its next heartbeat.
            TaskState::InProgress => sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET cancel_requested = TRUE, version = version + 1, modified_at = $2
                 WHERE id = $1 RETURNING {TASK_COLUMNS}"
            )))
            .bind(id)
            .bind(pg(now)),
            done => {
                let why = format!("task {id} has already finished ({done})");
                return refuse(tx, StoreError::Conflict(why)).await;
            }
        };
        let row = q.fetch_one(&mut *tx).await.map_err(backend)?;
        let task = task_from_row(&row).map_err(backend)?;
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
        if limit == 0 {
            return Ok(vec![]);
        }
        // The claim itself, its lock and why it is written as it is:
        // migrations/0007_claim_function.sql.
        let q = sqlx::query("SELECT * FROM datask_claim($1, $2, $3, $4, $5, $6)");
        let rows = bind_claim(q, worker, limit, lease, now)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut claimed = rows
            .iter()
            .map(claimed_from_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(backend)?;
        // RETURNING has no order of its own.
        claimed.sort_by_key(|c| (c.task.priority, c.task.run_at, c.task.id));
        Ok(claimed)
    }

    async fn heartbeat(&self, id: TaskId, fence: i64, lease_until: Timestamp) -> StoreResult<bool> {
        // The lease is bookkeeping, not a change clients see: no version bump.
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE tasks SET lease_expires_at = $3 WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS'
             RETURNING cancel_requested",
        )
        .bind(id)
        .bind(fence)
        .bind(pg(lease_until))
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
            "UPDATE tasks SET progress_done = $3, progress_total = COALESCE($4, progress_total),
                 version = version + 1, modified_at = $5
             WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS'",
        )
        .bind(id)
        .bind(fence)
        .bind(done)
        .bind(total)
        .bind(pg(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        fenced(id, n)
    }

    async fn append_logs(&self, id: TaskId, fence: i64, logs: Vec<LogEntry>) -> StoreResult<()> {
        let n = sqlx::query(
            "UPDATE tasks SET logs = logs || $3, version = version + 1, modified_at = $4
             WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS'",
        )
        .bind(id)
        .bind(fence)
        .bind(logs_json(&logs))
        .bind(pg(Timestamp::now()))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        fenced(id, n)
    }

    async fn complete_many(&self, done: Vec<Finished>) -> StoreResult<Vec<TaskId>> {
        if done.is_empty() {
            return Ok(vec![]);
        }
        // The statement, and why it is a function: migrations/0009_complete_and_claim.sql.
        let ends = Ends::new(done);
        let rows = ends
            .bind(sqlx::query(
                "SELECT * FROM datask_complete($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            ))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    async fn complete_and_claim(
        &self,
        done: Vec<Finished>,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<(Vec<TaskId>, Vec<ClaimedTask>)> {
        // Without a claim, no claim lock (the combined function takes it).
        if limit == 0 {
            return Ok((self.complete_many(done).await?, vec![]));
        }
        let ends = Ends::new(done);
        let q = ends.bind(sqlx::query(
            "SELECT * FROM datask_complete_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                                                     $11, $12, $13, $14, $15, $16)",
        ));
        let rows = bind_claim(q, worker, limit, lease, now)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut lost = Vec::new();
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let state: &str = r.try_get("state").map_err(backend)?;
            if state == "LOST" {
                lost.push(r.try_get("id").map_err(backend)?);
            } else {
                claimed.push(claimed_from_row(r).map_err(backend)?);
            }
        }
        claimed.sort_by_key(|c| (c.task.priority, c.task.run_at, c.task.id));
        Ok((lost, claimed))
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
        // One statement for all of them. Rows locked by a write in flight
        // (a heartbeat or completion racing the rescuer) are skipped: that
        // write decides, and a lease still expired is taken next round. The
        // log entries are built here in LogEntry's serde shape.
        let sql = format!(
            "WITH expired AS (
                 SELECT id, max_attempts,
                        CASE WHEN cancel_requested THEN 'CANCELLED'
                             WHEN attempts >= max_attempts THEN 'FATAL'
                             ELSE 'READY' END AS next
                 FROM tasks WHERE state = 'INPROGRESS' AND lease_expires_at < $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE tasks t SET state = e.next,
                 run_at = CASE WHEN e.next = 'READY' THEN $1 ELSE t.run_at END,
                 finished_at = CASE WHEN e.next = 'READY' THEN t.finished_at ELSE $1 END,
                 lease_owner = NULL, lease_expires_at = NULL, version = version + 1, modified_at = $1,
                 logs = t.logs || jsonb_build_array(
                     jsonb_build_object('msg', 'INPROGRESS -> ' || e.next, 'time', $2::jsonb),
                     jsonb_build_object('msg', CASE WHEN e.next = 'FATAL'
                         THEN 'lease expired; all ' || e.max_attempts || ' attempts are spent'
                         ELSE 'lease expired' END, 'time', $2::jsonb))
             FROM expired e WHERE t.id = e.id
             RETURNING t.id, {}",
            wake_when("e.next = 'READY'")
        );
        let mut ids: Vec<TaskId> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(pg(now))
            .bind(to_json(&now))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn next_due(&self) -> StoreResult<Option<Timestamp>> {
        let at: Option<PgTime> =
            sqlx::query_scalar("SELECT MIN(run_at) FROM tasks WHERE state = 'READY'")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok(at.map(PgTime::ts))
    }

    async fn wait_for_work(&self, max: Duration) {
        // A notification that came while nobody waited left a permit, so
        // this returns at once rather than missing it.
        let _ = tokio::time::timeout(max, self.work.notified()).await;
    }

    async fn try_lead(&self, node: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        // Taken when absent, expired, or already ours (then extended); the
        // row lock makes two nodes racing for an expired lease agree.
        let n = sqlx::query(
            "INSERT INTO leader (name, node, expires_at) VALUES ('scheduler', $1, $2)
             ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, expires_at = EXCLUDED.expires_at
             WHERE leader.node = EXCLUDED.node OR leader.expires_at < $3",
        )
        .bind(node)
        .bind(lease_until(now, ttl))
        .bind(pg(now))
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
            .bind(pg(u.created_at))
            .execute(&self.pool)
            .await
            .map_err(unique_conflict("an upload with this id"))?;
        Ok(())
    }

    async fn delete_upload(&self, tenant: TenantId, id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn expired_uploads(
        &self,
        created_before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<Upload>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, size, sha256, object_key, filename, created_at FROM uploads u
             WHERE created_at < $1 AND NOT EXISTS (
                 SELECT 1 FROM tasks t WHERE t.tenant_id = u.tenant_id
                   AND t.state IN ('READY', 'INPROGRESS')
                   AND t.target->>'upload_id' = u.id)
             ORDER BY created_at LIMIT $2",
        )
        .bind(pg(created_before))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(upload_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
    }

    async fn get_upload(&self, tenant: TenantId, id: &str) -> StoreResult<Option<Upload>> {
        let row = sqlx::query("SELECT id, tenant_id, size, sha256, object_key, filename, created_at FROM uploads WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref()
            .map(upload_from_row)
            .transpose()
            .map_err(backend)
    }

    async fn import_batch(&self, batch: ImportBatch) -> StoreResult<BatchOutcome> {
        crate::data::import_batch(&self.pool, batch).await
    }

    async fn clear_rejects(&self, task: TaskId, fence: i64) -> StoreResult<()> {
        // Two statements: a lost lease must be told apart from no rejects.
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
        crate::data::count_rows(&self.pool, tenant, index, filter).await
    }

    async fn delete_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: &Filter,
    ) -> StoreResult<i64> {
        crate::customer::delete_rows(&self.pool, tenant, index, filter).await
    }

    async fn clear_fields(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: &Filter,
        columns: &[&'static str],
        attributes: &[String],
    ) -> StoreResult<i64> {
        crate::customer::clear_fields(&self.pool, tenant, index, filter, columns, attributes).await
    }

    async fn lookup_profiles(
        &self,
        tenant: TenantId,
        column: &'static str,
        values: Vec<String>,
    ) -> StoreResult<Vec<(String, String)>> {
        crate::customer::lookup_profiles(&self.pool, tenant, column, values).await
    }

    async fn create_segment(
        &self,
        tenant: TenantId,
        name: String,
        filter: Json,
        now: Timestamp,
    ) -> StoreResult<SavedSegment> {
        crate::customer::create_segment(&self.pool, tenant, name, filter, now).await
    }

    async fn get_segment(&self, tenant: TenantId, id: i64) -> StoreResult<Option<SavedSegment>> {
        crate::customer::get_segment(&self.pool, tenant, id).await
    }

    async fn list_segments(&self, tenant: TenantId) -> StoreResult<Vec<SavedSegment>> {
        crate::customer::list_segments(&self.pool, tenant).await
    }

    async fn update_segment(
        &self,
        tenant: TenantId,
        id: i64,
        name: String,
        filter: Json,
        now: Timestamp,
    ) -> StoreResult<SavedSegment> {
        crate::customer::update_segment(&self.pool, tenant, id, name, filter, now).await
    }

    async fn delete_segment(&self, tenant: TenantId, id: i64) -> StoreResult<()> {
        crate::customer::delete_segment(&self.pool, tenant, id).await
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
        logs.insert(
            0,
            LogEntry::transition(TaskState::InProgress, TaskState::Ready, now),
        );
        let sql = format!(
            "UPDATE tasks SET state = 'READY', run_at = COALESCE($3, run_at), attempts = attempts - $4,
                 lease_owner = NULL, lease_expires_at = NULL, version = version + 1, modified_at = $5,
                 logs = logs || $6
             WHERE id = $1 AND fence = $2 AND state = 'INPROGRESS'
             RETURNING {}",
            wake_when("TRUE")
        );
        let n = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(fence)
            .bind(run_at.map(pg))
            .bind(give_back as i64)
            .bind(pg(now))
            .bind(logs_json(&logs))
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected();
        fenced(id, n)
    }
}

/// An `uploads` row read with the columns `id, tenant_id, size, sha256,
/// object_key, filename, created_at`, in that order.
fn upload_from_row(r: &sqlx::postgres::PgRow) -> Result<Upload, sqlx::Error> {
    Ok(Upload {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        size: r.try_get(2)?,
        sha256: r.try_get(3)?,
        object_key: r.try_get(4)?,
        filename: r.try_get(5)?,
        created_at: time(r, "created_at")?,
    })
}
