/// mimalloc: rows are parsed on one thread and freed on another; glibc's
/// per-thread arenas kept that memory and grew with the file (measured by
/// `datask-bench memory`), and allocation was a tenth of an import's time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use datask::app::{self, Server, StoreOptions};
use datask_api::ApiConfig;

/// datask: a self-hosted service for asynchronous data tasks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the workers and the scheduler in one process.
    Serve(ServeArgs),
    /// Run workers and the scheduler only (no HTTP).
    Worker(WorkerArgs),
    /// Apply the database migrations and exit.
    Migrate(StoreArgs),
    /// Talk to a server: create, list, get, wait, download, execute, cancel, delete.
    Task(datask::client::ClientArgs),
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Directory for the SQLite database, result files and the signing key.
    #[arg(long, env = "DATASK_DATA_DIR", default_value = "./datask-data")]
    data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL (many nodes); SQLite in --data-dir otherwise.
    #[arg(long, env = "DATASK_DATABASE_URL")]
    database_url: Option<String>,
    /// `s3://bucket[/prefix]` for result and upload files on an S3-compatible store
    /// (endpoint and credentials from AWS_*); `files/` in --data-dir otherwise.
    #[arg(long, env = "DATASK_FILES")]
    files: Option<String>,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Tasks this process runs at once.
    #[arg(long, env = "DATASK_WORKERS", default_value_t = 4)]
    workers: usize,
    /// Lease length in seconds; a task whose worker stops heartbeating is reclaimed after it.
    #[arg(long, env = "DATASK_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Seconds running tasks get to finish on shutdown before they are released.
    #[arg(long, env = "DATASK_GRACE_SECS", default_value_t = 10)]
    grace_secs: u64,
    /// Uploads older than this many hours are deleted unless a waiting or running task names them; 0 keeps them forever.
    #[arg(long, env = "DATASK_UPLOAD_TTL_HOURS", default_value_t = 168)]
    upload_ttl_hours: u64,
}

impl EngineArgs {
    fn config(&self) -> datask_engine::EngineConfig {
        let mut config = app::engine_config(self.workers, self.lease_secs, self.grace_secs);
        config.upload_ttl = (self.upload_ttl_hours > 0)
            .then(|| std::time::Duration::from_secs(self.upload_ttl_hours.saturating_mul(3600)));
        config
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, env = "DATASK_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Base URL of links this server hands out (download URLs); default http://<listen>.
    #[arg(long, env = "DATASK_PUBLIC_URL")]
    public_url: Option<String>,
    /// Root key for the admin routes; without it they are off.
    #[arg(long, env = "DATASK_ROOT_KEY", hide_env_values = true)]
    root_key: Option<String>,
    /// Key that signs download links (default: generated into --data-dir).
    #[arg(long, env = "DATASK_SIGNING_KEY", hide_env_values = true)]
    signing_key: Option<String>,
    /// Largest accepted upload, in bytes.
    #[arg(long, env = "DATASK_MAX_UPLOAD_BYTES", default_value_t = 4 << 30)]
    max_upload_bytes: u64,
    /// Largest accepted JSON body, in bytes.
    #[arg(long, env = "DATASK_MAX_JSON_BYTES", default_value_t = 1 << 20)]
    max_json_bytes: usize,
    /// Lifetime of download links, in seconds.
    #[arg(long, env = "DATASK_DOWNLOAD_TTL_SECS", default_value_t = 900)]
    download_ttl_secs: u64,
    /// Seed a demo tenant with synthetic data and print how to use it.
    #[arg(long, env = "DATASK_DEMO")]
    demo: bool,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

impl StoreArgs {
    fn options(&self) -> StoreOptions {
        StoreOptions {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
        }
    }
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DATASK_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Migrate(args) => {
            app::open_store(&args.options()).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Worker(args) => {
            let store = app::open_store(&args.store.options()).await?;
            let files = app::open_files(&args.store.data_dir, args.store.files.as_deref()).await?;
            let e = &args.engine;
            let server = Server {
                store,
                files,
                engine_config: e.config(),
                api: None,
            };
            app::run(server, app::shutdown_on_signals()).await
        }
        Command::Serve(args) => serve(args).await,
        Command::Task(args) => {
            let code = datask::client::run(args).await?;
            std::process::exit(code)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = app::open_store(&args.store.options()).await?;
    let files = app::open_files(&args.store.data_dir, args.store.files.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let key = app::signing_key(args.signing_key.as_deref(), &args.store.data_dir)?;
    let config = ApiConfig {
        public_url: public_url.clone(),
        root_key_sha256: args.root_key.as_deref().map(datask_api::hash_secret),
        max_json_bytes: args.max_json_bytes,
        max_upload_bytes: args.max_upload_bytes,
        download_ttl: std::time::Duration::from_secs(args.download_ttl_secs),
    };
    if args.demo {
        let demo = datask::demo::seed(&store, &files, &args.store.data_dir).await?;
        println!("{}", datask::demo::instructions(&demo, &public_url));
    }
    // Printed on stdout so scripts (and tests) can find the port.
    println!("datask listening on {public_url}");
    let e = &args.engine;
    let server = Server {
        store,
        files,
        engine_config: e.config(),
        api: Some((listener, config, key)),
    };
    app::run(server, app::shutdown_on_signals()).await
}
