//! `burndown`: no-op tasks enqueued in bulk through the store, then drained by the
//! engine (claim, run, complete, full history kept), per backend; on
//! PostgreSQL, graphile-worker draining as many no-op jobs on the same
//! server in the same run (when `--graphile` names its installed harness);
//! and the latency from enqueue to the handler's start, one task at a time
//! and at a steady offered rate.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datask::app;
use datask_core::store::NewTenant;
use datask_core::task::NewTask;
use datask_engine::{Engine, Handler, Invalid, Outcome, Registry, TaskContext, TaskError};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::{Opts, machine, median};

/// Does nothing; with a sender, reports how long after `target.sent_us`
/// (the enqueue instant) it started.
struct NoOp(Option<tokio::sync::mpsc::UnboundedSender<Duration>>);

#[async_trait]
impl Handler for NoOp {
    fn identifier(&self) -> &'static str {
        "noop"
    }
    fn validate(&self, _: &mut Map<String, Value>) -> Result<(), Invalid> {
        Ok(())
    }
    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        if let (Some(tx), Some(sent)) = (
            &self.0,
            ctx.task.target.get("sent_us").and_then(Value::as_i64),
        ) {
            let now = jiff::Timestamp::now().as_microsecond();
            let _ = tx.send(Duration::from_micros((now - sent).max(0) as u64));
        }
        Ok(Outcome::default())
    }
}

/// A fresh store with one tenant whose limit is the engine's slots.
async fn fresh(
    database_url: Option<String>,
    slots: usize,
) -> anyhow::Result<(
    tempfile::TempDir,
    Arc<dyn datask_core::Store>,
    datask_engine::FileStore,
    i64,
)> {
    let (dir, store, files) = crate::server::open_fresh(database_url).await?;
    let tenant = store
        .create_tenant(NewTenant {
            name: "bench".into(),
            timezone: "UTC".into(),
            concurrency: slots as i64,
        })
        .await?;
    Ok((dir, store, files, tenant.id))
}

/// A no-op task due at `now`.
fn noop(tenant_id: i64, target: Map<String, Value>, now: jiff::Timestamp) -> NewTask {
    NewTask {
        tenant_id,
        identifier: "noop".into(),
        desc: String::new(),
        trigger: Default::default(),
        target,
        max_attempts: 3,
        priority: 10,
        run_at: now,
        idempotency_key: None,
    }
}

/// Enqueue → start latencies of `n` tasks: one at a time (`rate` None,
/// each enqueued when the previous started) or offered at `rate` per second.
async fn latency(
    database_url: Option<String>,
    slots: usize,
    n: usize,
    rate: Option<u64>,
) -> anyhow::Result<Vec<Duration>> {
    let (_dir, store, files, tenant) = fresh(database_url, slots).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut registry = Registry::new();
    registry.register(NoOp(Some(tx)));
    // The engine's default poll: a wake-up must come from the store's signal.
    let config = app::engine_config(slots, 30, 5);
    let engine = Engine::new(store.clone(), files, Arc::new(registry), config);
    let stop = CancellationToken::new();
    let running = tokio::spawn(engine.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tenant_id = tenant;
    let enqueue = move |store: Arc<dyn datask_core::Store>| async move {
        let now = jiff::Timestamp::now();
        let mut target = Map::new();
        target.insert("sent_us".into(), Value::from(now.as_microsecond()));
        store
            .insert_task(noop(tenant_id, target, now), now)
            .await
            .map(drop)
    };
    let mut out = Vec::with_capacity(n);
    match rate {
        None => {
            for _ in 0..n {
                enqueue(store.clone()).await?;
                out.push(
                    rx.recv()
                        .await
                        .ok_or_else(|| anyhow::anyhow!("the engine stopped"))?,
                );
            }
        }
        Some(r) => {
            let producer = {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / r));
                    for _ in 0..n {
                        tick.tick().await;
                        enqueue(store.clone()).await?;
                    }
                    anyhow::Ok(())
                })
            };
            for _ in 0..n {
                out.push(
                    rx.recv()
                        .await
                        .ok_or_else(|| anyhow::anyhow!("the engine stopped"))?,
                );
            }
            producer.await??;
        }
    }
    stop.cancel();
    running.await?;
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (enqueue time, drain time) of `n` tasks on a fresh store.
async fn round(
    database_url: Option<String>,
    slots: usize,
    n: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let (_dir, store, files, tenant) = fresh(database_url, slots).await?;
    let now = jiff::Timestamp::now();
    let batch: Vec<NewTask> = (0..n).map(|_| noop(tenant, Map::new(), now)).collect();
    let t = Instant::now();
    let enqueued = store.insert_tasks(batch, now).await?;
    let enqueue = t.elapsed();
    anyhow::ensure!(
        enqueued.len() as u64 == n && enqueued.iter().all(|e| e.created),
        "the bulk insert did not create every task"
    );
    let mut registry = Registry::new();
    registry.register(NoOp(None));
    let mut config = app::engine_config(slots, 30, 5);
    config.poll = Duration::from_millis(5);
    let engine = Engine::new(store.clone(), files, Arc::new(registry), config);
    let metrics = engine.metrics();
    let stop = CancellationToken::new();
    let t = Instant::now();
    let running = tokio::spawn(engine.run(stop.clone()));
    while metrics.done.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            metrics.fatal.load(Ordering::Relaxed) == 0,
            "a no-op task failed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain = t.elapsed();
    stop.cancel();
    running.await?;
    Ok((enqueue, drain))
}

