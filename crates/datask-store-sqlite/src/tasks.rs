//! Tenants, credentials, tasks, leases and uploads on SQLite.

use std::collections::HashMap;
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
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value as Json;

use crate::{Failure, SqliteStore, from_micros, from_micros_opt, micros};

const TASK_COLUMNS: &str = "id, tenant_id, identifier, desc, state, trigger, target, logs, errors, \
     progress_done, progress_total, output, result, version, attempts, max_attempts, debug, priority, \
     cancel_requested, created_at, modified_at, started_at, finished_at, run_at, schedule_anchor, checkpoint";

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn task_from_row(r: &Row) -> rusqlite::Result<Task> {
    TaskRow::read(r)?.decode()
}

/// A task row's columns as stored, JSON still text: what the writer thread
/// reads for a claim, leaving the parsing (`perf`: ~6 % of that thread in
/// the burn-down) to the caller, off the one thread every write waits for.
struct TaskRow {
    id: TaskId,
    tenant_id: TenantId,
    identifier: String,
    desc: String,
    state: String,
    trigger: String,
    target: String,
    logs: String,
    errors: String,
    progress_done: i64,
    progress_total: Option<i64>,
    output: Option<String>,
    result: Option<String>,
    version: i64,
    attempts: i64,
    max_attempts: i64,
    debug: String,
    priority: i64,
    cancel_requested: bool,
    created_at: i64,
    modified_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    run_at: i64,
    schedule_anchor: Option<i64>,
    checkpoint: Option<String>,
}

impl TaskRow {
    /// From a row whose first columns are `TASK_COLUMNS`.
    fn read(r: &Row) -> rusqlite::Result<Self> {
        Ok(TaskRow {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            identifier: r.get(2)?,
            desc: r.get(3)?,
            state: r.get(4)?,
            trigger: r.get(5)?,
            target: r.get(6)?,
            logs: r.get(7)?,
            errors: r.get(8)?,
            progress_done: r.get(9)?,
            progress_total: r.get(10)?,
            output: r.get(11)?,
            result: r.get(12)?,
            version: r.get(13)?,
            attempts: r.get(14)?,
            max_attempts: r.get(15)?,
            debug: r.get(16)?,
            priority: r.get(17)?,
            cancel_requested: r.get(18)?,
            created_at: r.get(19)?,
            modified_at: r.get(20)?,
            started_at: r.get(21)?,
            finished_at: r.get(22)?,
            run_at: r.get(23)?,
            schedule_anchor: r.get(24)?,
            checkpoint: r.get(25)?,
        })
    }

    fn decode(self) -> rusqlite::Result<Task> {
        Ok(Task {
            id: self.id,
            tenant_id: self.tenant_id,
            identifier: self.identifier,
            desc: self.desc,
            state: TaskState::parse(&self.state).unwrap_or(TaskState::Fatal),
            trigger: parse_json(&self.trigger)?,
            target: parse_json(&self.target)?,
            logs: parse_json(&self.logs)?,
            errors: parse_json(&self.errors)?,
            progress_done: self.progress_done,
            progress_total: self.progress_total,
            output: self.output.map(|s| parse_json(&s)).transpose()?,
            result: self.result,
            version: self.version,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            debug: self.debug,
            priority: self.priority,
            cancel_requested: self.cancel_requested,
            created_at: from_micros(self.created_at),
            modified_at: from_micros(self.modified_at),
            started_at: from_micros_opt(self.started_at),
            finished_at: from_micros_opt(self.finished_at),
            run_at: from_micros(self.run_at),
            schedule_anchor: from_micros_opt(self.schedule_anchor),
            checkpoint: self.checkpoint.map(|s| parse_json(&s)).transpose()?,
        })
    }
}

fn load_task(
    conn: &Connection,
    tenant: Option<TenantId>,
    id: TaskId,
) -> rusqlite::Result<Option<Task>> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
    );
    conn.prepare_cached(&sql)?
        .query_row(params![id, tenant], task_from_row)
        .optional()
}

fn logs_json(logs: &[LogEntry]) -> Result<String, Failure> {
    Ok(serde_json::to_string(logs)?)
}

/// `SET` clause appending the JSON array bound as parameter `$n` to the logs.
///
/// By splicing text: `logs` is only ever written as compact JSON (by
/// `serde_json::to_string` or by this clause), so it is `[]` or `[…]` with
/// nothing after the bracket. Parsing and re-serialising the whole history
/// (`json_each` + `json_group_array`) took a sort per write and was the
/// largest single cost of a no-op task's claim and completion.
macro_rules! append_logs {
    ($logs:literal) => {
        concat!(
            "logs = CASE WHEN ",
            $logs,
            " = '[]' THEN logs WHEN logs = '[]' THEN ",
            $logs,
            " ELSE substr(logs, 1, length(logs) - 1) || ',' || substr(",
            $logs,
            ", 2) END"
        )
    };
}
const LOGS_AT_3: &str = append_logs!("?3");
const LOGS_AT_5: &str = append_logs!("?5");
const LOGS_AT_6: &str = append_logs!("?6");

