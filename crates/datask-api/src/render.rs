//! The task as the REST dialect shows it (SPEC §3). These types are what
//! the routes serialize, and the OpenAPI document is derived from them, so
//! the two cannot drift apart.

use datask_core::{Task, TaskState};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// State and times of a task.
#[derive(Serialize, ToSchema)]
pub struct StateView {
    /// READY, INPROGRESS, DONE, ERROR, FATAL or CANCELLED.
    #[schema(example = "DONE")]
    pub code: &'static str,
    /// ISO 8601; when the last run started.
    #[schema(value_type = Option<String>)]
    pub last_run_date: Option<Timestamp>,
    #[schema(value_type = String)]
    pub last_modified: Timestamp,
    #[schema(value_type = String)]
    pub created_date: Timestamp,
}

/// When the task runs and over which data.
#[derive(Serialize, ToSchema)]
pub struct TriggerView {
    #[schema(value_type = Option<String>)]
    pub once: Option<Timestamp>,
    /// daily, weekly or monthly.
    #[schema(value_type = Option<String>)]
    pub repeat: Option<datask_core::task::Repeat>,
    pub timezone: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub segment: Option<Value>,
    pub segment_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LogView {
    /// e.g. "READY -> INPROGRESS" or "success".
    pub msg: String,
    #[schema(value_type = String)]
    pub time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skips: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<i64>,
}

/// Present while the task runs.
#[derive(Serialize, ToSchema)]
pub struct ProgressView {
    pub done: i64,
    pub total: Option<i64>,
    pub percent: Option<f64>,
    pub eta_seconds: Option<i64>,
}

/// A task (SPEC §3).
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    /// The tenant.
    pub chain: i64,
    #[schema(example = "export")]
    pub identifier: String,
    pub desc: String,
    pub state: StateView,
    pub trigger: TriggerView,
    #[schema(value_type = Object)]
    pub target: Map<String, Value>,
    pub logs: Vec<LogView>,
    /// `{"file[columns]": [...], "file[rows]": [...]}` as in the first seed.
    #[schema(value_type = Object)]
    pub errors: Map<String, Value>,
    pub progress: Option<ProgressView>,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// The result file's name once there is one.
    pub result: Option<String>,
    pub version: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub debug: String,
}

pub fn task_view(task: &Task, now: Timestamp) -> TaskView {
    TaskView {
        id: task.id,
        chain: task.tenant_id,
        identifier: task.identifier.clone(),
        desc: task.desc.clone(),
        state: StateView {
            code: task.state.as_str(),
            last_run_date: task.started_at,
            last_modified: task.modified_at,
            created_date: task.created_at,
        },
        trigger: TriggerView {
            once: task.trigger.once,
            repeat: task.trigger.repeat,
            timezone: task.trigger.timezone.clone(),
            segment: task.trigger.segment.clone(),
            segment_id: task.trigger.segment_id.clone(),
        },
        target: task.target.clone(),
        logs: task
            .logs
            .iter()
            .map(|l| LogView {
                msg: l.msg.clone(),
                time: l.time,
                total: l.total,
                errors: l.errors,
                skips: l.skips,
                success: l.success,
            })
            .collect(),
        errors: task.errors.clone(),
        progress: (task.state == TaskState::InProgress).then(|| ProgressView {
            done: task.progress_done,
            total: task.progress_total,
            percent: task.percent(),
            eta_seconds: task.eta_seconds(now),
        }),
        output: task.output.clone(),
        result: task.result.as_deref().map(|r| result_name(r).to_string()),
        version: task.version,
        attempts: task.attempts,
        max_attempts: task.max_attempts,
        debug: task.debug.clone(),
    }
}

/// The task as JSON (for places that embed it, e.g. server-sent events).
pub fn task_json(task: &Task, now: Timestamp) -> Value {
    serde_json::to_value(task_view(task, now)).unwrap_or(Value::Null)
}

/// The file name of a result key (`results/<tenant>/<task>/<fence>/<name>`).
pub fn result_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
