//! Benchmarks against the ground truth on the same machine, in the same run:
//! a generated users CSV imported and exported by datask (through its HTTP
//! API, engine and store) and by `sqlite3 .import` / `sqlite3 -csv`, and by
//! PostgreSQL `COPY FROM` / `COPY TO` when a server is given.
//!
//!     cargo run --release -p datask --bin datask-bench -- --rows 1000000 --pg-url postgres://… --out BENCHMARKS.md

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use datask::app::{self, Server, StoreOptions};
use datask_api::ApiConfig;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Rows of the generated users CSV.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Runs per measure; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A PostgreSQL server to measure against (a database per run is created in it).
    #[arg(long, env = "DATASK_BENCH_PG_URL")]
    pg_url: Option<String>,
    /// Write the results as Markdown here (stdout otherwise).
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Row {
    measure: String,
    datask: Duration,
    reference_name: &'static str,
    reference: Duration,
    rows: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// A datask server in this process on a fresh store; answers its URL and key.
struct Bench {
    url: String,
    key: String,
    http: reqwest::Client,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(database_url: Option<String>) -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    let store = app::open_store(&StoreOptions {
        data_dir: dir.path().to_path_buf(),
        database_url,
    })
    .await?;
    let files = app::open_files(dir.path())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = ApiConfig {
        public_url: url.clone(),
        root_key_sha256: Some(datask_api::hash_secret("bench")),
        max_upload_bytes: 1 << 40,
        ..ApiConfig::default()
    };
    let mut engine = app::engine_config(2, 30, 5);
    engine.poll = Duration::from_millis(20);
    let stop = CancellationToken::new();
    let server = Server {
        store,
        files,
        engine_config: engine,
        api: Some((listener, config, b"bench".to_vec())),
    };
    let handle = tokio::spawn(app::run(server, stop.clone()));
    let http = reqwest::Client::new();
    let tenant: Value = http
        .post(format!("{url}/admin/tenants"))
        .bearer_auth("bench")
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let key = tenant["privileged_key"]
        .as_str()
        .context("no key")?
        .to_string();
    Ok(Bench {
        url,
        key,
        http,
        stop,
        handle,
        _dir: dir,
    })
}

impl Bench {
    async fn task(&self, body: Value) -> anyhow::Result<(Duration, Value)> {
        let t = Instant::now();
        let task: Value = self
            .http
            .post(format!("{}/tasks", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        let id = task["id"].as_i64().context("no id")?;
        loop {
            let task: Value = self
                .http
                .get(format!("{}/tasks/{id}", self.url))
                .bearer_auth(&self.key)
                .send()
                .await?
                .json()
                .await?;
            match task["state"]["code"].as_str() {
                Some("READY" | "INPROGRESS") => tokio::time::sleep(Duration::from_millis(10)).await,
                Some("DONE") => return Ok((t.elapsed(), task)),
                _ => bail!("task ended badly: {task}"),
            }
        }
    }

    async fn upload(&self, file: &Path) -> anyhow::Result<String> {
        let bytes = tokio::fs::read(file).await?;
        let v: Value = self
            .http
            .post(format!("{}/uploads?filename=users.csv", self.url))
            .bearer_auth(&self.key)
            .body(bytes)
            .send()
            .await?
            .json()
            .await?;
        Ok(v["upload_id"].as_str().context("no upload id")?.to_string())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// Import then export through datask; answers (import, export) times.
async fn datask_round(
    csv: &Path,
    database_url: Option<String>,
    rows: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let b = start(database_url).await?;
    let upload = b.upload(csv).await?;
    let (import, task) = b
        .task(json!({"target": {"action": "import", "import_index": "users", "upload_id": upload}}))
        .await?;
    anyhow::ensure!(
        task["output"]["applied"] == rows,
        "import applied {} rows",
        task["output"]["applied"]
    );
    let (export, task) = b.task(json!({"target": {"action": "export", "export_index": "users", "export_format": "csv"}})).await?;
    anyhow::ensure!(
        task["output"]["rows"] == rows,
        "export wrote {} rows",
        task["output"]["rows"]
    );
    b.stop().await?;
    Ok((import, export))
}

fn sqlite_reference(csv: &Path, work: &Path) -> anyhow::Result<(Duration, Duration)> {
    let db = work.join("ref.db");
    let _ = std::fs::remove_file(&db);
    let import = timed(|| {
        run(Command::new("sqlite3")
            .arg(&db)
            .arg(format!(".import --csv {} users", csv.display())))
    })?;
    let out = work.join("ref-out.csv");
    let export = timed(|| {
        let file = std::fs::File::create(&out)?;
        let status = Command::new("sqlite3")
            .args(["-csv", "-header"])
            .arg(&db)
            .arg("SELECT * FROM users ORDER BY user_id")
            .stdout(file)
            .status()?;
        anyhow::ensure!(status.success(), "sqlite3 export failed");
        Ok(())
    })?;
    Ok((import, export))
}

fn pg_reference(csv: &Path, url: &str, work: &Path) -> anyhow::Result<(Duration, Duration)> {
    let header = std::fs::read_to_string(csv)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let cols: Vec<String> = header.split(',').map(|c| format!("{c} text")).collect();
    run(Command::new("psql")
        .arg(url)
        .args(["-q", "-c", "DROP TABLE IF EXISTS bench_users"]))?;
    run(Command::new("psql").arg(url).args([
        "-q",
        "-c",
        &format!("CREATE TABLE bench_users ({})", cols.join(", ")),
    ]))?;
    let import = timed(|| {
        run(Command::new("psql").arg(url).args([
            "-q",
            "-c",
            &format!("\\copy bench_users FROM '{}' CSV HEADER", csv.display()),
        ]))
    })?;
    let out = work.join("pg-out.csv");
    let export = timed(|| {
        run(Command::new("psql").arg(url).args([
            "-q",
            "-c",
            &format!(
                "\\copy (SELECT * FROM bench_users ORDER BY user_id) TO '{}' CSV HEADER",
                out.display()
            ),
        ]))
    })?;
    run(Command::new("psql")
        .arg(url)
        .args(["-q", "-c", "DROP TABLE bench_users"]))?;
    Ok((import, export))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let csv = work.path().join("users.csv");
    datask::synth::write_csv(
        &datask_core::index::USERS,
        args.rows,
        1,
        std::fs::File::create(&csv)?,
    )?;
    let size = std::fs::metadata(&csv)?.len();
    eprintln!("generated {} rows ({} MB)", args.rows, size / 1_000_000);

    let mut results = Vec::new();
    let mut backends: Vec<(&str, Option<String>)> = vec![("SQLite", None)];
    if let Some(url) = &args.pg_url {
        backends.push(("PostgreSQL", Some(url.clone())));
    }
    for (name, url) in backends {
        let (mut di, mut de, mut ri, mut re) = (vec![], vec![], vec![], vec![]);
        for run in 0..args.runs {
            let db_url = match &url {
                None => None,
                Some(u) => Some(datask_store_postgres::testing::fresh_database(u).await),
            };
            let (i, e) = datask_round(&csv, db_url, args.rows).await?;
            let (ri1, re1) = match &url {
                None => sqlite_reference(&csv, work.path())?,
                Some(u) => pg_reference(&csv, u, work.path())?,
            };
            eprintln!(
                "{name} run {run}: datask import {i:?} export {e:?}; reference import {ri1:?} export {re1:?}"
            );
            di.push(i);
            de.push(e);
            ri.push(ri1);
            re.push(re1);
        }
        let (import_ref, export_ref) = if url.is_none() {
            ("sqlite3 .import", "sqlite3 -csv")
        } else {
            ("psql \\copy FROM", "psql \\copy TO")
        };
        results.push(Row {
            measure: format!("{name}: import users CSV"),
            datask: median(di),
            reference_name: import_ref,
            reference: median(ri),
            rows: args.rows,
        });
        results.push(Row {
            measure: format!("{name}: export users CSV"),
            datask: median(de),
            reference_name: export_ref,
            reference: median(re),
            rows: args.rows,
        });
    }

    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH
    );
    let mut md = String::new();
    md.push_str(&format!(
        "Rows: {} ({} MB CSV), median of {} runs, {machine}, {}.\n\n",
        args.rows,
        size / 1_000_000,
        args.runs,
        jiff::Timestamp::now().strftime("%Y-%m-%d")
    ));
    md.push_str("| measure | datask | rows/s | reference | reference time | ratio (datask / reference) |\n|---|---|---|---|---|---|\n");
    for r in &results {
        md.push_str(&format!(
            "| {} | {:.2} s | {:.0} | {} | {:.2} s | {:.2}× |\n",
            r.measure,
            r.datask.as_secs_f64(),
            r.rows as f64 / r.datask.as_secs_f64(),
            r.reference_name,
            r.reference.as_secs_f64(),
            r.datask.as_secs_f64() / r.reference.as_secs_f64()
        ));
    }
    match &args.out {
        Some(p) => std::fs::write(p, &md)?,
        None => print!("{md}"),
    }
    Ok(())
}
