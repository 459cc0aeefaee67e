//! Wiring: open the store and file store, build the engine and the API, and
//! run them until shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datask_api::{ApiConfig, AppState, Signer};
use datask_core::Store;
use datask_engine::{Engine, EngineConfig, FileStore};
use datask_store_postgres::PgStore;
use datask_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

/// Where the data lives.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    /// `postgres://…`; SQLite in `data_dir` when absent.
    pub database_url: Option<String>,
}

pub async fn open_store(opts: &StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    // An empty DATASK_DATABASE_URL means "not set", not a nameless SQLite file.
    match opts
        .database_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            store.migrate().await.context("migrating PostgreSQL")?;
            Ok(Arc::new(store))
        }
        Some(url) => {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            open_sqlite(Path::new(path)).await
        }
        None => {
            std::fs::create_dir_all(&opts.data_dir)
                .with_context(|| format!("creating {}", opts.data_dir.display()))?;
            open_sqlite(&opts.data_dir.join("datask.db")).await
        }
    }
}

async fn open_sqlite(path: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let store = SqliteStore::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    store.migrate().await.context("migrating SQLite")?;
    Ok(Arc::new(store))
}

/// The file store: `s3://bucket[/prefix]` (endpoint and credentials from
/// the `AWS_*` environment) or, by default, `files/` in the data directory.
pub async fn open_files(data_dir: &Path, files: Option<&str>) -> anyhow::Result<FileStore> {
    // An empty DATASK_FILES means "not set", as for the database URL.
    match files.map(str::trim).filter(|u| !u.is_empty()) {
        Some(url) => {
            let store = FileStore::s3(url)?;
            store
                .check()
                .await
                .with_context(|| format!("reaching the file store {url}"))?;
            Ok(store)
        }
        None => FileStore::local(&data_dir.join("files"))
            .with_context(|| format!("opening the file store in {}", data_dir.display())),
    }
}

/// The signing key for download links: given, or kept in the data directory
/// so links survive restarts. Nodes sharing a database must share the key.
pub fn signing_key(given: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(k) = given {
        return Ok(k.as_bytes().to_vec());
    }
    let path = data_dir.join("signing.key");
    if let Ok(hex_key) = std::fs::read_to_string(&path) {
        return hex::decode(hex_key.trim()).context("reading signing.key");
    }
    std::fs::create_dir_all(data_dir)?;
    let key: [u8; 32] = rand::random();
    std::fs::write(&path, hex::encode(key)).context("writing signing.key")?;
    Ok(key.to_vec())
}

pub struct Server {
    pub store: Arc<dyn Store>,
    pub files: FileStore,
    pub engine_config: EngineConfig,
    pub api: Option<(tokio::net::TcpListener, ApiConfig, Vec<u8>)>,
}

/// Runs the engine (and the API when configured) until `shutdown` fires.
pub async fn run(server: Server, shutdown: CancellationToken) -> anyhow::Result<()> {
    let registry = Arc::new(datask_tasks::registry());
    let engine = Engine::new(
        server.store.clone(),
        server.files.clone(),
        registry.clone(),
        server.engine_config,
    );
    let metrics = engine.metrics();
    let engine_task = tokio::spawn(engine.run(shutdown.clone()));
    if let Some((listener, config, key)) = server.api {
        let state = AppState {
            store: server.store.clone(),
            files: server.files.clone(),
            registry,
            signer: Signer::new(&key),
            config: Arc::new(config),
            metrics: Some(metrics),
            credentials: Default::default(),
            shutdown: shutdown.clone(),
        };
        let app = datask_api::router(state);
        let stop = shutdown.clone();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("serving HTTP")?;
    }
    engine_task.await.context("the engine stopped abnormally")?;
    Ok(())
}

/// Fires the token on Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!(
            "shutting down: no new tasks are claimed; running ones get the grace period"
        );
        t.cancel();
    });
    token
}

pub fn engine_config(slots: usize, lease_secs: u64, grace_secs: u64) -> EngineConfig {
    EngineConfig {
        slots,
        lease: Duration::from_secs(lease_secs),
        grace: Duration::from_secs(grace_secs),
        ..EngineConfig::default()
    }
}
