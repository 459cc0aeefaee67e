//! The engine against real stores: retries to FATAL, cancellation of a
//! running handler, a lost lease, graceful release, per-tenant limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use datask_core::store::NewTenant;
use datask_core::task::NewTask;
use datask_core::{Store, TaskState, Trigger};
use datask_engine::{
    Engine, EngineConfig, FileStore, Handler, Invalid, Outcome, Registry, TaskContext, TaskError,
};
use jiff::Timestamp;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

enum Backend {
    Sqlite,
    Postgres,
}

fn pg_url() -> Option<String> {
    match std::env::var("DATASK_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert_ne!(
                std::env::var("DATASK_REQUIRE_PG").as_deref(),
                Ok("1"),
                "DATASK_TEST_PG_URL is required"
            );
            eprintln!("skipped: DATASK_TEST_PG_URL not set");
            None
        }
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(super::Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { if super::pg_url().is_some() { super::$name(super::Backend::Postgres).await } }
        }
    )*};
}

on_both_stores!(
    retries_then_fatal,
    cancel_reaches_a_running_handler,
    lost_lease_records_nothing,
    shutdown_releases_running_tasks,
    tenant_concurrency_is_a_ceiling,
    a_backlog_stays_within_the_slots_and_shutdown_strands_nothing,
    a_task_that_comes_in_while_every_slot_is_busy_starts_when_one_frees,
    expired_uploads_are_deleted
);

struct Harness {
    store: Arc<dyn Store>,
    files: FileStore,
    tenant: i64,
    _dir: tempfile::TempDir,
}

async fn harness(b: Backend, concurrency: i64) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = match b {
        Backend::Sqlite => {
            let s = datask_store_sqlite::SqliteStore::open(dir.path().join("t.db"))
                .await
                .unwrap();
            s.migrate().await.unwrap();
            Arc::new(s)
        }
        Backend::Postgres => {
            Arc::new(datask_store_postgres::testing::fresh_store(&pg_url().unwrap()).await)
        }
    };
    let files = FileStore::local(&dir.path().join("files")).unwrap();
    let tenant = store
        .create_tenant(NewTenant {
            name: "t".into(),
            timezone: "UTC".into(),
            concurrency,
        })
        .await
        .unwrap()
        .id;
    Harness {
        store,
        files,
        tenant,
        _dir: dir,
    }
}

impl Harness {
    async fn task(&self, identifier: &str, max_attempts: i64) -> i64 {
        let now = Timestamp::now();
        let new = NewTask {
            tenant_id: self.tenant,
            identifier: identifier.into(),
            desc: String::new(),
            trigger: Trigger::default(),
            target: Map::new(),
            max_attempts,
            priority: 10,
            run_at: now,
            idempotency_key: None,
        };
        self.store.insert_task(new, now).await.unwrap().task.id
    }

    fn start(
        &self,
        registry: Registry,
        slots: usize,
        lease: Duration,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        self.start_polling(registry, slots, lease, Duration::from_millis(100))
    }

    fn start_polling(
        &self,
        registry: Registry,
        slots: usize,
        lease: Duration,
        poll: Duration,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let config = EngineConfig {
            slots,
            lease,
            poll,
            grace: Duration::from_millis(300),
            backoff: Duration::from_millis(50),
            ..EngineConfig::default()
        };
        let engine = Engine::new(
            self.store.clone(),
            self.files.clone(),
            Arc::new(registry),
            config,
        );
        let stop = CancellationToken::new();
        (stop.clone(), tokio::spawn(engine.run(stop)))
    }

