//! Benchmarks against the ground truth on the same machine, in the same
//! run. One sub-command per measure, `all` (the default) for every one:
//!
//! * `io`: a generated profiles CSV through `profile_import` and back out
//!   through `export` (HTTP API, engine and store), against `sqlite3
//!   .import` / `sqlite3 -csv` and PostgreSQL `COPY FROM` / `COPY TO`;
//!   then three segment counts of rising complexity on the imported
//!   profiles, against the same SQL written by hand through `sqlite3` /
//!   `psql` on the same database.
//! * `burndown`: no-op tasks enqueued, then drained by the engine.
//! * `http`: `GET /tasks/{id}` and `POST /tasks` under load on loopback.
//! * `memory`: peak resident memory of an import and export of a small and
//!   a large file, each in a fresh process.
//!
//!     cargo run --release -p datask --bin datask-bench -- all --rows 1000000 --pg-url postgres://… --out BENCHMARKS.md

/// mimalloc: rows are parsed on one thread and freed on another; glibc's
/// per-thread arenas kept that memory and grew with the file (measured by
/// `datask-bench memory`), and allocation was a tenth of an import's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod burndown;
mod http;
mod io;
mod memory;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    measure: Option<Measure>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(clap::Args, Clone)]
pub struct Opts {
    /// Rows of the generated profiles CSV (io, segment counts).
    #[arg(long, default_value_t = 1_000_000, global = true)]
    rows: u64,
    /// Runs per measure; the median is reported.
    #[arg(long, default_value_t = 3, global = true)]
    runs: usize,
    /// No-op tasks drained by the burn-down.
    #[arg(long, default_value_t = 100_000, global = true)]
    tasks: u64,
    /// Tasks the burn-down's engine runs at once (and its tenant's limit):
    /// by default graphile-worker's 4 processes × 24, the reference's own
    /// concurrency.
    #[arg(long, default_value_t = burndown::GRAPHILE_PROCESSES * burndown::GRAPHILE_CONCURRENCY, global = true)]
    slots: usize,
    /// Rows of the small and the large memory runs.
    #[arg(long, default_value_t = 100_000, global = true)]
    memory_small: u64,
    #[arg(long, default_value_t = 10_000_000, global = true)]
    memory_large: u64,
    /// Seconds of load per route (http).
    #[arg(long, default_value_t = 10.0, global = true)]
    http_secs: f64,
    /// A PostgreSQL server to measure against (a database per run is created in it).
    #[arg(long, env = "DATASK_BENCH_PG_URL", global = true)]
    pg_url: Option<String>,
    /// graphile-worker's harness, installed (`scripts/peers/graphile-worker`
    /// after `npm install`): the PostgreSQL burn-down's reference.
    #[arg(long, env = "DATASK_BENCH_GRAPHILE", global = true)]
    graphile: Option<PathBuf>,
    /// Write the results as Markdown here (stdout otherwise).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Measure {
    /// Every measure below.
    All,
    Io,
    Burndown,
    Http,
    Memory,
    /// One memory run in this process (used by `memory`).
    #[command(hide = true)]
    MemoryChild {
        #[arg(long)]
        child_rows: u64,
        #[arg(long)]
        child_pg: Option<String>,
    },
}

/// The stores every measure runs on: SQLite, and PostgreSQL when a server
/// was given.
pub fn backends(o: &Opts) -> Vec<(&'static str, Option<String>)> {
    std::iter::once(("SQLite", None))
        .chain(o.pg_url.clone().map(|u| ("PostgreSQL", Some(u))))
        .collect()
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn machine() -> String {
    format!(
        "{} cores, {}, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH,
        jiff::Timestamp::now().strftime("%Y-%m-%d")
    )
}

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads allocate anything.
    datask::memory::without_huge_pages();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let measure = args.measure.unwrap_or(Measure::All);
    let o = &args.opts;
    let mut md = String::new();
    match measure {
        Measure::MemoryChild {
            child_rows,
            child_pg,
        } => return memory::child(child_rows, child_pg).await,
        Measure::All => {
            md.push_str(&io::measure(o).await?);
            md.push_str(&burndown::measure(o).await?);
            md.push_str(&http::measure(o).await?);
            md.push_str(&memory::measure(o).await?);
        }
        Measure::Io => md.push_str(&io::measure(o).await?),
        Measure::Burndown => md.push_str(&burndown::measure(o).await?),
        Measure::Http => md.push_str(&http::measure(o).await?),
        Measure::Memory => md.push_str(&memory::measure(o).await?),
    }
    match &o.out {
        Some(p) => std::fs::write(p, &md)?,
        None => print!("{md}"),
    }
    Ok(())
}
