use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{TaskId, TaskState, TenantId};

/// How often a task comes back after it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Repeat {
    Daily,
    Weekly,
    Monthly,
}

impl Repeat {
    pub fn as_str(self) -> &'static str {
        match self {
            Repeat::Daily => "daily",
            Repeat::Weekly => "weekly",
            Repeat::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Repeat::Daily),
            "weekly" => Some(Repeat::Weekly),
            "monthly" => Some(Repeat::Monthly),
            _ => None,
        }
    }
}

/// When a task runs and what data it reads (second seed's `trigger`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// When the task may start; `None` means as soon as possible.
    pub once: Option<Timestamp>,
    pub repeat: Option<Repeat>,
    /// IANA time zone the repeat is computed in.
    pub timezone: Option<String>,
    pub segment: Option<Value>,
    pub segment_id: Option<String>,
}

/// One entry of a task's `logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub msg: String,
    pub time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub errors: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skips: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub success: Option<i64>,
}

impl LogEntry {
    pub fn new(msg: impl Into<String>, time: Timestamp) -> Self {
        LogEntry {
            msg: msg.into(),
            time,
            total: None,
            errors: None,
            skips: None,
            success: None,
        }
    }

    pub fn transition(from: TaskState, to: TaskState, time: Timestamp) -> Self {
        LogEntry::new(format!("{from} -> {to}"), time)
    }
}

/// Counts a handler reports when it finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: i64,
    pub errors: i64,
    pub skips: i64,
    pub success: i64,
}

/// A task as the store holds it. The API renders it in each dialect.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub tenant_id: TenantId,
    pub identifier: String,
    pub desc: String,
    pub state: TaskState,
    pub trigger: Trigger,
    pub target: Map<String, Value>,
    pub logs: Vec<LogEntry>,
    /// `{"file[columns]": [...], "file[rows]": [...]}` as in the first seed.
    pub errors: Map<String, Value>,
    pub progress_done: i64,
    pub progress_total: Option<i64>,
    pub output: Option<Value>,
    pub result: Option<String>,
    pub version: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub debug: String,
    pub priority: i64,
    pub cancel_requested: bool,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Earliest time a worker may claim it (the effective `trigger.once`).
    pub run_at: Timestamp,
    /// The first `once` of a repeating task; later runs are computed from it.
    pub schedule_anchor: Option<Timestamp>,
    /// Where a reclaimed run resumes (handler-defined, e.g. rows committed).
    pub checkpoint: Option<Value>,
}

impl Task {
    /// Seconds left, estimated from the rate so far; `None` until it is measurable.
    pub fn eta_seconds(&self, now: Timestamp) -> Option<i64> {
        let total = self.progress_total?;
        let started = self.started_at?;
        if self.state != TaskState::InProgress || self.progress_done <= 0 {
            return None;
        }
        let elapsed = (now.as_millisecond() - started.as_millisecond()).max(1) as f64 / 1000.0;
        let rate = self.progress_done as f64 / elapsed;
        let left = (total - self.progress_done).max(0) as f64;
        Some((left / rate).ceil() as i64)
    }

    pub fn percent(&self) -> Option<f64> {
        let total = self.progress_total?;
        if total <= 0 {
            return Some(if self.state.is_terminal() { 100.0 } else { 0.0 });
        }
        Some(((self.progress_done as f64 / total as f64) * 1000.0).round() / 10.0)
    }
}

/// A task to insert.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub tenant_id: TenantId,
    pub identifier: String,
    pub desc: String,
    pub trigger: Trigger,
    pub target: Map<String, Value>,
    pub max_attempts: i64,
    pub priority: i64,
    pub run_at: Timestamp,
    pub idempotency_key: Option<String>,
}

/// The fields a `PUT /tasks/{id}` may change.
#[derive(Debug, Clone)]
pub struct TaskUpdate {
    pub desc: String,
    pub trigger: Trigger,
    pub target: Map<String, Value>,
    pub run_at: Timestamp,
    /// Optimistic concurrency: the version the client read.
    pub expected_version: Option<i64>,
}