/// Checks the fence; `LeaseLost` unless the task is INPROGRESS with it.
pub(crate) fn check_fence(conn: &Connection, id: TaskId, fence: i64) -> Result<(), Failure> {
    let ok = conn
        .prepare_cached(
            "SELECT 1 FROM tasks WHERE id = ?1 AND fence = ?2 AND state = 'INPROGRESS'",
        )?
        .exists(params![id, fence])?;
    if ok {
        Ok(())
    } else {
        Err(StoreError::LeaseLost(id).into())
    }
}

fn anchor_for(trigger: &datask_core::Trigger) -> Option<i64> {
    trigger.repeat.and(trigger.once).map(micros)
}

fn must_exist(task: Option<Task>) -> Result<Task, Failure> {
    task.ok_or(Failure::Store(StoreError::NotFound))
}

/// Claims up to `limit` due tasks inside the caller's transaction.
fn claim_in(
    tx: &Connection,
    worker: &str,
    limit: usize,
    lease: Duration,
    now: Timestamp,
) -> Result<Vec<(TaskRow, i64)>, Failure> {
    let mut running: HashMap<TenantId, i64> = HashMap::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT tenant_id, COUNT(*) FROM tasks WHERE state = 'INPROGRESS' GROUP BY tenant_id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            running.insert(r.get(0)?, r.get(1)?);
        }
    }
    let mut limits: HashMap<TenantId, i64> = HashMap::new();
    let mut chosen: Vec<TaskId> = Vec::with_capacity(limit);
    {
        // Walk the due tasks in order and skip tenants at their limit;
        // the partial index makes this a scan of READY tasks only.
        let mut stmt = tx.prepare_cached(
            "SELECT id, tenant_id FROM tasks WHERE state = 'READY' AND run_at <= ?1 ORDER BY priority, run_at, id",
        )?;
        let mut rows = stmt.query([micros(now)])?;
        let mut tenant_stmt = tx.prepare_cached("SELECT concurrency FROM tenants WHERE id = ?1")?;
        while chosen.len() < limit {
            let Some(r) = rows.next()? else { break };
            let (id, tenant): (TaskId, TenantId) = (r.get(0)?, r.get(1)?);
            let cap = match limits.get(&tenant) {
                Some(c) => *c,
                None => {
                    let c: i64 = tenant_stmt
                        .query_row([tenant], |r| r.get(0))
                        .optional()?
                        .unwrap_or(1);
                    limits.insert(tenant, c);
                    c
                }
            };
            let n = running.entry(tenant).or_insert(0);
            if *n < cap {
                *n += 1;
                chosen.push(id);
            }
        }
    }
    let mut claimed = Vec::with_capacity(chosen.len());
    if chosen.is_empty() {
        return Ok(claimed);
    }
    let lease_until = micros(now) + lease.as_micros() as i64;
    let log = logs_json(&[LogEntry::transition(
        TaskState::Ready,
        TaskState::InProgress,
        now,
    )])?;
    // One step of the fence sequence for the whole claim; the tasks
    // take the values below it in turn.
    let last_fence: i64 = tx
        .prepare_cached("UPDATE fence_seq SET value = value + ?1 WHERE id = 1 RETURNING value")?
        .query_row([chosen.len() as i64], |r| r.get(0))?;
    // One statement for the whole claim, the chosen ids as a JSON array:
    // an `UPDATE … RETURNING` per task opened and filled an ephemeral table
    // each time, which `perf` put at about a third of the writer thread's
    // time in the burn-down. A task's fence is its place in the array.
    let first_fence = last_fence - chosen.len() as i64 + 1;
    let ids = Json::from(chosen).to_string();
    let mut take = tx.prepare_cached(&format!(
        "UPDATE tasks SET state = 'INPROGRESS', attempts = attempts + 1, fence = ?2 + chosen.key,
             lease_owner = ?3, lease_expires_at = ?4, started_at = ?5, cancel_requested = 0,
             version = version + 1, modified_at = ?5, {LOGS_AT_6}
         FROM json_each(?1) AS chosen WHERE tasks.id = chosen.value
         RETURNING {TASK_COLUMNS}, fence"
    ))?;
    let mut rows = take.query(params![
        ids,
        first_fence,
        worker,
        lease_until,
        micros(now),
        log
    ])?;
    while let Some(r) = rows.next()? {
        claimed.push((TaskRow::read(r)?, r.get(26)?));
    }
    drop(rows);
    drop(take);
    // In the order chosen (priority, then due time), as the fences are.
    claimed.sort_unstable_by_key(|c| c.1);
    Ok(claimed)
}

