//! A datask server in this process on a fresh store, driven over HTTP.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datask::app::{self, Server, StoreOptions};
use datask_api::ApiConfig;
use datask_core::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Bench {
    pub url: String,
    pub key: String,
    pub tenant: i64,
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The profile attributes of the generated profiles CSV.
pub fn profile_settings() -> Value {
    json!({ "attributes": [
        { "name": "tier", "type": "string" },
        { "name": "points", "type": "number" }
    ] })
}

/// A migrated store and a file store in a fresh directory (kept as long as
/// the `TempDir` lives).
pub async fn open_fresh(
    database_url: Option<String>,
) -> anyhow::Result<(tempfile::TempDir, Arc<dyn Store>, datask_engine::FileStore)> {
    let dir = tempfile::tempdir()?;
    let store = app::open_store(&StoreOptions {
        data_dir: dir.path().to_path_buf(),
        database_url,
    })
    .await?;
    let files = app::open_files(dir.path(), None).await?;
    Ok((dir, store, files))
}

pub async fn start(database_url: Option<String>) -> anyhow::Result<Bench> {
    let (dir, store, files) = open_fresh(database_url).await?;
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
        store: store.clone(),
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
    let b = Bench {
        url,
        key,
        tenant: tenant["id"].as_i64().context("no tenant id")?,
        store,
        dir,
        http,
        stop,
        handle,
    };
    let status = b
        .http
        .put(format!("{}/settings", b.url))
        .bearer_auth(&b.key)
        .json(&profile_settings())
        .send()
        .await?
        .status();
    anyhow::ensure!(status.is_success(), "PUT /settings: {status}");
    Ok(b)
}

impl Bench {
    /// Creates a task and polls until it is DONE; answers the time and the task.
    pub async fn task(&self, body: Value) -> anyhow::Result<(Duration, Value)> {
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
        let id = task["id"]
            .as_i64()
            .with_context(|| format!("no id: {task}"))?;
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

    /// Streams a file to `POST /uploads` (never whole in memory).
    pub async fn upload(&self, file: &Path) -> anyhow::Result<String> {
        let f = tokio::fs::File::open(file).await?;
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let v: Value = self
            .http
            .post(format!("{}/uploads?filename=profiles.csv", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await?
            .json()
            .await?;
        Ok(v["upload_id"]
            .as_str()
            .with_context(|| format!("no upload id: {v}"))?
            .to_string())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await??;
        Ok(())
    }
}
