//! The store interface. SQLite and PostgreSQL implement it in `datask-store`,
//! and one conformance suite holds both to the same behaviour.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use jiff::Timestamp;
use serde_json::{Map, Value as Json};

use crate::index::{IndexDef, Value};
use crate::task::{LogEntry, NewTask, Task, TaskUpdate};
use crate::{TaskId, TaskState, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// `PUT` with a stale `version`.
    #[error("the task has changed: its version is now {current}")]
    VersionConflict { current: i64 },
    /// The task's state does not allow the change (e.g. updating a running task).
    #[error("{0}")]
    Conflict(String),
    /// The caller's lease was taken by another worker: it may not write.
    #[error("the lease on task {0} was lost")]
    LeaseLost(TaskId),
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub timezone: String,
    /// How many of its tasks may run at once.
    pub concurrency: i64,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub name: String,
    pub timezone: String,
    pub concurrency: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    AppToken,
    PrivilegedKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::AppToken => "apptoken",
            CredentialKind::PrivilegedKey => "privileged",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "apptoken" => Some(CredentialKind::AppToken),
            "privileged" => Some(CredentialKind::PrivilegedKey),
            _ => None,
        }
    }
}

/// A stored credential: only the SHA-256 of the secret (hex) is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub tenant_id: TenantId,
    pub kind: CredentialKind,
    pub secret_sha256: String,
}

/// A person's access to one tenant; each level includes the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Read tasks, download results.
    Viewer,
    /// Also create, update, execute, cancel, upload.
    Operator,
    /// Also delete tasks, settings, segments.
    Manager,
}

impl Level {
    pub const NAMES: [&'static str; 3] = ["viewer", "operator", "manager"];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Viewer => "viewer",
            Level::Operator => "operator",
            Level::Manager => "manager",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Level::Viewer),
            "operator" => Some(Level::Operator),
            "manager" => Some(Level::Manager),
            _ => None,
        }
    }
}

/// An admin user (not bound to a tenant: memberships say where it may act).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub name: String,
}

/// Filters of `GET /tasks`; newest first, `before_id` is the cursor.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub identifier: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub before_id: Option<TaskId>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct InsertedTask {
    pub task: Task,
    /// False when an `Idempotency-Key` matched an earlier task.
    pub created: bool,
}

/// One task of an `insert_tasks` batch, in the batch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: TaskId,
    /// False when its `Idempotency-Key` matched an earlier task (stored
    /// before, or earlier in the same batch): `id` is that task's.
    pub created: bool,
}

#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task: Task,
    /// Every write of the run carries this; a stale fence is `LeaseLost`.
    pub fence: i64,
}

/// How a run ends.
#[derive(Debug, Clone)]
pub struct Completion {
    /// DONE, ERROR, FATAL or CANCELLED.
    pub state: TaskState,
    pub errors: Map<String, Json>,
    pub output: Option<Json>,
    pub result: Option<String>,
    /// Appended to the task's logs (the store adds the state transition).
    pub logs: Vec<LogEntry>,
    /// A repeating task goes back to READY at this time (with `trigger.once` moved).
    pub reschedule: Option<Timestamp>,
    pub now: Timestamp,
}

impl Completion {
    /// What a store records for this end: the state stored (READY for a
    /// repeating task sent back) and the log entries appended (the
    /// transition out of INPROGRESS, the run's own entries, then back to
    /// READY when rescheduled). Takes the run's entries.
    pub fn stored_state_and_logs(&mut self) -> (TaskState, Vec<LogEntry>) {
        let mut logs = Vec::with_capacity(self.logs.len() + 2);
        logs.push(LogEntry::transition(
            TaskState::InProgress,
            self.state,
            self.now,
        ));
        logs.append(&mut self.logs);
        if self.reschedule.is_some() {
            logs.push(LogEntry::transition(self.state, TaskState::Ready, self.now));
            return (TaskState::Ready, logs);
        }
        (self.state, logs)
    }
}

/// One run's end, as `complete_many` records it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: TaskId,
    pub fence: i64,
    pub completion: Completion,
}

#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub tenant_id: TenantId,
    pub size: i64,
    pub sha256: String,
    pub object_key: String,
    pub filename: Option<String>,
    pub created_at: Timestamp,
}

/// A row an import rejected, kept with the task for its report and its
/// failed-rows file.
#[derive(Debug, Clone, PartialEq)]
pub struct RowReject {
    /// Row number in the file, the header being row 1.
    pub row: i64,
    pub code: String,
    /// The column concerned, when there is one.
    pub column: Option<String>,
    pub message: String,
    /// The row as it was read.
    pub raw: String,
}