/// graphile-worker's processes and slots per process, in its batched mode
/// (`scripts/peers/graphile-worker/worker.mjs`).
pub const GRAPHILE_PROCESSES: usize = 4;
pub const GRAPHILE_CONCURRENCY: usize = 24;

/// The drain time of `n` no-op jobs by graphile-worker on a fresh database
/// of the server at `pg_url`: its workers start and wait, the jobs arrive in
/// one statement, and the clock runs from its commit until the job table is
/// empty (graphile-worker deletes the jobs it finishes).
async fn graphile_round(harness: &Path, pg_url: &str, n: u64) -> anyhow::Result<Duration> {
    let db = datask_store_postgres::testing::fresh_database(pg_url).await;
    let worker = harness.join("worker.mjs");
    let migrated = tokio::process::Command::new("node")
        .arg(&worker)
        .args([&db, "migrate"])
        .status()
        .await?;
    anyhow::ensure!(migrated.success(), "graphile-worker's migration failed");
    let mut workers = Vec::new();
    // Jobs the workers' handlers ran, as they report it in steps of 100.
    let handled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..GRAPHILE_PROCESSES {
        let mut child = tokio::process::Command::new("node")
            .arg(&worker)
            .args([&db, &GRAPHILE_CONCURRENCY.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "ready" {
                break;
            }
        }
        // Keep reading: a worker whose stdout is closed dies on its next log line.
        let handled = handled.clone();
        tokio::spawn(async move {
            let mut last: u64 = 0;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line
                    .trim()
                    .strip_prefix("handled ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    handled.fetch_add(n - last, Ordering::Relaxed);
                    last = n;
                }
            }
        });
        workers.push(child);
    }
    let pool = sqlx::PgPool::connect(&db).await?;
    sqlx::query(
        "SELECT count(*) FROM graphile_worker.add_jobs((
             SELECT array_agg(ROW('noop', '{}'::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec)
             FROM generate_series(1, $1)))",
    )
    .bind(n as i64)
    .execute(&pool)
    .await?;
    let t = Instant::now();
    // The job table is polled only near the end: until then, the workers'
    // own reports say how far they are, at no cost to the server.
    let unreported = (GRAPHILE_PROCESSES as u64) * 100;
    while handled.load(Ordering::Relaxed) + unreported < n {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "graphile-worker handled only {} jobs",
            handled.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM graphile_worker._private_jobs")
            .fetch_one(&pool)
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "graphile-worker left {left} jobs"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain = t.elapsed();
    for mut w in workers {
        let _ = w.kill().await;
    }
    pool.close().await;
    Ok(drain)
}

/// Waits until the server is quiet: a checkpoint, and no autovacuum worker
/// (the `io` measure leaves millions of fresh rows behind it, and vacuuming
/// them took a core away from the first burn-down run: 18 s instead of 11).
async fn settle(pg_url: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(pg_url).await?;
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(120) {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        )
        .fetch_one(&pool)
        .await?;
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pool.close().await;
    Ok(())
}