/// The claimed rows as tasks, parsed off the writer thread. A row that does
/// not parse (its JSON damaged outside datask) is left out, its claim
/// already committed: its lease runs out and the sweep ends it like any
/// lost run, instead of the row failing every claim that reaches it.
fn decode_claims(rows: Vec<(TaskRow, i64)>) -> Vec<ClaimedTask> {
    rows.into_iter()
        .filter_map(|(row, fence)| {
            let id = row.id;
            match row.decode() {
                Ok(task) => Some(ClaimedTask { task, fence }),
                Err(error) => {
                    tracing::error!(task = id, %error, "a claimed task's row does not parse; its lease will run out");
                    None
                }
            }
        })
        .collect()
}

/// A run end with its values serialised, for `complete_in`: done before the
/// write, so that serialising the logs, errors and outputs is not the
/// writer thread's work. (One `UPDATE … FROM json_each` for the batch, as
/// the claim does, was slower: SQLite parsed each end's JSON once a field.)
struct End {
    id: TaskId,
    fence: i64,
    state: TaskState,
    errors: String,
    output: Option<String>,
    result: Option<String>,
    now: i64,
    run_at: Option<i64>,
    once: Option<String>,
    logs: String,
}

fn prepare_ends(done: Vec<Finished>) -> Result<Vec<End>, Failure> {
    let mut ends = Vec::with_capacity(done.len());
    for Finished {
        id,
        fence,
        completion: mut done,
    } in done
    {
        let (state, logs) = done.stored_state_and_logs();
        let run_at = done.reschedule.map(micros);
        ends.push(End {
            id,
            fence,
            state,
            errors: serde_json::to_string(&done.errors)?,
            output: done.output.map(|o| o.to_string()),
            result: done.result,
            now: micros(done.now),
            run_at,
            once: done.reschedule.map(|t| t.to_string()),
            logs: logs_json(&logs)?,
        });
    }
    Ok(ends)
}