/// Rejects of one kind: their count and the first rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectGroup {
    pub code: String,
    pub column: Option<String>,
    pub count: i64,
    /// At most four, in row order.
    pub first_rows: Vec<i64>,
}

/// One committed step of an import: data, rejects and checkpoint go in one
/// transaction, fenced by the lease.
#[derive(Debug, Clone)]
pub struct ImportBatch {
    pub tenant_id: TenantId,
    pub task_id: TaskId,
    pub fence: i64,
    pub index: &'static IndexDef,
    /// Index columns present in the file (positions in `index.columns`);
    /// only these are written on update. Always includes the key (0).
    pub columns: Vec<usize>,
    /// Valid rows, values in the order of `columns`. Keys are distinct
    /// within a batch: the caller rejects later repeats itself.
    pub rows: Vec<ImportRow>,
    /// Unique across the service and stable across resumes of one run (the
    /// fence of the attempt that started the run). Each written row keeps it
    /// in `_import_run`; a row whose stored `_import_run` already equals it
    /// was written earlier in this run, so the new one is a duplicate.
    pub run_tag: i64,
    pub rejects: Vec<RowReject>,
    /// When true, validate only: nothing is written to the index.
    pub dry_run: bool,
    pub checkpoint: Json,
    pub progress_done: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    pub row: i64,
    pub values: Vec<Value>,
    /// The row as read, for the failed-rows file should it be a duplicate.
    pub raw: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: i64,
    /// Rows whose key this task had already written in an earlier batch;
    /// the store records them as rejects with code `duplicate`.
    pub duplicates: i64,
}

/// A saved segment: a named filter over profiles, edited at `/segments`.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSegment {
    pub id: i64,
    pub tenant_id: TenantId,
    pub name: String,
    /// The filter as given (checked when saved, parsed again per run).
    pub filter: Json,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

pub type RowStream = BoxStream<'static, StoreResult<Vec<Vec<Value>>>>;