pub async fn measure(o: &Opts) -> anyhow::Result<String> {
    let mut rows = String::new();
    for (name, url) in crate::backends(o) {
        let (mut enq, mut drain, mut peer) = (vec![], vec![], vec![]);
        // On PostgreSQL, datask and graphile-worker take turns, each on a
        // quiet server, so that both see the same conditions.
        for r in 0..o.runs {
            if let Some(u) = &url {
                settle(u).await?;
            }
            let db = match &url {
                None => None,
                Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
            };
            let (e, d) = round(db, o.slots, o.tasks).await?;
            eprintln!("{name} burn-down run {r}: enqueue {e:?}, drain {d:?}");
            enq.push(e);
            drain.push(d);
            if let (Some(harness), Some(pg)) = (&o.graphile, &url) {
                settle(pg).await?;
                let g = graphile_round(harness, pg, o.tasks).await?;
                eprintln!("graphile-worker burn-down run {r}: drain {g:?}");
                peer.push(g);
            }
        }
        let (e, d) = (median(enq), median(drain));
        rows.push_str(&format!(
            "| {name} | {} | {:.2} s ({:.0} tasks/s) | {:.2} s ({:.0} tasks/s) |\n",
            o.tasks,
            e.as_secs_f64(),
            o.tasks as f64 / e.as_secs_f64(),
            d.as_secs_f64(),
            o.tasks as f64 / d.as_secs_f64()
        ));
        if !peer.is_empty() {
            let g = median(peer);
            rows.push_str(&format!(
                "| PostgreSQL: graphile-worker {GRAPHILE_PROCESSES} processes × {GRAPHILE_CONCURRENCY}, \
                 local queue, batched completion (finished jobs deleted) | {} | one statement | \
                 {:.2} s ({:.0} jobs/s); datask / graphile-worker: {:.2}× the time |\n",
                o.tasks,
                g.as_secs_f64(),
                o.tasks as f64 / g.as_secs_f64(),
                d.as_secs_f64() / g.as_secs_f64()
            ));
        }
    }
    let mut lat = String::new();
    let samples = (o.tasks as usize / 50).clamp(50, 2000);
    for (name, url) in crate::backends(o) {
        for (label, rate) in [
            ("one at a time", None),
            ("2,000 tasks/s offered", Some(2000)),
        ] {
            let db = match &url {
                None => None,
                Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
            };
            let mut l = latency(db, o.slots, samples, rate).await?;
            l.sort();
            let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
            eprintln!("{name} latency {label}: p50 {p50:?} p99 {p99:?}");
            lat.push_str(&format!(
                "| {name} | {label} | {samples} | {:.2} ms | {:.2} ms |\n",
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0
            ));
        }
    }
    Ok(format!(
        "### Enqueue → start latency\n\nMeasured from the instant \
         written into the task before `insert_task` to the handler's first line, by one engine \
         woken by the store's own signal (in-process notify on SQLite, `LISTEN/NOTIFY` on PostgreSQL), \
         {}.\n\n| store | load | tasks | p50 | p99 |\n|---|---|---|---|---|\n{lat}\n",
        machine()
    ) + &format!(
        "### No-op burn-down\n\nTasks enqueued in bulk (one `insert_tasks` call, one transaction), then drained by one engine \
         with {} slots (claim, run, complete; the full history is kept). {} Median of {} runs, {}. \
         Command: `datask-bench burndown --tasks {} --slots {}`.\n\n\
         | store | tasks | enqueue | drain |\n|---|---|---|---|\n{rows}\n",
        o.slots,
        if o.graphile.is_some() && o.pg_url.is_some() {
            "The reference on the same PostgreSQL server, same run: graphile-worker \
             (`scripts/peers/graphile-worker`), its workers started first and the jobs added in one \
             statement, timed from that statement's end until its job table is empty."
        } else {
            "No reference ran (it needs `--graphile` and a PostgreSQL server)."
        },
        o.runs,
        machine(),
        o.tasks,
        o.slots
    ))
}
