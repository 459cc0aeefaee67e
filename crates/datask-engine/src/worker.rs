//! The worker loop and the rescuer.
//!
//! `tick()` claims what fits in the free slots and starts it; the loop around
//! it only waits (for a wake-up, a finished task, the next due time, or the
//! poll interval). Each running task has a heartbeat beside it that renews
//! the lease and carries cancellation requests in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use datask_core::schedule::{next_after, time_zone};
use datask_core::store::{ClaimedTask, Completion, Finished};
use datask_core::task::Task;
use datask_core::{LogEntry, Store, TaskState};
use futures::FutureExt;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::completer::{Claiming, Completer, Started};
use crate::handler::{Outcome, Registry, TaskContext, TaskError};
use crate::{EngineMetrics, FileStore};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this node in leases and leadership.
    pub node: String,
    /// Tasks this process runs at once.
    pub slots: usize,
    pub lease: Duration,
    /// Longest sleep when nothing wakes the loop.
    pub poll: Duration,
    /// How long running tasks may take to finish on shutdown.
    pub grace: Duration,
    /// A run taking longer is stopped and FATAL.
    pub task_timeout: Duration,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// Uploads older than this that no waiting or running task names are
    /// deleted (by the leader); None keeps them.
    pub upload_ttl: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node: format!("node-{}", uuid::Uuid::new_v4().simple()),
            slots: 4,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            grace: Duration::from_secs(10),
            task_timeout: Duration::from_secs(6 * 3600),
            backoff: Duration::from_secs(2),
            upload_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// How often the leader looks for expired uploads (and abandoned staging
/// files).
const UPLOAD_SWEEP_EVERY: Duration = Duration::from_secs(600);

/// A local staging file untouched this long belongs to a writer that is
/// gone (killed mid-write): a live one writes a part at least every few
/// seconds, and a request body that stalls is cut after a minute.
const STAGING_IDLE: Duration = Duration::from_secs(6 * 3600);

/// What one `tick` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Started(usize),
    NoFreeSlot,
    NothingDue,
}

#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    files: FileStore,
    registry: Arc<Registry>,
    config: EngineConfig,
    metrics: Arc<EngineMetrics>,
}