/// Semantics every backend keeps (the conformance suite checks them):
///
/// * `insert_task`: state READY, version 1, attempts 0, no logs,
///   `schedule_anchor` = `trigger.once` when `trigger.repeat` is set.
///   `(tenant, idempotency_key)` is unique; a repeat returns the first task
///   with `created: false`.
/// * `insert_tasks`: each task as `insert_task` would insert it, in order,
///   all in one transaction (all or none); answers one `Enqueued` per task
///   in the same order. A key already stored, or repeated within the batch,
///   gives the first task's id with `created: false`. One wake-up for the
///   batch.
/// * Every change bumps `version` and sets `modified_at`.
/// * `update_task` replaces desc, trigger, target, run_at (and the anchor);
///   Conflict while INPROGRESS; VersionConflict when `expected_version` is
///   stale. Tenant mismatch is NotFound everywhere.
/// * `execute_now`: any state but INPROGRESS → READY, run_at = now,
///   checkpoint and progress cleared; logs `"<OLD> -> READY"` when it changed.
/// * `claim`: READY tasks with run_at ≤ now, by (priority, run_at, id), at
///   most `tenant.concurrency` INPROGRESS per tenant counting the ones
///   already running. Each becomes INPROGRESS, attempts + 1, a new fence from
///   a service-wide sequence, lease until now + lease, started_at = now,
///   cancel_requested = false, log `"READY -> INPROGRESS"`.
/// * Fenced writes (`heartbeat`, `set_progress`, `append_logs`, `complete`,
///   `retry_later`, `release`, `clear_rejects`, `import_batch`) succeed only
///   while the task is INPROGRESS with that fence, otherwise `LeaseLost` and
///   nothing is written.
/// * `complete` appends `"INPROGRESS -> <STATE>"` then `completion.logs`,
///   replaces errors, output and result, sets finished_at, clears lease and
///   checkpoint. With `reschedule` it also logs `"<STATE> -> READY"` and the
///   task is READY with run_at = `trigger.once` = the new time.
/// * `retry_later` logs `"INPROGRESS -> READY"` (attempt spent); `release`
///   does too but gives the attempt back and keeps `run_at` (due at once).
/// * `reclaim_expired`: expired leases → READY (`"INPROGRESS -> READY"` and a
///   `"lease expired"` entry), FATAL when attempts ≥ max_attempts, CANCELLED
///   when cancellation had been requested; finished ones get finished_at.
/// * `import_batch` writes, in one transaction: each row upserted by
///   (tenant, key) updating only `columns`; rows whose stored `_import_run`
///   equals `run_tag` are rejected as code `duplicate` (message "duplicate
///   key"); `rejects`; checkpoint; progress_done. With `dry_run` the index
///   is untouched (no cross-batch duplicate check then).
/// * `reject_summary`: groups by (code, column), ordered by their first row.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is, for logs and `/readyz`.
    fn backend_name(&self) -> &'static str;
    async fn ping(&self) -> StoreResult<()>;

    // ----- tenants and credentials -----
    async fn create_tenant(&self, new: NewTenant) -> StoreResult<Tenant>;
    async fn tenant(&self, id: TenantId) -> StoreResult<Option<Tenant>>;
    async fn profile_settings(
        &self,
        tenant: TenantId,
    ) -> StoreResult<crate::settings::ProfileSettings>;
    /// Replaces name, time zone, concurrency and profile settings at once.
    async fn update_tenant(
        &self,
        tenant: Tenant,
        settings: crate::settings::ProfileSettings,
    ) -> StoreResult<()>;
    async fn add_credential(&self, cred: Credential) -> StoreResult<()>;
    async fn credential_by_hash(&self, secret_sha256: &str) -> StoreResult<Option<Credential>>;
    async fn create_user(&self, name: &str, token_sha256: &str) -> StoreResult<User>;
    async fn user_by_token(&self, token_sha256: &str) -> StoreResult<Option<User>>;
    /// Sets (or changes) a user's level in a tenant; NotFound when either is missing.
    async fn set_membership(&self, tenant: TenantId, user: i64, level: Level) -> StoreResult<()>;
    async fn membership(&self, tenant: TenantId, user: i64) -> StoreResult<Option<Level>>;

    // ----- tasks, as clients see them -----
    /// Inserts, or with a known idempotency key returns the first task.
    async fn insert_task(&self, new: NewTask, now: Timestamp) -> StoreResult<InsertedTask>;
    /// Inserts many at once (one transaction), answering ids rather than
    /// whole tasks; idempotency keys as `insert_task`.
    async fn insert_tasks(&self, new: Vec<NewTask>, now: Timestamp) -> StoreResult<Vec<Enqueued>>;
    async fn get_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<Option<Task>>;
    async fn list_tasks(&self, tenant: TenantId, filter: &TaskFilter) -> StoreResult<Vec<Task>>;
    /// The query dialect's `list/task`: conditions, order, limit, offset.
    async fn query_tasks(
        &self,
        tenant: TenantId,
        query: &crate::query::TaskQuery,
    ) -> StoreResult<Vec<Task>>;
    /// Conflict while INPROGRESS; VersionConflict on a stale version.
    async fn update_task(
        &self,
        tenant: TenantId,
        id: TaskId,
        update: TaskUpdate,
        now: Timestamp,
    ) -> StoreResult<Task>;
    /// Conflict while INPROGRESS.
    async fn delete_task(&self, tenant: TenantId, id: TaskId) -> StoreResult<()>;
    /// Makes the task READY and due now. Conflict while INPROGRESS.
    async fn execute_now(&self, tenant: TenantId, id: TaskId, now: Timestamp) -> StoreResult<Task>;
    /// READY → CANCELLED at once; INPROGRESS → flagged, the worker stops
    /// within a heartbeat. Conflict when already finished.
    async fn request_cancel(
        &self,
        tenant: TenantId,
        id: TaskId,
        now: Timestamp,
    ) -> StoreResult<Task>;

    // ----- the engine -----
    /// Claims up to `limit` due READY tasks, interactive first, honouring each
    /// tenant's concurrency; each comes back INPROGRESS with a new fence.
    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<Vec<ClaimedTask>>;
    /// Extends the lease; answers whether cancellation was requested.
    async fn heartbeat(&self, id: TaskId, fence: i64, lease_until: Timestamp) -> StoreResult<bool>;
    async fn set_progress(
        &self,
        id: TaskId,
        fence: i64,
        done: i64,
        total: Option<i64>,
    ) -> StoreResult<()>;
    async fn append_logs(&self, id: TaskId, fence: i64, logs: Vec<LogEntry>) -> StoreResult<()>;
    async fn complete(&self, id: TaskId, fence: i64, completion: Completion) -> StoreResult<()> {
        let lost = self
            .complete_many(vec![Finished {
                id,
                fence,
                completion,
            }])
            .await?;
        if lost.is_empty() {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(id))
        }
    }
    /// Records many runs' ends in one transaction; answers the ids whose
    /// fence no longer held (those are left untouched, the rest recorded).
    async fn complete_many(&self, done: Vec<Finished>) -> StoreResult<Vec<TaskId>>;
    /// `complete_many`, then `claim` of up to `limit` tasks, which sees the
    /// slots those ends freed: the engine's completion writer takes the next
    /// tasks on the same trip, in one round trip where the store can.
    /// Answers the lost ids (as `complete_many`) and the claimed tasks. One
    /// transaction: an error means nothing was recorded. `limit` 0 is
    /// `complete_many`.
    async fn complete_and_claim(
        &self,
        done: Vec<Finished>,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: Timestamp,
    ) -> StoreResult<(Vec<TaskId>, Vec<ClaimedTask>)>;
    /// Back to READY for another attempt at `run_at`.
    async fn retry_later(
        &self,
        id: TaskId,
        fence: i64,
        run_at: Timestamp,
        logs: Vec<LogEntry>,
    ) -> StoreResult<()>;
    /// Back to READY without spending an attempt (graceful shutdown).
    async fn release(&self, id: TaskId, fence: i64, logs: Vec<LogEntry>) -> StoreResult<()>;
    /// INPROGRESS tasks whose lease expired go back to READY, or to FATAL when
    /// their attempts are spent. Returns the ids it touched.
    async fn reclaim_expired(&self, now: Timestamp) -> StoreResult<Vec<TaskId>>;
    /// When the next READY task becomes due.
    async fn next_due(&self) -> StoreResult<Option<Timestamp>>;
    /// Returns when new work may be there (or after `max`).
    async fn wait_for_work(&self, max: Duration);
    /// Becomes or stays the leader for periodic work for `ttl`.
    async fn try_lead(&self, node: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool>;

    // ----- uploads -----
    async fn insert_upload(&self, upload: Upload) -> StoreResult<()>;
    async fn get_upload(&self, tenant: TenantId, id: &str) -> StoreResult<Option<Upload>>;
    /// Forgets an upload (its bytes are the file store's to delete); a
    /// missing one is not an error.
    async fn delete_upload(&self, tenant: TenantId, id: &str) -> StoreResult<()>;
    /// Uploads created before `created_before` that no READY or INPROGRESS
    /// task names as its `target.upload_id`, oldest first, at most `limit`.
    async fn expired_uploads(
        &self,
        created_before: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<Upload>>;

    // ----- data indexes -----
    async fn import_batch(&self, batch: ImportBatch) -> StoreResult<BatchOutcome>;
    /// Forgets the rejects of earlier runs (a fresh run starts clean).
    async fn clear_rejects(&self, task: TaskId, fence: i64) -> StoreResult<()>;
    async fn reject_summary(&self, task: TaskId) -> StoreResult<Vec<RejectGroup>>;
    /// Rejects in row order, `after_row` exclusive.
    async fn rejects(
        &self,
        task: TaskId,
        after_row: i64,
        limit: i64,
    ) -> StoreResult<Vec<RowReject>>;
    /// Rows of an index, or of a segment of it.
    async fn count_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: Option<&crate::segment::Filter>,
    ) -> StoreResult<i64>;
    /// Deletes the rows of an index that match `filter`; answers how many.
    async fn delete_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: &crate::segment::Filter,
    ) -> StoreResult<i64>;
    /// In the rows matching `filter`, sets `columns` to NULL and removes the
    /// keys `attributes` from the `attributes` object (profiles); answers
    /// how many rows matched.
    async fn clear_fields(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: &crate::segment::Filter,
        columns: &[&'static str],
        attributes: &[String],
    ) -> StoreResult<i64>;
    /// Profiles whose `column` (user_id, email or mobile_number) holds one
    /// of `values`: (value, user_id) pairs, in no particular order.
    async fn lookup_profiles(
        &self,
        tenant: TenantId,
        column: &'static str,
        values: Vec<String>,
    ) -> StoreResult<Vec<(String, String)>>;

    // ----- saved segments -----
    async fn create_segment(
        &self,
        tenant: TenantId,
        name: String,
        filter: Json,
        now: Timestamp,
    ) -> StoreResult<SavedSegment>;
    async fn get_segment(&self, tenant: TenantId, id: i64) -> StoreResult<Option<SavedSegment>>;
    /// Oldest first.
    async fn list_segments(&self, tenant: TenantId) -> StoreResult<Vec<SavedSegment>>;
    /// NotFound when it is not the tenant's.
    async fn update_segment(
        &self,
        tenant: TenantId,
        id: i64,
        name: String,
        filter: Json,
        now: Timestamp,
    ) -> StoreResult<SavedSegment>;
    async fn delete_segment(&self, tenant: TenantId, id: i64) -> StoreResult<()>;

    /// Rows of an index (or of a segment of it) in key order, in batches,
    /// values in column order.
    async fn export_rows(
        &self,
        tenant: TenantId,
        index: &'static IndexDef,
        filter: Option<&crate::segment::Filter>,
    ) -> StoreResult<RowStream>;
}