/// Records run ends inside the caller's transaction; answers the ids whose
/// fence no longer held.
fn complete_in(tx: &Connection, ends: Vec<End>) -> Result<Vec<TaskId>, Failure> {
    let mut lost = Vec::new();
    let mut update = tx.prepare_cached(&format!(
        "UPDATE tasks SET state = ?2, errors = ?3, output = ?4, result = ?5, finished_at = ?6, modified_at = ?6,
             version = version + 1, lease_owner = NULL, lease_expires_at = NULL, checkpoint = NULL,
             run_at = COALESCE(?7, run_at),
             attempts = CASE WHEN ?7 IS NULL THEN attempts ELSE 0 END,
             trigger = CASE WHEN ?7 IS NULL THEN trigger ELSE json_set(trigger, '$.once', ?8) END,
             {}
         WHERE id = ?1 AND fence = ?10 AND state = 'INPROGRESS'",
        append_logs!("?9")
    ))?;
    for e in ends {
        let n = update.execute(params![
            e.id,
            e.state.as_str(),
            e.errors,
            e.output,
            e.result,
            e.now,
            e.run_at,
            e.once,
            e.logs,
            e.fence,
        ])?;
        if n == 0 {
            lost.push(e.id);
        }
    }
    Ok(lost)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn create_tenant(&self, new: NewTenant) -> StoreResult<Tenant> {
        let now = Timestamp::now();
        self.write(move |c| {
            let id = c.query_row(
                "INSERT INTO tenants (name, timezone, concurrency, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                params![new.name, new.timezone, new.concurrency, micros(now)],
                |r| r.get(0),
            )?;
            Ok(Tenant { id, name: new.name, timezone: new.timezone, concurrency: new.concurrency, created_at: from_micros(micros(now)) })
        })
        .await
    }

    async fn tenant(&self, id: TenantId) -> StoreResult<Option<Tenant>> {
        self.lookup(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, name, timezone, concurrency, created_at FROM tenants WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok(Tenant {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    timezone: r.get(2)?,
                    concurrency: r.get(3)?,
                    created_at: from_micros(r.get(4)?),
                })
            })
            .optional()?)
        })
    }

    async fn profile_settings(&self, tenant: TenantId) -> StoreResult<ProfileSettings> {
        self.lookup(move |c| {
            let text: Option<Option<String>> = c
                .prepare_cached("SELECT settings FROM tenants WHERE id = ?1")?
                .query_row([tenant], |r| r.get(0))
                .optional()?;
            match text {
                None => Err(StoreError::NotFound.into()),
                Some(None) => Ok(ProfileSettings::default()),
                Some(Some(t)) => Ok(serde_json::from_str(&t)?),
            }
        })
    }

    async fn update_tenant(&self, tenant: Tenant, settings: ProfileSettings) -> StoreResult<()> {
        self.write(move |c| {
            let n = c.execute(
                "UPDATE tenants SET name = ?2, timezone = ?3, concurrency = ?4, settings = ?5 WHERE id = ?1",
                params![tenant.id, tenant.name, tenant.timezone, tenant.concurrency, serde_json::to_string(&settings)?],
            )?;
            if n == 0 { Err(StoreError::NotFound.into()) } else { Ok(()) }
        })
        .await
    }

    async fn add_credential(&self, cred: Credential) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO credentials (secret_sha256, tenant_id, kind) VALUES (?1, ?2, ?3)",
                params![cred.secret_sha256, cred.tenant_id, cred.kind.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn credential_by_hash(&self, secret_sha256: &str) -> StoreResult<Option<Credential>> {
        let hash = secret_sha256.to_string();
        self.lookup(move |c| {
            Ok(c.prepare_cached(
                "SELECT secret_sha256, tenant_id, kind FROM credentials WHERE secret_sha256 = ?1",
            )?
            .query_row([&hash], |r| {
                let kind: String = r.get(2)?;
                Ok(CredentialKind::parse(&kind).map(|kind| Credential {
                    secret_sha256: r.get(0).unwrap_or_default(),
                    tenant_id: r.get(1).unwrap_or_default(),
                    kind,
                }))
            })
            .optional()?
            .flatten())
        })
    }

    async fn create_user(&self, name: &str, token_sha256: &str) -> StoreResult<User> {
        let (name, hash) = (name.to_string(), token_sha256.to_string());
        self.write(move |c| {
            let id = c.query_row(
                "INSERT INTO users (name, token_sha256, created_at) VALUES (?1, ?2, ?3) RETURNING id",
                params![name, hash, micros(Timestamp::now())],
                |r| r.get(0),
            )?;
            Ok(User { id, name })
        })
        .await
    }

    async fn user_by_token(&self, token_sha256: &str) -> StoreResult<Option<User>> {
        let hash = token_sha256.to_string();
        self.lookup(move |c| {
            Ok(
                c.prepare_cached("SELECT id, name FROM users WHERE token_sha256 = ?1")?
                    .query_row([hash], |r| {
                        Ok(User {
                            id: r.get(0)?,
                            name: r.get(1)?,
                        })
                    })
                    .optional()?,
            )
        })
    }

    async fn set_membership(&self, tenant: TenantId, user: i64, level: Level) -> StoreResult<()> {
        self.write(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")?
                .exists([tenant])?
                && c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
                    .exists([user])?;
            if !exists {
                return Err(StoreError::NotFound.into());
            }
            c.execute(
                "INSERT INTO memberships (tenant_id, user_id, level) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET level = excluded.level",
                params![tenant, user, level.as_str()],
            )?;
            Ok(())
        })
        .await
    }

    async fn membership(&self, tenant: TenantId, user: i64) -> StoreResult<Option<Level>> {
        self.lookup(move |c| {
            let level: Option<String> = c
                .prepare_cached(
                    "SELECT level FROM memberships WHERE tenant_id = ?1 AND user_id = ?2",
                )?
                .query_row(params![tenant, user], |r| r.get(0))
                .optional()?;
            Ok(level.as_deref().and_then(Level::parse))
        })
    }

    async fn insert_task(&self, new: NewTask, now: Timestamp) -> StoreResult<InsertedTask> {
        let out = self
            .write(move |c| {
                let tx = c.savepoint()?;
                if let Some(key) = &new.idempotency_key {
                    let existing: Option<TaskId> = tx
                        .prepare_cached("SELECT id FROM tasks WHERE tenant_id = ?1 AND idempotency_key = ?2")?
                        .query_row(params![new.tenant_id, key], |r| r.get(0))
                        .optional()?;
                    if let Some(id) = existing {
                        let task = must_exist(load_task(&tx, None, id)?)?;
                        return Ok(InsertedTask { task, created: false });
                    }
                }
                let id: TaskId = tx
                    .prepare_cached(
                        "INSERT INTO tasks (tenant_id, identifier, desc, state, trigger, target, max_attempts, priority,
                             created_at, modified_at, run_at, schedule_anchor, idempotency_key)
                         VALUES (?1, ?2, ?3, 'READY', ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11) RETURNING id",
                    )?
                    .query_row(
                        params![
                            new.tenant_id,
                            new.identifier,
                            new.desc,
                            serde_json::to_string(&new.trigger).map_err(json_err)?,
                            serde_json::to_string(&new.target).map_err(json_err)?,
                            new.max_attempts,
                            new.priority,
                            micros(now),
                            micros(new.run_at),
                            anchor_for(&new.trigger),
                            new.idempotency_key,
                        ],
                        |r| r.get(0),
                    )?;
                let task = must_exist(load_task(&tx, None, id)?)?;
                tx.commit()?;
                Ok(InsertedTask { task, created: true })
            })
            .await?;
        if out.created {
            self.wake_workers();
        }
        Ok(out)
    }

    async fn insert_tasks(&self, new: Vec<NewTask>, now: Timestamp) -> StoreResult<Vec<Enqueued>> {
        if new.is_empty() {
            return Ok(vec![]);
        }
        // One write, so one transaction: the cached statement runs once per
        // task (multi-row `VALUES` statements were slower for imports, see
        // BENCHMARKS.md). A key seen earlier in the batch is found by the
        // same lookup as a stored one: this transaction sees its own rows.
        let out = self
            .write(move |c| {
                let tx = c.savepoint()?;
                let mut out = Vec::with_capacity(new.len());
                {
                    let mut existing = tx.prepare_cached(
                        "SELECT id FROM tasks WHERE tenant_id = ?1 AND idempotency_key = ?2",
                    )?;
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO tasks (tenant_id, identifier, desc, state, trigger, target, max_attempts, priority,
                             created_at, modified_at, run_at, schedule_anchor, idempotency_key)
                         VALUES (?1, ?2, ?3, 'READY', ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11)",
                    )?;
                    for t in new {
                        if let Some(key) = &t.idempotency_key {
                            let id: Option<TaskId> = existing
                                .query_row(params![t.tenant_id, key], |r| r.get(0))
                                .optional()?;
                            if let Some(id) = id {
                                out.push(Enqueued { id, created: false });
                                continue;
                            }
                        }
                        insert.execute(params![
                            t.tenant_id,
                            t.identifier,
                            t.desc,
                            serde_json::to_string(&t.trigger)?,
                            serde_json::to_string(&t.target)?,
                            t.max_attempts,
                            t.priority,
                            micros(now),
                            micros(t.run_at),
                            anchor_for(&t.trigger),
                            t.idempotency_key,
                        ])?;
                        out.push(Enqueued {
                            id: tx.last_insert_rowid(),
                            created: true,
                        });
                    }
                }
                tx.commit()?;
                Ok(out)
            })
            .await?;
        if out.iter().any(|e| e.created) {
            self.wake_workers();
        }
        Ok(out)
    }

    async fn get_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<Option<Task>> {
        self.lookup(move |c| Ok(load_task(c, Some(tenant), id)?))
    }

    async fn list_tasks(&self, tenant: TenantId, filter: &TaskFilter) -> StoreResult<Vec<Task>> {
        let f = filter.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = ?1
                   AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR identifier = ?3)
                   AND (?4 IS NULL OR created_at > ?4) AND (?5 IS NULL OR created_at < ?5)
                   AND (?6 IS NULL OR id < ?6)
                 ORDER BY id DESC LIMIT ?7"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    tenant,
                    f.state.map(|s| s.as_str()),
                    f.identifier,
                    f.created_after.map(micros),
                    f.created_before.map(micros),
                    f.before_id,
                    f.limit
                ],
                task_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn query_tasks(&self, tenant: TenantId, query: &TaskQuery) -> StoreResult<Vec<Task>> {
        let (where_sql, order_sql, params) = query.to_sql(2, |n| format!("?{n}"));
        let n = params.len();
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = ?1 AND {where_sql} ORDER BY {order_sql} LIMIT ?{} OFFSET ?{}",
            n + 2,
            n + 3
        );
        let (limit, offset) = (query.limit, query.offset);
        self.read(move |c| {
            let mut stmt = c.prepare(&sql)?;
            let mut args: Vec<rusqlite::types::Value> = vec![tenant.into()];
            for p in params {
                args.push(match p {
                    Param::Int(i) => i.into(),
                    Param::Text(t) => t.into(),
                });
            }
            args.push(limit.into());
            args.push(offset.into());
            let rows = stmt.query_map(rusqlite::params_from_iter(args), task_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn update_task(
        &self,
        tenant: TenantId,
        id: TaskId,
        update: TaskUpdate,
        now: Timestamp,
    ) -> StoreResult<Task> {
        self.write(move |c| {
            let tx = c.savepoint()?;
            let task = must_exist(load_task(&tx, Some(tenant), id)?)?;
            if let Some(v) = update.expected_version
                && v != task.version
            {
                return Err(StoreError::VersionConflict { current: task.version }.into());
            }
            if task.state == TaskState::InProgress {
                return Err(StoreError::Conflict(format!("task {id} is running; cancel it or wait until it finishes")).into());
            }
            tx.prepare_cached(
                "UPDATE tasks SET desc = ?2, trigger = ?3, target = ?4, run_at = ?5, schedule_anchor = ?6,
                     version = version + 1, modified_at = ?7 WHERE id = ?1",
            )?
            .execute(params![
                id,
                update.desc,
                serde_json::to_string(&update.trigger).map_err(json_err)?,
                serde_json::to_string(&update.target).map_err(json_err)?,
                micros(update.run_at),
                anchor_for(&update.trigger),
                micros(now)
            ])?;
            let task = must_exist(load_task(&tx, None, id)?)?;
            tx.commit()?;
            Ok(task)
        })
        .await
        .inspect(|_| self.wake_workers())
    }

    async fn delete_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.savepoint()?;
            let task = must_exist(load_task(&tx, Some(tenant), id)?)?;
            if task.state == TaskState::InProgress {
                return Err(StoreError::Conflict(format!(
                    "task {id} is running; cancel it before deleting it"
                ))
                .into());
            }
            tx.execute("DELETE FROM task_rejects WHERE task_id = ?1", [id])?;
            tx.execute("DELETE FROM tasks WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn execute_now(&self, tenant: TenantId, id: TaskId, now: Timestamp) -> StoreResult<Task> {
        let task = self
            .write(move |c| {
                let tx = c.savepoint()?;
                let task = must_exist(load_task(&tx, Some(tenant), id)?)?;
                if task.state == TaskState::InProgress {
                    return Err(StoreError::Conflict(format!("task {id} is already running")).into());
                }
                let logs = if task.state != TaskState::Ready {
                    vec![LogEntry::transition(task.state, TaskState::Ready, now)]
                } else {
                    vec![]
                };
                tx.prepare_cached(&format!(
                    "UPDATE tasks SET state = 'READY', run_at = ?2, checkpoint = NULL, progress_done = 0, progress_total = NULL,
                         cancel_requested = 0, attempts = 0, version = version + 1, modified_at = ?2, {LOGS_AT_3} WHERE id = ?1"
                ))?
                .execute(params![id, micros(now), logs_json(&logs)?])?;
                let task = must_exist(load_task(&tx, None, id)?)?;
                tx.commit()?;
                Ok(task)
            })
            .await?;
        self.wake_workers();
        Ok(task)
    }

    async fn request_cancel(
        &self,
        tenant: TenantId,
        id: TaskId,
        now: Timestamp,
    ) -> StoreResult<Task> {
        self.write(move |c| {
            let tx = c.savepoint()?;
            let task = must_exist(load_task(&tx, Some(tenant), id)?)?;
            match task.state {
                TaskState::Ready => {
                    let logs = vec![LogEntry::transition(TaskState::Ready, TaskState::Cancelled, now)];
                    tx.prepare_cached(&format!(
                        "UPDATE tasks SET state = 'CANCELLED', finished_at = ?2, version = version + 1, modified_at = ?2, {LOGS_AT_3} WHERE id = ?1"
                    ))?
                    .execute(params![id, micros(now), logs_json(&logs)?])?;
                }
                TaskState::InProgress => {
                    tx.prepare_cached("UPDATE tasks SET cancel_requested = 1, version = version + 1, modified_at = ?2 WHERE id = ?1")?
                        .execute(params![id, micros(now)])?;
                }
                done => return Err(StoreError::Conflict(format!("task {id} has already finished ({done})")).into()),
            }
            let task = must_exist(load_task(&tx, None, id)?)?;
            tx.commit()?;
            Ok(task)
        })
        .await
    }

    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<ClaimedTask>> {
        let worker = worker.to_string();
        self.write(move |c| {
            let tx = c.savepoint()?;
            let claimed = claim_in(&tx, &worker, limit, lease, now)?;
            tx.commit()?;
            Ok(claimed)
        })
        .await
        .map(decode_claims)
    }

    async fn heartbeat(&self, id: TaskId, fence: i64, lease_until: Timestamp) -> StoreResult<bool> {
        self.write(move |c| {
            let cancel: Option<bool> = c
                .prepare_cached(
                    "UPDATE tasks SET lease_expires_at = ?3 WHERE id = ?1 AND fence = ?2 AND state = 'INPROGRESS' RETURNING cancel_requested",
                )?
                .query_row(params![id, fence, micros(lease_until)], |r| r.get(0))
                .optional()?;
            cancel.ok_or(Failure::Store(StoreError::LeaseLost(id)))
        })
        .await
    }

    async fn set_progress(
        &self,
        id: TaskId,
        fence: i64,
        done: i64,
        total: Option<i64>,
    ) -> StoreResult<()> {
        let now = Timestamp::now();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE tasks SET progress_done = ?3, progress_total = COALESCE(?4, progress_total), version = version + 1, modified_at = ?5
                     WHERE id = ?1 AND fence = ?2 AND state = 'INPROGRESS'",
                )?
                .execute(params![id, fence, done, total, micros(now)])?;
            if n == 0 { Err(StoreError::LeaseLost(id).into()) } else { Ok(()) }
        })
        .await
    }

    async fn append_logs(&self, id: TaskId, fence: i64, logs: Vec<LogEntry>) -> StoreResult<()> {
        let now = Timestamp::now();
        self.write(move |c| {
            let n = c
                .prepare_cached(&format!(
                    "UPDATE tasks SET {LOGS_AT_3}, version = version + 1, modified_at = ?4 WHERE id = ?1 AND fence = ?2 AND state = 'INPROGRESS'"
                ))?
                .execute(params![id, fence, logs_json(&logs)?, micros(now)])?;
            if n == 0 { Err(StoreError::LeaseLost(id).into()) } else { Ok(()) }
        })
        .await
    }

    async fn complete_many(&self, done: Vec<Finished>) -> StoreResult<Vec<TaskId>> {
        // Limit 0 claims nothing, so the claim's other arguments are unused.
        let (lost, _) = self
            .complete_and_claim(done, "", 0, Duration::ZERO, Timestamp::now())
            .await?;
        Ok(lost)
    }

    async fn complete_and_claim(
        &self,
        done: Vec<Finished>,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<(Vec<TaskId>, Vec<ClaimedTask>)> {
        // One write: the ends and the claim share a commit.
        let rescheduled = done.iter().any(|f| f.completion.reschedule.is_some());
        let worker = worker.to_string();
        let ends = prepare_ends(done).map_err(StoreError::from)?;
        let answer = self
            .write(move |c| {
                let tx = c.savepoint()?;
                let lost = complete_in(&tx, ends)?;
                let claimed = if limit == 0 {
                    vec![]
                } else {
                    claim_in(&tx, &worker, limit, lease, now)?
                };
                tx.commit()?;
                Ok((lost, claimed))
            })
            .await?;
        if rescheduled {
            self.wake_workers();
        }
        let (lost, claimed) = answer;
        Ok((lost, decode_claims(claimed)))
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
        let ids = self
            .write(move |c| {
                let tx = c.savepoint()?;
                let expired: Vec<(TaskId, i64, i64, bool)> = tx
                    .prepare_cached(
                        "SELECT id, attempts, max_attempts, cancel_requested FROM tasks WHERE state = 'INPROGRESS' AND lease_expires_at < ?1",
                    )?
                    .query_map([micros(now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
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
                        "lease expired".to_string()
                    };
                    let logs = [LogEntry::transition(TaskState::InProgress, to, now), LogEntry::new(msg, now)];
                    let finished = if to == TaskState::Ready { None } else { Some(micros(now)) };
                    tx.prepare_cached(&format!(
                        "UPDATE tasks SET state = ?2, run_at = ?3, finished_at = COALESCE(?4, finished_at), lease_owner = NULL,
                             lease_expires_at = NULL, version = version + 1, modified_at = ?3, {LOGS_AT_5} WHERE id = ?1"
                    ))?
                    .execute(params![id, to.as_str(), micros(now), finished, logs_json(&logs)?])?;
                }
                tx.commit()?;
                Ok(expired.into_iter().map(|e| e.0).collect::<Vec<_>>())
            })
            .await?;
        if !ids.is_empty() {
            self.wake_workers();
        }
        Ok(ids)
    }

    async fn next_due(&self) -> StoreResult<Option<Timestamp>> {
        self.read(|c| {
            let at: Option<i64> = c.query_row(
                "SELECT MIN(run_at) FROM tasks WHERE state = 'READY'",
                [],
                |r| r.get(0),
            )?;
            Ok(from_micros_opt(at))
        })
        .await
    }

    async fn wait_for_work(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.work.notified()).await;
    }

    async fn try_lead(&self, node: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        let node = node.to_string();
        self.write(move |c| {
            let until = micros(now) + ttl.as_micros() as i64;
            let n = c.execute(
                "INSERT INTO leader (name, node, expires_at) VALUES ('scheduler', ?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
                 WHERE leader.node = excluded.node OR leader.expires_at < ?3",
                params![node, until, micros(now)],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_upload(&self, u: Upload) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO uploads (id, tenant_id, size, sha256, object_key, filename, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![u.id, u.tenant_id, u.size, u.sha256, u.object_key, u.filename, micros(u.created_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_upload(&self, tenant: TenantId, id: &str) -> StoreResult<()> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute(
                "DELETE FROM uploads WHERE id = ?1 AND tenant_id = ?2",
                params![id, tenant],
            )?;
            Ok(())
        })
        .await
    }

    async fn expired_uploads(
        &self,
        created_before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<Upload>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, tenant_id, size, sha256, object_key, filename, created_at FROM uploads u
                 WHERE created_at < ?1 AND NOT EXISTS (
                     SELECT 1 FROM tasks t WHERE t.tenant_id = u.tenant_id
                       AND t.state IN ('READY', 'INPROGRESS')
                       AND json_extract(t.target, '$.upload_id') = u.id)
                 ORDER BY created_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![micros(created_before), limit], upload_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn get_upload(&self, tenant: TenantId, id: &str) -> StoreResult<Option<Upload>> {
        let id = id.to_string();
        self.lookup(move |c| {
            Ok(c.prepare_cached("SELECT id, tenant_id, size, sha256, object_key, filename, created_at FROM uploads WHERE id = ?1 AND tenant_id = ?2")?
                .query_row(params![id, tenant], upload_from_row)
                .optional()?)
        })
    }

    async fn import_batch(&self, batch: ImportBatch) -> StoreResult<BatchOutcome> {
        self.write(move |c| crate::data::import_batch(c, batch))
            .await
    }

    async fn clear_rejects(&self, task: TaskId, fence: i64) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.savepoint()?;
            check_fence(&tx, task, fence)?;
            tx.execute("DELETE FROM task_rejects WHERE task_id = ?1", [task])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn reject_summary(&self, task: TaskId) -> StoreResult<Vec<RejectGroup>> {
        self.read(move |c| crate::data::reject_summary(c, task))
            .await
    }

    async fn rejects(
        &self,
        task: TaskId,
        after_row: i64,
        limit: i64,
    ) -> StoreResult<Vec<RowReject>> {
        self.read(move |c| crate::data::rejects(c, task, after_row, limit))
            .await
    }

    async fn count_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: Option<&Filter>,
    ) -> StoreResult<i64> {
        let (where_sql, params) = crate::data::segment_sql(filter);
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE tenant_id = ?1 AND {where_sql}",
            index.table
        );
        self.read(move |c| {
            let mut args: Vec<rusqlite::types::Value> = vec![tenant.into()];
            args.extend(params);
            Ok(c.query_row(&sql, rusqlite::params_from_iter(args), |r| r.get(0))?)
        })
        .await
    }

    async fn delete_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: &Filter,
    ) -> StoreResult<i64> {
        let filter = filter.clone();
        self.write(move |c| crate::customer::delete_rows(c, tenant, index, &filter))
            .await
    }

    async fn clear_fields(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: &Filter,
        columns: &[&'static str],
        attributes: &[String],
    ) -> StoreResult<i64> {
        let (filter, columns, attributes) = (filter.clone(), columns.to_vec(), attributes.to_vec());
        self.write(move |c| {
            crate::customer::clear_fields(c, tenant, index, &filter, &columns, &attributes)
        })
        .await
    }

    async fn lookup_profiles(
        &self,
        tenant: TenantId,
        column: &'static str,
        values: Vec<String>,
    ) -> StoreResult<Vec<(String, String)>> {
        self.read(move |c| crate::customer::lookup_profiles(c, tenant, column, values))
            .await
    }

    async fn create_segment(
        &self,
        tenant: TenantId,
        name: String,
        filter: Json,
        now: Timestamp,
    ) -> StoreResult<SavedSegment> {
        self.write(move |c| crate::customer::create_segment(c, tenant, name, filter, now))
            .await
    }

    async fn get_segment(&self, tenant: TenantId, id: i64) -> StoreResult<Option<SavedSegment>> {
        self.lookup(move |c| crate::customer::get_segment(c, tenant, id))
    }

    async fn list_segments(&self, tenant: TenantId) -> StoreResult<Vec<SavedSegment>> {
        self.read(move |c| crate::customer::list_segments(c, tenant))
            .await
    }

    async fn update_segment(
        &self,
        tenant: TenantId,
        id: i64,
        name: String,
        filter: Json,
        now: Timestamp,
    ) -> StoreResult<SavedSegment> {
        self.write(move |c| crate::customer::update_segment(c, tenant, id, name, filter, now))
            .await
    }

    async fn delete_segment(&self, tenant: TenantId, id: i64) -> StoreResult<()> {
        self.write(move |c| crate::customer::delete_segment(c, tenant, id))
            .await
    }

    async fn export_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: Option<&Filter>,
    ) -> StoreResult<RowStream> {
        Ok(crate::data::export_rows(
            self.inner.clone(),
            tenant,
            index,
            filter,
        ))
    }
}

impl SqliteStore {
    async fn back_to_ready(
        &self,
        id: TaskId,
        fence: i64,
        run_at: Option<Timestamp>,
        mut logs: Vec<LogEntry>,
        give_back: bool,
    ) -> StoreResult<()> {
        let now = Timestamp::now();
        self.write(move |c| {
            let tx = c.savepoint()?;
            check_fence(&tx, id, fence)?;
            logs.insert(0, LogEntry::transition(TaskState::InProgress, TaskState::Ready, now));
            tx.prepare_cached(&format!(
                "UPDATE tasks SET state = 'READY', run_at = COALESCE(?2, run_at), attempts = attempts - ?3, lease_owner = NULL, lease_expires_at = NULL,
                     version = version + 1, modified_at = ?4, {LOGS_AT_5} WHERE id = ?1"
            ))?
            .execute(params![id, run_at.map(micros), give_back as i64, micros(now), logs_json(&logs)?])?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.wake_workers();
        Ok(())
    }
}

/// An `uploads` row read with the columns `id, tenant_id, size, sha256,
/// object_key, filename, created_at`, in that order.
fn upload_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Upload> {
    Ok(Upload {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        size: r.get(2)?,
        sha256: r.get(3)?,
        object_key: r.get(4)?,
        filename: r.get(5)?,
        created_at: from_micros(r.get(6)?),
    })
}
