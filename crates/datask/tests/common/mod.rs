//! A real server on a loopback port, on a real SQLite file or a fresh
//! PostgreSQL database, with files in its directory or on a real
//! S3-compatible server, driven over HTTP.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use datask::app::{self, Server};
use datask_api::ApiConfig;
use datask_core::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ROOT_KEY: &str = "test-root-key";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server of this test run, or None (with a note) when the
/// run has none and does not require one.
pub fn pg_url() -> Option<String> {
    match std::env::var("DATASK_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("DATASK_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("DATASK_REQUIRE_PG=1 but DATASK_TEST_PG_URL is not set");
            }
            eprintln!("skipped: DATASK_TEST_PG_URL not set");
            None
        }
    }
}

/// `s3://bucket` of the S3-compatible server of this test run (its endpoint
/// and credentials in the `AWS_*` environment), or None (with a note) when
/// the run has none and does not require one.
pub fn s3_url() -> Option<String> {
    match std::env::var("DATASK_TEST_S3_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("DATASK_REQUIRE_S3").as_deref() == Ok("1") {
                panic!("DATASK_REQUIRE_S3=1 but DATASK_TEST_S3_URL is not set");
            }
            eprintln!("skipped: DATASK_TEST_S3_URL not set");
            None
        }
    }
}

/// `--files` for a server of its own on the run's S3 server: a fresh
/// prefix, since every test's database numbers its tenants and tasks from 1
/// and their result keys would otherwise collide.
pub fn s3_files() -> Option<String> {
    s3_url().map(|bucket| format!("{bucket}/e2e-{:016x}", rand::random::<u64>()))
}

/// Runs a test body once per backend (each test binary has its own
/// `common` module, hence `crate::common`).
#[macro_export]
#[allow(clippy::crate_in_macro_def)]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if crate::common::pg_url().is_some() {
                        super::$name(crate::common::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

pub struct TestServer {
    pub url: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Tenant {
    pub id: i64,
    pub key: String,
    pub apptoken: String,
}

pub struct Options {
    pub download_ttl: Duration,
    pub max_json_bytes: usize,
    pub max_upload_bytes: u64,
    /// `--files`: an `s3://bucket/prefix` URL (see `s3_files`); the server's
    /// directory when None.
    pub files: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            download_ttl: Duration::from_secs(900),
            max_json_bytes: 64 * 1024,
            max_upload_bytes: 64 << 20,
            files: None,
        }
    }
}

pub async fn start(backend: Backend) -> TestServer {
    start_with(backend, Options::default()).await
}

pub async fn start_with(backend: Backend, opts: Options) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = match backend {
        Backend::Sqlite => {
            let s = datask_store_sqlite::SqliteStore::open(dir.path().join("datask.db"))
                .await
                .unwrap();
            s.migrate().await.unwrap();
            Arc::new(s)
        }
        Backend::Postgres => {
            Arc::new(datask_store_postgres::testing::fresh_store(&pg_url().unwrap()).await)
        }
    };
    let files = app::open_files(dir.path(), opts.files.as_deref())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = ApiConfig {
        public_url: url.clone(),
        root_key_sha256: Some(datask_api::hash_secret(ROOT_KEY)),
        max_json_bytes: opts.max_json_bytes,
        max_upload_bytes: opts.max_upload_bytes,
        download_ttl: opts.download_ttl,
    };
    let mut engine = app::engine_config(4, 5, 2);
    engine.poll = Duration::from_millis(200);
    engine.backoff = Duration::from_millis(100);
    let server = Server {
        store: store.clone(),
        files,
        engine_config: engine,
        api: Some((listener, config, b"test-signing-key".to_vec())),
    };
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app::run(server, shutdown.clone()));
    TestServer {
        url,
        http: reqwest::Client::new(),
        store,
        dir,
        shutdown,
        handle: Some(handle),
    }
}

impl TestServer {
    /// The files the local file store holds under `rel` (e.g.
    /// `results/1/7`), as paths relative to it, sorted; none if it is absent.
    pub fn files_under(&self, rel: &str) -> Vec<String> {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let base = self.dir.path().join("files").join(rel);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// Declares the custom attributes that `synth_csv` writes into the
    /// users' `attributes` objects (`tier`, `points`), as a tenant must
    /// before importing them.
    pub async fn synth_attributes(&self, t: &Tenant) {
        let (status, body) = self
            .call("PUT", "/settings", &t.key, Some(synth_settings()))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub async fn tenant(&self, name: &str) -> Tenant {
        let (status, body) = self
            .call(
                "POST",
                "/admin/tenants",
                ROOT_KEY,
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        Tenant {
            id: body["id"].as_i64().unwrap(),
            key: body["privileged_key"].as_str().unwrap().to_string(),
            apptoken: body["apptoken"].as_str().unwrap().to_string(),
        }
    }

    /// One JSON call; answers (status, body as JSON or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn upload(&self, token: &str, filename: &str, bytes: Vec<u8>) -> String {
        let resp = self
            .http
            .post(format!("{}/uploads?filename={filename}", self.url))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        body["upload_id"].as_str().unwrap().to_string()
    }

    pub async fn create(&self, token: &str, task: Value) -> Value {
        let (status, body) = self.call("POST", "/tasks", token, Some(task)).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Polls until the task leaves READY/INPROGRESS (or panics after `secs`).
    pub async fn wait(&self, token: &str, id: i64, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, body) = self.call("GET", &format!("/tasks/{id}"), token, None).await;
            assert_eq!(status, 200, "{body}");
            let code = body["state"]["code"].as_str().unwrap().to_string();
            if !matches!(code.as_str(), "READY" | "INPROGRESS") {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} still {code} after {secs}s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads a CSV and imports it into `index`; returns the finished task.
    pub async fn import(&self, t: &Tenant, index: &str, csv: Vec<u8>) -> Value {
        let upload = self.upload(&t.key, &format!("{index}.csv"), csv).await;
        let task = self
            .create(&t.key, json!({ "target": { "action": "import", "import_index": index, "upload_id": upload } }))
            .await;
        self.wait(&t.key, task["id"].as_i64().unwrap(), 60).await
    }

    /// Follows a task's download URL and returns the bytes.
    pub async fn download(&self, token: &str, id: i64) -> Vec<u8> {
        let (status, body) = self
            .call("GET", &format!("/tasks/{id}/download_url"), token, None)
            .await;
        assert_eq!(status, 200, "{body}");
        let resp = self
            .http
            .get(body["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap().to_vec()
    }
}

/// The settings declaring the attributes of `synth_csv`'s users.
pub fn synth_settings() -> Value {
    json!({ "attributes": [
        { "name": "tier", "type": "string" },
        { "name": "points", "type": "number" }
    ] })
}

pub fn synth_csv(index: &datask_core::index::IndexDef, rows: u64, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    datask::synth::write_csv(index, rows, seed, &mut out).unwrap();
    out
}