    async fn wait_state(&self, id: i64, states: &[TaskState], secs: u64) -> datask_core::Task {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.store.get_task(self.tenant, id).await.unwrap().unwrap();
            if states.contains(&t.state) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} is {:?}: {:?}",
                t.state,
                t.logs
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A handler whose behaviour the test picks.
struct Scripted {
    name: &'static str,
    runs: Arc<AtomicUsize>,
    behaviour: fn(usize) -> Behaviour,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Fail,
    Panic,
    RunUntilStopped,
    SleepIgnoringCancel(u64),
}

#[async_trait]
impl Handler for Scripted {
    fn identifier(&self) -> &'static str {
        self.name
    }
    fn validate(&self, _: &mut Map<String, Value>) -> Result<(), Invalid> {
        Ok(())
    }
    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        match (self.behaviour)(n) {
            Behaviour::Fail => Err(TaskError::Retryable(format!("boom {n}"))),
            Behaviour::Panic => panic!("handler bug"),
            Behaviour::RunUntilStopped => loop {
                ctx.checkpoint()?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            },
            Behaviour::SleepIgnoringCancel(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Outcome::default())
            }
        }
    }
}

fn registry(
    name: &'static str,
    runs: &Arc<AtomicUsize>,
    behaviour: fn(usize) -> Behaviour,
) -> Registry {
    let mut r = Registry::new();
    r.register(Scripted {
        name,
        runs: runs.clone(),
        behaviour,
    });
    r
}

async fn retries_then_fatal(b: Backend) {
    let h = harness(b, 4).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let id = h.task("flaky", 3).await;
    let panicky = h.task("panicky", 2).await;
    let mut reg = registry("flaky", &runs, |_| Behaviour::Fail);
    reg.register(Scripted {
        name: "panicky",
        runs: Arc::new(AtomicUsize::new(0)),
        behaviour: |_| Behaviour::Panic,
    });
    let (stop, engine) = h.start(reg, 2, Duration::from_secs(5));
    let t = h.wait_state(id, &[TaskState::Fatal], 20).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(t.attempts, 3);
    assert_eq!(t.errors["task"][0], "boom 2");
    let msgs: Vec<&str> = t.logs.iter().map(|l| l.msg.as_str()).collect();
    assert_eq!(
        msgs.iter().filter(|m| m.starts_with("attempt ")).count(),
        2,
        "{msgs:?}"
    );
    assert_eq!(msgs.last().copied(), Some("failed: boom 2"));
    let p = h.wait_state(panicky, &[TaskState::Fatal], 20).await;
    assert_eq!(p.attempts, 2);
    assert!(
        p.errors["task"][0]
            .as_str()
            .unwrap()
            .contains("handler bug"),
        "{:?}",
        p.errors
    );
    stop.cancel();
    engine.await.unwrap();
}

async fn cancel_reaches_a_running_handler(b: Backend) {
    let h = harness(b, 4).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let id = h.task("forever", 3).await;
    let (stop, engine) = h.start(
        registry("forever", &runs, |_| Behaviour::RunUntilStopped),
        2,
        Duration::from_secs(30),
    );
    h.wait_state(id, &[TaskState::InProgress], 10).await;
    let asked = std::time::Instant::now();
    h.store
        .request_cancel(h.tenant, id, Timestamp::now())
        .await
        .unwrap();
    let t = h.wait_state(id, &[TaskState::Cancelled], 5).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(t.logs.last().unwrap().msg, "cancelled");
    stop.cancel();
    engine.await.unwrap();
}

