//! `burndown`: no-op tasks enqueued through the store, then drained by the
//! engine (claim, run, complete, full history kept), per backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datask::app::{self, StoreOptions};
use datask_core::store::NewTenant;
use datask_core::task::NewTask;
use datask_engine::{Engine, Handler, Invalid, Outcome, Registry, TaskContext, TaskError};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::{Opts, machine, median};

/// Tasks the engine runs at once (and the tenant's limit).
const SLOTS: usize = 64;

struct NoOp;

#[async_trait]
impl Handler for NoOp {
    fn identifier(&self) -> &'static str {
        "noop"
    }
    fn validate(&self, _: &mut Map<String, Value>) -> Result<(), Invalid> {
        Ok(())
    }
    async fn run(&self, _: &TaskContext) -> Result<Outcome, TaskError> {
        Ok(Outcome::default())
    }
}

/// (enqueue time, drain time) of `n` tasks on a fresh store.
async fn round(database_url: Option<String>, n: u64) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let store = app::open_store(&StoreOptions {
        data_dir: dir.path().to_path_buf(),
        database_url,
    })
    .await?;
    let files = app::open_files(dir.path())?;
    let tenant = store
        .create_tenant(NewTenant {
            name: "burndown".into(),
            timezone: "UTC".into(),
            concurrency: SLOTS as i64,
        })
        .await?;
    let now = jiff::Timestamp::now();
    let t = Instant::now();
    for _ in 0..n {
        store
            .insert_task(
                NewTask {
                    tenant_id: tenant.id,
                    identifier: "noop".into(),
                    desc: String::new(),
                    trigger: Default::default(),
                    target: Map::new(),
                    max_attempts: 3,
                    priority: 10,
                    run_at: now,
                    idempotency_key: None,
                },
                now,
            )
            .await?;
    }
    let enqueue = t.elapsed();
    let mut registry = Registry::new();
    registry.register(NoOp);
    let mut config = app::engine_config(SLOTS, 30, 5);
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

pub async fn measure(o: &Opts) -> anyhow::Result<String> {
    let mut rows = String::new();
    let mut backends: Vec<(&str, Option<String>)> = vec![("SQLite", None)];
    if let Some(url) = &o.pg_url {
        backends.push(("PostgreSQL", Some(url.clone())));
    }
    for (name, url) in backends {
        let (mut enq, mut drain) = (vec![], vec![]);
        for r in 0..o.runs {
            let db = match &url {
                None => None,
                Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
            };
            let (e, d) = round(db, o.tasks).await?;
            eprintln!("{name} burn-down run {r}: enqueue {e:?}, drain {d:?}");
            enq.push(e);
            drain.push(d);
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
    }
    Ok(format!(
        "### No-op burn-down\n\nTasks enqueued one `insert_task` at a time, then drained by one engine \
         with {SLOTS} slots (claim, run, complete; the full history is kept). Median of {} runs, {}. \
         Command: `datask-bench burndown --tasks {}`.\n\n\
         | store | tasks | enqueue | drain |\n|---|---|---|---|\n{rows}\n",
        o.runs,
        machine(),
        o.tasks
    ))
}
