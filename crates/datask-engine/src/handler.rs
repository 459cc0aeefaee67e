//! What a task type brings to the engine, and what the engine lends it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use async_trait::async_trait;
use datask_core::store::StoreError;
use datask_core::task::{Counts, Task};
use datask_core::{LogEntry, Store, TaskState};
use jiff::Timestamp;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::FileStore;

/// A target that does not fit its identifier: names the field and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// How a handler's run ended when it did not produce an outcome; each variant
/// says what the engine does next.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt after a backoff (until attempts are spent).
    #[error("{0}")]
    Retryable(String),
    /// No point retrying: FATAL now.
    #[error("{0}")]
    Fatal(String),
    /// Cancellation was requested; stop and record CANCELLED.
    #[error("cancelled")]
    Cancelled,
    /// Another worker owns the task now: write nothing more.
    #[error("lease lost")]
    LeaseLost,
}

impl From<StoreError> for TaskError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost(_) => TaskError::LeaseLost,
            e => TaskError::Retryable(e.to_string()),
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `Error` when the input had problems (listed in `errors`), else `Done`.
    pub had_errors: bool,
    pub errors: Map<String, Value>,
    pub output: Option<Value>,
    pub result: Option<String>,
    pub counts: Option<Counts>,
}

impl Outcome {
    pub fn state(&self) -> TaskState {
        if self.had_errors {
            TaskState::Error
        } else {
            TaskState::Done
        }
    }
}

/// Everything a running handler may use. Writes are fenced: once the lease
/// is lost they fail with `TaskError::LeaseLost`.
pub struct TaskContext {
    pub task: Task,
    pub fence: i64,
    pub store: Arc<dyn Store>,
    pub files: FileStore,
    pub(crate) stop: CancellationToken,
    pub(crate) lease_lost: Arc<AtomicBool>,
    pub(crate) last_progress_ms: AtomicI64,
}

impl TaskContext {
    /// Err when the handler should stop now: cancelled, or the lease is gone.
    pub fn checkpoint(&self) -> Result<(), TaskError> {
        if self.lease_lost.load(Ordering::Relaxed) {
            Err(TaskError::LeaseLost)
        } else if self.stop.is_cancelled() {
            Err(TaskError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A token that fires on cancellation or lease loss (for `select!`).
    pub fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Records progress, at most a few times a second.
    pub async fn progress(&self, done: i64, total: Option<i64>) -> Result<(), TaskError> {
        self.checkpoint()?;
        let now = Timestamp::now().as_millisecond();
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        if now - last >= 250 || total.is_some_and(|t| t == done) {
            self.last_progress_ms.store(now, Ordering::Relaxed);
            self.store
                .set_progress(self.task.id, self.fence, done, total)
                .await?;
        }
        Ok(())
    }

    pub async fn log(&self, msg: impl Into<String>) -> Result<(), TaskError> {
        self.store
            .append_logs(
                self.task.id,
                self.fence,
                vec![LogEntry::new(msg, Timestamp::now())],
            )
            .await?;
        Ok(())
    }
}

/// One task type.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    fn identifier(&self) -> &'static str;

    /// Interactive tasks (counts, previews) are claimed before bulk ones.
    fn interactive(&self) -> bool {
        false
    }

    /// The index `trigger.segment` filters for this target, when the task
    /// takes a segment (a saved `trigger.segment_id` then selects profiles,
    /// followed through `user_id` on other indexes).
    fn segment_index(
        &self,
        _target: &Map<String, Value>,
    ) -> Option<&'static datask_core::index::IndexDef> {
        None
    }

    /// Checks a target before the task is accepted; may fill defaults.
    fn validate(&self, target: &mut Map<String, Value>) -> Result<(), Invalid>;

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError>;
}

/// Handlers by identifier, registered in one place by the application.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: BTreeMap<&'static str, Arc<dyn Handler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, handler: impl Handler) -> &mut Self {
        self.handlers
            .insert(handler.identifier(), Arc::new(handler));
        self
    }

    pub fn get(&self, identifier: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(identifier)
    }

    pub fn identifiers(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }
}