async fn lost_lease_records_nothing(b: Backend) {
    let h = harness(b, 4).await;
    // The first run sleeps through its lease without heartbeats reaching the
    // store in time… simulated by stealing the lease: reclaim it and claim it
    // as another worker while the first still runs.
    let runs = Arc::new(AtomicUsize::new(0));
    let id = h.task("slow", 3).await;
    let (stop, engine) = h.start(
        registry("slow", &runs, |_| Behaviour::SleepIgnoringCancel(1500)),
        1,
        Duration::from_secs(30),
    );
    h.wait_state(id, &[TaskState::InProgress], 10).await;
    // Expire the lease by reclaiming from the future, then claim as "thief".
    let future = Timestamp::now() + jiff::SignedDuration::from_mins(5);
    assert_eq!(h.store.reclaim_expired(future).await.unwrap(), vec![id]);
    let stolen = h
        .store
        .claim("thief", 10, Duration::from_secs(600), future)
        .await
        .unwrap();
    assert_eq!(stolen.len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = h.store.get_task(h.tenant, id).await.unwrap().unwrap();
    // The first worker's outcome was dropped: the thief still holds it.
    assert_eq!(t.state, TaskState::InProgress);
    assert!(
        !t.logs.iter().any(|l| l.msg == "INPROGRESS -> DONE"),
        "{:?}",
        t.logs
    );
    stop.cancel();
    engine.await.unwrap();
}

async fn shutdown_releases_running_tasks(b: Backend) {
    let h = harness(b, 4).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let id = h.task("forever", 3).await;
    let (stop, engine) = h.start(
        registry("forever", &runs, |_| Behaviour::RunUntilStopped),
        2,
        Duration::from_secs(30),
    );
    h.wait_state(id, &[TaskState::InProgress], 10).await;
    stop.cancel();
    engine.await.unwrap();
    let t = h.store.get_task(h.tenant, id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Ready);
    assert_eq!(t.attempts, 0, "a released attempt is given back");
    assert_eq!(t.logs.last().unwrap().msg, "released at shutdown");
}

/// A handler that sleeps and records how many of its runs overlapped: the
/// ceiling is about handlers running at once, and reading three task states
/// one query at a time could see one task finish and the next start between
/// two reads, counting both as running.
struct Overlapping {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    sleep_ms: u64,
    runs: Arc<AtomicUsize>,
}

impl Overlapping {
    fn new(sleep_ms: u64) -> Self {
        Overlapping {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
            sleep_ms,
            runs: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[async_trait]
impl Handler for Overlapping {
    fn identifier(&self) -> &'static str {
        "slowish"
    }
    fn validate(&self, _: &mut Map<String, Value>) -> Result<(), Invalid> {
        Ok(())
    }
    async fn run(&self, _: &TaskContext) -> Result<Outcome, TaskError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Outcome::default())
    }
}

async fn tenant_concurrency_is_a_ceiling(b: Backend) {
    let h = harness(b, 1).await;
    let ids = [
        h.task("slowish", 3).await,
        h.task("slowish", 3).await,
        h.task("slowish", 3).await,
    ];
    let handler = Overlapping::new(150);
    let max_in_flight = handler.max_in_flight.clone();
    let mut reg = Registry::new();
    reg.register(handler);
    let (stop, engine) = h.start(reg, 4, Duration::from_secs(30));
    for id in ids {
        h.wait_state(id, &[TaskState::Done], 20).await;
    }
    assert_eq!(
        max_in_flight.load(Ordering::SeqCst),
        1,
        "the tenant's limit of 1 was exceeded"
    );
    stop.cancel();
    engine.await.unwrap();
}

/// The leader deletes uploads past their time (file and row) unless a
/// waiting task names one; recent ones stay.
async fn expired_uploads_are_deleted(b: Backend) {
    use datask_core::store::Upload;
    use tokio::io::AsyncWriteExt;
    let h = harness(b, 4).await;
    let now = Timestamp::now();
    let old = now - jiff::SignedDuration::from_hours(8 * 24);
    for (id, created_at) in [("old", old), ("needed", old), ("recent", now)] {
        let key = FileStore::upload_key(h.tenant, id);
        let mut w = h.files.writer(&key);
        w.write_all(b"user_id\nu1\n").await.unwrap();
        w.shutdown().await.unwrap();
        h.store
            .insert_upload(Upload {
                id: id.into(),
                tenant_id: h.tenant,
                size: 11,
                sha256: "00".into(),
                object_key: key,
                filename: None,
                created_at,
            })
            .await
            .unwrap();
    }
    // A task waiting until tomorrow still needs its file.
    let tomorrow = now + jiff::SignedDuration::from_hours(24);
    let waiting = NewTask {
        tenant_id: h.tenant,
        identifier: "import".into(),
        desc: String::new(),
        trigger: Trigger::default(),
        target: serde_json::json!({ "upload_id": "needed" })
            .as_object()
            .cloned()
            .unwrap(),
        max_attempts: 1,
        priority: 10,
        run_at: tomorrow,
        idempotency_key: None,
    };
    h.store.insert_task(waiting, now).await.unwrap();
    let (stop, handle) = h.start(Registry::new(), 1, Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.store.get_upload(h.tenant, "old").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old upload is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    handle.await.unwrap();
    assert!(
        h.files
            .size(&FileStore::upload_key(h.tenant, "old"))
            .await
            .is_err()
    );
    for kept in ["needed", "recent"] {
        assert!(
            h.store.get_upload(h.tenant, kept).await.unwrap().is_some(),
            "{kept}"
        );
        assert!(
            h.files
                .size(&FileStore::upload_key(h.tenant, kept))
                .await
                .is_ok(),
            "{kept}"
        );
    }
}

/// A backlog is claimed mostly by the completion writer, on its trips: the
/// engine's slots stay a ceiling, and a shutdown in the middle leaves no
/// task INPROGRESS (tasks the writer claimed as claiming stopped are run or
/// released), and no task runs twice.
async fn a_backlog_stays_within_the_slots_and_shutdown_strands_nothing(b: Backend) {
    let h = harness(b, 1000).await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(h.task("slowish", 3).await);
    }
    let handler = Overlapping::new(10);
    let (max_in_flight, runs) = (handler.max_in_flight.clone(), handler.runs.clone());
    let mut reg = Registry::new();
    reg.register(handler);
    let (stop, engine) = h.start(reg, 8, Duration::from_secs(30));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while runs.load(Ordering::SeqCst) < 60 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog did not move"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    engine.await.unwrap();
    let mut done = 0;
    for &id in &ids {
        let t = h.store.get_task(h.tenant, id).await.unwrap().unwrap();
        assert!(
            matches!(t.state, TaskState::Done | TaskState::Ready),
            "task {id} is {:?} after shutdown: {:?}",
            t.state,
            t.logs
        );
        done += usize::from(t.state == TaskState::Done);
    }
    assert!(done >= 60 && done < ids.len(), "{done} done");
    assert_eq!(runs.load(Ordering::SeqCst), done, "every run ended DONE");

    // The rest, by a second engine, each once.
    let handler = Overlapping::new(1);
    let (max2, runs2) = (handler.max_in_flight.clone(), handler.runs.clone());
    let mut reg = Registry::new();
    reg.register(handler);
    let (stop, engine) = h.start(reg, 8, Duration::from_secs(30));
    for &id in &ids {
        h.wait_state(id, &[TaskState::Done], 20).await;
    }
    stop.cancel();
    engine.await.unwrap();
    assert_eq!(done + runs2.load(Ordering::SeqCst), ids.len());
    for m in [&max_in_flight, &max2] {
        assert!(m.load(Ordering::SeqCst) <= 8, "more than 8 at once: {m:?}");
    }
}

/// With every slot busy, a task that comes in starts when a slot frees, not
/// at the next poll (whichever of the worker loop and the completion
/// writer claims it).
async fn a_task_that_comes_in_while_every_slot_is_busy_starts_when_one_frees(b: Backend) {
    let h = harness(b, 10).await;
    let first = h.task("slowish", 3).await;
    let handler = Overlapping::new(300);
    let mut reg = Registry::new();
    reg.register(handler);
    // A poll far longer than the test allows: only wake-ups can start the
    // second task in time.
    let (stop, engine) = h.start_polling(reg, 1, Duration::from_secs(30), Duration::from_secs(30));
    h.wait_state(first, &[TaskState::InProgress], 10).await;
    let second = h.task("slowish", 3).await;
    let t = h.wait_state(first, &[TaskState::Done], 10).await;
    let t2 = h.wait_state(second, &[TaskState::Done], 5).await;
    let gap = t2
        .started_at
        .unwrap()
        .duration_since(t.finished_at.unwrap());
    assert!(
        gap < jiff::SignedDuration::from_secs(2),
        "the second task started {gap:?} after the first ended"
    );
    stop.cancel();
    engine.await.unwrap();
}