struct Running {
    set: JoinSet<i64>,
    /// Per running task: its stop token and whether it was asked to release.
    stops: Vec<(i64, CancellationToken, Arc<AtomicBool>)>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        files: FileStore,
        registry: Arc<Registry>,
        config: EngineConfig,
    ) -> Self {
        Engine {
            store,
            files,
            registry,
            config,
            metrics: Arc::new(EngineMetrics::default()),
        }
    }

    /// This engine's counters (shared with `/metrics`).
    pub fn metrics(&self) -> Arc<EngineMetrics> {
        self.metrics.clone()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Runs workers and the rescuer until `shutdown` fires, then stops
    /// claiming, lets running tasks finish within the grace period, and
    /// releases the rest back to READY.
    ///
    /// Two places claim: this loop, when slots are free and work may be due
    /// (a wake-up, a due time, the poll, a run that ended without the
    /// completion writer), and the completion writer, which claims for the
    /// slots its batch frees on the same trip (completer.rs).
    pub async fn run(self, shutdown: CancellationToken) {
        let rescuer = tokio::spawn(self.clone().rescue_loop(shutdown.clone()));
        let slots = Arc::new(Semaphore::new(self.config.slots));
        let claiming = Arc::new(AtomicBool::new(true));
        let backlog = Arc::new(AtomicBool::new(false));
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let finished = Arc::new(Notify::new());
        let returned = Arc::new(Notify::new());
        let (completer, writer) = Completer::start(
            self.store.clone(),
            Claiming {
                worker: self.config.node.clone(),
                lease: self.config.lease,
                slots: slots.clone(),
                on: claiming.clone(),
                backlog: backlog.clone(),
                started: started_tx,
                returned: returned.clone(),
                freed: finished.clone(),
            },
        );
        let mut running = Running {
            set: JoinSet::new(),
            stops: Vec::new(),
        };
        // Whether the next turn claims before it waits: not when its free
        // slots came back from the completion writer unclaimed (its claim
        // found nothing more, or there was no backlog to claim for): work
        // that comes in wakes this loop through the store.
        let mut claim_first = true;
        loop {
            while let Ok((c, slot)) = started.try_recv() {
                self.start(&mut running, c, slot, &finished, &completer);
            }
            while let Some(done) = running.set.try_join_next() {
                if let Ok(id) = done {
                    running.stops.retain(|(t, _, _)| *t != id);
                }
            }
            let tick = if claim_first {
                match self
                    .tick(&mut running, &slots, &backlog, &finished, &completer)
                    .await
                {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed");
                        Tick::NothingDue
                    }
                }
            } else if slots.available_permits() == 0 {
                Tick::NoFreeSlot
            } else {
                Tick::NothingDue
            };
            claim_first = true;
            if let Tick::Started(_) = tick {
                continue;
            }
            // With every slot busy only a freed slot (or the poll) matters.
            let wait = match tick {
                Tick::NoFreeSlot => self.config.poll,
                _ => match self.store.next_due().await {
                    Ok(Some(due)) => {
                        let ms = (due.as_millisecond() - Timestamp::now().as_millisecond()).max(0)
                            as u64;
                        Duration::from_millis(ms).min(self.config.poll)
                    }
                    _ => self.config.poll,
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.store.wait_for_work(wait), if tick != Tick::NoFreeSlot => {}
                _ = tokio::time::sleep(self.config.poll), if tick == Tick::NoFreeSlot => {}
                _ = finished.notified() => {}
                _ = returned.notified() => claim_first = false,
                Some((c, slot)) = started.recv() => {
                    self.start(&mut running, c, slot, &finished, &completer);
                    claim_first = false;
                }
            }
        }
        claiming.store(false, Ordering::SeqCst);
        rescuer.abort();
        self.drain(running, &mut started, &finished, &completer)
            .await;
        drop(completer);
        let _ = writer.await;
    }

    /// Claims and starts as many due tasks as there are free slots.
    async fn tick(
        &self,
        running: &mut Running,
        slots: &Arc<Semaphore>,
        backlog: &AtomicBool,
        finished: &Arc<Notify>,
        completer: &Completer,
    ) -> Result<Tick, datask_core::StoreError> {
        let free = slots.available_permits();
        if free == 0 {
            return Ok(Tick::NoFreeSlot);
        }
        let Ok(mut free_slots) = slots.clone().try_acquire_many_owned(free as u32) else {
            return Ok(Tick::NoFreeSlot);
        };
        let claimed = self
            .store
            .claim(&self.config.node, free, self.config.lease, Timestamp::now())
            .await?;
        backlog.store(claimed.len() == free, Ordering::SeqCst);
        if claimed.is_empty() {
            return Ok(Tick::NothingDue);
        }
        let n = claimed.len();
        for c in claimed {
            let slot = free_slots.split(1).expect("one slot per claimed task");
            self.start(running, c, slot, finished, completer);
        }
        Ok(Tick::Started(n))
    }

    /// Starts one claimed task in its slot.
    fn start(
        &self,
        running: &mut Running,
        c: ClaimedTask,
        slot: OwnedSemaphorePermit,
        finished: &Arc<Notify>,
        completer: &Completer,
    ) {
        self.metrics.claimed.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let release = Arc::new(AtomicBool::new(false));
        running
            .stops
            .push((c.task.id, stop.clone(), release.clone()));
        let engine = self.clone();
        let finished = finished.clone();
        let completer = completer.clone();
        running.set.spawn(async move {
            let id = c.task.id;
            engine.metrics.running.fetch_add(1, Ordering::Relaxed);
            let handed = engine.run_one(c, slot, stop, release, &completer).await;
            engine.metrics.running.fetch_sub(1, Ordering::Relaxed);
            // A slot handed to the completion writer is its to refill.
            if !handed {
                finished.notify_one();
            }
            id
        });
    }

    /// Waits for the running tasks (and those the completion writer claimed
    /// before claiming stopped) within the grace period, then asks the rest
    /// to stop and hand their tasks back.
    async fn drain(
        &self,
        mut running: Running,
        started: &mut mpsc::UnboundedReceiver<Started>,
        finished: &Arc<Notify>,
        completer: &Completer,
    ) {
        let grace = tokio::time::sleep(self.config.grace);
        tokio::pin!(grace);
        let mut out_of_time = false;
        loop {
            tokio::select! {
                next = running.set.join_next() => if next.is_none() {
                    // Every run has its answer, so every task claimed for
                    // this engine is in the channel by now.
                    match started.try_recv() {
                        Ok((c, slot)) => self.start(&mut running, c, slot, finished, completer),
                        Err(_) => return,
                    }
                },
                Some((c, slot)) = started.recv() => self.start(&mut running, c, slot, finished, completer),
                _ = &mut grace, if !out_of_time => out_of_time = true,
            }
            if out_of_time {
                for (_, stop, release) in &running.stops {
                    release.store(true, Ordering::SeqCst);
                    stop.cancel();
                }
            }
        }
    }

    async fn rescue_loop(self, shutdown: CancellationToken) {
        let every = (self.config.lease / 3).max(Duration::from_millis(200));
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            let now = Timestamp::now();
            match self
                .store
                .try_lead(&self.config.node, self.config.lease, now)
                .await
            {
                Ok(true) => {
                    match self.store.reclaim_expired(now).await {
                        Ok(ids) if !ids.is_empty() => {
                            tracing::info!(?ids, "reclaimed expired leases")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "reclaim failed"),
                    }
                    if last_sweep.is_none_or(|t| t.elapsed() >= UPLOAD_SWEEP_EVERY) {
                        last_sweep = Some(tokio::time::Instant::now());
                        self.sweep_uploads(now).await;
                        match self.files.sweep_staging(STAGING_IDLE).await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(deleted = n, "deleted abandoned staging files"),
                            Err(e) => tracing::warn!(error = %e, "could not sweep staging files"),
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Deletes expired uploads, file first: a row without its file would
    /// name bytes that are gone, a file without its row is swept next time.
    async fn sweep_uploads(&self, now: Timestamp) {
        let Some(ttl) = self.config.upload_ttl else {
            return;
        };
        let Ok(ttl) = jiff::SignedDuration::try_from(ttl) else {
            return;
        };
        let Ok(before) = now.checked_sub(ttl) else {
            return;
        };
        let expired = match self.store.expired_uploads(before, 1000).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "could not list expired uploads");
                return;
            }
        };
        let mut deleted = 0;
        for u in expired {
            match self.files.delete(&u.object_key).await {
                Ok(()) | Err(crate::files::FileError::NotFound) => {}
                Err(e) => {
                    tracing::warn!(upload = %u.id, error = %e, "could not delete an expired upload");
                    continue;
                }
            }
            if let Err(e) = self.store.delete_upload(u.tenant_id, &u.id).await {
                tracing::warn!(upload = %u.id, error = %e, "could not forget an expired upload");
                continue;
            }
            deleted += 1;
        }
        if deleted > 0 {
            tracing::info!(deleted, "deleted expired uploads");
        }
    }

    /// Runs one claimed task to its recorded end; answers whether its slot
    /// went to the completion writer (else it is freed on return).
    async fn run_one(
        &self,
        claimed: ClaimedTask,
        slot: OwnedSemaphorePermit,
        stop: CancellationToken,
        release: Arc<AtomicBool>,
        completer: &Completer,
    ) -> bool {
        let mut slot = Some(slot);
        let ClaimedTask { task, fence } = claimed;
        let id = task.id;
        let lease_lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            self.store.clone(),
            id,
            fence,
            self.config.lease,
            stop.clone(),
            lease_lost.clone(),
        ));
        let result = match self.registry.get(&task.identifier) {
            None => Err(TaskError::Fatal(format!(
                "no handler for identifier '{}'",
                task.identifier
            ))),
            Some(handler) => {
                let ctx = TaskContext {
                    task: task.clone(),
                    fence,
                    store: self.store.clone(),
                    files: self.files.clone(),
                    stop: stop.clone(),
                    lease_lost: lease_lost.clone(),
                    last_progress_ms: AtomicI64::new(0),
                };
                let run = std::panic::AssertUnwindSafe(handler.run(&ctx)).catch_unwind();
                match tokio::time::timeout(self.config.task_timeout, run).await {
                    Err(_) => Err(TaskError::Fatal(format!(
                        "timed out after {} s",
                        self.config.task_timeout.as_secs()
                    ))),
                    Ok(Err(panic)) => Err(TaskError::Retryable(format!(
                        "handler panicked: {}",
                        panic_message(&panic)
                    ))),
                    Ok(Ok(r)) => r,
                }
            }
        };
        heartbeat.abort();
        if lease_lost.load(Ordering::SeqCst) {
            tracing::warn!(task = id, "lease lost; the run's outcome is dropped");
            self.metrics.lease_lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let now = Timestamp::now();
        // A run that ends (not a retry or release) leaves earlier runs' files
        // unreachable; only worth a listing when some run wrote one.
        let ends = match &result {
            Ok(o) => Some(o.result.is_some()),
            Err(TaskError::Cancelled) => (!release.load(Ordering::SeqCst)).then_some(false),
            Err(TaskError::LeaseLost) => None,
            Err(TaskError::Retryable(_)) if task.attempts < task.max_attempts => None,
            Err(TaskError::Retryable(_) | TaskError::Fatal(_)) => Some(false),
        };
        let sweep = ends.is_some_and(|wrote| wrote || task.result.is_some());
        let recorded = match result {
            Err(TaskError::Cancelled) if release.load(Ordering::SeqCst) => {
                self.metrics.released.fetch_add(1, Ordering::Relaxed);
                self.store
                    .release(id, fence, vec![LogEntry::new("released at shutdown", now)])
                    .await
            }
            Err(TaskError::LeaseLost) => {
                self.metrics.lease_lost.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(outcome) => {
                self.metrics.finished(outcome.state());
                self.finish(&task, fence, outcome, now, completer, &mut slot)
                    .await
            }
            Err(TaskError::Cancelled) => {
                self.metrics.finished(TaskState::Cancelled);
                let c = completion(
                    TaskState::Cancelled,
                    Map::new(),
                    vec![LogEntry::new("cancelled", now)],
                    None,
                    now,
                );
                completer
                    .complete(
                        finished(id, fence, c),
                        slot.take().expect("one end per run"),
                    )
                    .await
            }
            Err(TaskError::Retryable(msg)) if task.attempts < task.max_attempts => {
                let delay = self.config.backoff
                    * 2u32.saturating_pow((task.attempts - 1).clamp(0, 16) as u32);
                let at = now + jiff::SignedDuration::try_from(delay).unwrap_or_default();
                let log = LogEntry::new(
                    format!(
                        "attempt {} of {} failed: {msg}; retrying at {at}",
                        task.attempts, task.max_attempts
                    ),
                    now,
                );
                self.metrics.retried.fetch_add(1, Ordering::Relaxed);
                self.store.retry_later(id, fence, at, vec![log]).await
            }
            Err(TaskError::Retryable(msg) | TaskError::Fatal(msg)) => {
                self.metrics.finished(TaskState::Fatal);
                let mut errors = Map::new();
                errors.insert("task".into(), json!([msg.clone()]));
                let reschedule = self.reschedule(&task, now).await;
                let c = completion(
                    TaskState::Fatal,
                    errors,
                    vec![LogEntry::new(format!("failed: {msg}"), now)],
                    reschedule,
                    now,
                );
                completer
                    .complete(
                        finished(id, fence, c),
                        slot.take().expect("one end per run"),
                    )
                    .await
            }
        };
        match recorded {
            Err(e) => tracing::warn!(task = id, error = %e, "could not record the outcome"),
            Ok(()) if sweep => {
                if let Err(e) = self
                    .files
                    .delete_earlier_runs(task.tenant_id, id, fence)
                    .await
                {
                    tracing::warn!(task = id, error = %e, "could not delete earlier runs' files");
                }
            }
            Ok(()) => {}
        }
        slot.is_none()
    }

    async fn finish(
        &self,
        task: &Task,
        fence: i64,
        outcome: Outcome,
        now: Timestamp,
        completer: &Completer,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), datask_core::StoreError> {
        let state = outcome.state();
        let mut log = LogEntry::new(
            if state == TaskState::Done {
                "success"
            } else {
                "completed with errors"
            },
            now,
        );
        if let Some(c) = outcome.counts {
            log.total = Some(c.total);
            log.errors = Some(c.errors);
            log.skips = Some(c.skips);
            log.success = Some(c.success);
        }
        let reschedule = self.reschedule(task, now).await;
        let mut c = completion(state, outcome.errors, vec![log], reschedule, now);
        c.output = outcome.output;
        c.result = outcome.result;
        let slot = slot.take().expect("one end per run");
        completer.complete(finished(task.id, fence, c), slot).await
    }

    /// The next run of a repeating task, in its time zone (the trigger's,
    /// else the tenant's, else UTC).
    async fn reschedule(&self, task: &Task, now: Timestamp) -> Option<Timestamp> {
        let repeat = task.trigger.repeat?;
        let zone_name = match &task.trigger.timezone {
            Some(z) => z.clone(),
            None => self
                .store
                .tenant(task.tenant_id)
                .await
                .ok()
                .flatten()
                .map(|t| t.timezone)
                .unwrap_or_else(|| "UTC".into()),
        };
        let zone = time_zone(&zone_name).unwrap_or(jiff::tz::TimeZone::UTC);
        let anchor = task
            .schedule_anchor
            .or(task.trigger.once)
            .or(task.started_at)
            .unwrap_or(now);
        Some(next_after(anchor, repeat, &zone, now))
    }
}

fn finished(id: i64, fence: i64, completion: Completion) -> Finished {
    Finished {
        id,
        fence,
        completion,
    }
}

fn completion(
    state: TaskState,
    errors: Map<String, Value>,
    logs: Vec<LogEntry>,
    reschedule: Option<Timestamp>,
    now: Timestamp,
) -> Completion {
    Completion {
        state,
        errors,
        output: None,
        result: None,
        logs,
        reschedule,
        now,
    }
}

/// Renews the lease every third of its length; fires `stop` on a cancel
/// request or when the lease turns out lost.
async fn heartbeat(
    store: Arc<dyn Store>,
    id: i64,
    fence: i64,
    lease: Duration,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    // Cancellation should be seen within a second even with a long lease.
    let every = (lease / 3).min(Duration::from_millis(500));
    let mut last_renew = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let until = Timestamp::now() + jiff::SignedDuration::try_from(lease).unwrap_or_default();
        match store.heartbeat(id, fence, until).await {
            Ok(cancel) => {
                last_renew = tokio::time::Instant::now();
                if cancel {
                    stop.cancel();
                }
            }
            Err(datask_core::StoreError::LeaseLost(_)) => {
                lost.store(true, Ordering::SeqCst);
                stop.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(task = id, error = %e, "heartbeat failed");
                // Without a renewal for a whole lease, assume another worker took it.
                if last_renew.elapsed() >= lease {
                    lost.store(true, Ordering::SeqCst);
                    stop.cancel();
                    return;
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
