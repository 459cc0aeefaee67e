//! kill -9 in the middle of a large import and of a large export: after a
//! restart each task finishes exactly once, the data is exact, and no
//! partial result file was ever published.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Backend, synth_csv};
use datask_core::index;
use serde_json::{Value, json};

const ROWS: u64 = 300_000;

struct Proc {
    child: Child,
    url: String,
}

/// Starts `datask serve` on a free port and waits for its address line.
fn spawn(data_dir: &Path, database_url: Option<&str>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datask"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--lease-secs",
        "2",
        "--workers",
        "2",
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .env("DATASK_ROOT_KEY", common::ROOT_KEY)
    .env("DATASK_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    match database_url {
        Some(u) => cmd.env("DATASK_DATABASE_URL", u),
        None => cmd.env_remove("DATASK_DATABASE_URL"),
    };
    let mut child = cmd.spawn().expect("start datask");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("datask exited before listening")
            .unwrap();
        if let Some(url) = line.strip_prefix("datask listening on ") {
            break url.to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proc { child, url }
}

impl Proc {
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Value {
    let mut req = http
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {body}");
    body
}

/// Waits until the task has made progress but is not finished.
async fn wait_mid_run(http: &reqwest::Client, url: &str, token: &str, id: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let t = call(http, url, "GET", &format!("/tasks/{id}"), token, None).await;
        let state = t["state"]["code"].as_str().unwrap();
        assert!(
            matches!(state, "READY" | "INPROGRESS"),
            "task finished before the kill: {t}"
        );
        if state == "INPROGRESS" && t["progress"]["done"].as_i64().unwrap_or(0) > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_finished(http: &reqwest::Client, url: &str, token: &str, id: i64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let t = call(http, url, "GET", &format!("/tasks/{id}"), token, None).await;
        if !matches!(t["state"]["code"].as_str().unwrap(), "READY" | "INPROGRESS") {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Files under `results/<tenant>/<task>/` whose names have no staging suffix.
fn published_files(data_dir: &Path, tenant: i64, task: i64) -> Vec<String> {
    let dir = data_dir
        .join("files/results")
        .join(tenant.to_string())
        .join(task.to_string());
    let mut out = Vec::new();
    for attempt in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(attempt.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().to_string();
            if !name.contains('#') {
                out.push(format!("{}/{name}", attempt.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// CSV rows with JSON cells re-serialised (PostgreSQL's jsonb reorders keys).
fn normalized(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_reader(bytes);
    r.records()
        .map(|rec| {
            rec.unwrap()
                .iter()
                .map(|c| match serde_json::from_str::<Value>(c) {
                    // Attribute objects: numbers are stored as numbers
                    // (5 comes back as 5.0).
                    Ok(Value::Object(mut o)) => {
                        for v in o.values_mut() {
                            if let Some(f) = v.as_f64() {
                                *v = json!(f);
                            }
                        }
                        Value::Object(o).to_string()
                    }
                    _ => c.to_string(),
                })
                .collect()
        })
        .collect()
}

/// A server on a fresh store (a data directory, and a database on
/// PostgreSQL) with one tenant.
struct Started {
    dir: tempfile::TempDir,
    db: Option<String>,
    http: reqwest::Client,
    p: Proc,
    tenant: Value,
}

async fn started(backend: Backend, name: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            Some(datask_store_postgres::testing::fresh_database(&common::pg_url().unwrap()).await)
        }
    };
    let http = reqwest::Client::new();
    let p = spawn(dir.path(), db.as_deref());
    let tenant = call(
        &http,
        &p.url,
        "POST",
        "/admin/tenants",
        common::ROOT_KEY,
        Some(json!({ "name": name })),
    )
    .await;
    // The attributes of the generated users.
    call(
        &http,
        &p.url,
        "PUT",
        "/settings",
        tenant["privileged_key"].as_str().unwrap(),
        Some(common::synth_settings()),
    )
    .await;
    Started {
        dir,
        db,
        http,
        p,
        tenant,
    }
}

async fn kill_mid_import_and_export(backend: Backend) {
    let Started {
        dir,
        db,
        http,
        p,
        tenant,
    } = started(backend, "kill").await;
    let (tid, key) = (
        tenant["id"].as_i64().unwrap(),
        tenant["privileged_key"].as_str().unwrap().to_string(),
    );

    // --- import ---
    let input = synth_csv(&index::USERS, ROWS, 11);
    let upload = http
        .post(format!("{}/uploads?filename=users.csv", p.url))
        .bearer_auth(&key)
        .body(input.clone())
        .send()
        .await
        .unwrap();
    let upload: Value = upload.json().await.unwrap();
    let task = call(&http, &p.url, "POST", "/tasks", &key, Some(json!({ "target": { "action": "import", "import_index": "users", "upload_id": upload["upload_id"] } }))).await;
    let import_id = task["id"].as_i64().unwrap();
    wait_mid_run(&http, &p.url, &key, import_id).await;
    p.kill9();

    let p = spawn(dir.path(), db.as_deref());
    let done = wait_finished(&http, &p.url, &key, import_id).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let msgs: Vec<&str> = done["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    assert!(msgs.contains(&"lease expired"), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.starts_with("resuming after row")),
        "{msgs:?}"
    );
    let last = done["logs"].as_array().unwrap().last().unwrap();
    assert_eq!(last["success"].as_i64(), Some(ROWS as i64), "{last}");
    assert_eq!(last["errors"].as_i64(), Some(0), "{last}");

    // --- export of what was imported: exactly the input, once ---
    let task = call(&http, &p.url, "POST", "/tasks", &key, Some(json!({ "target": { "action": "export", "export_index": "users", "export_format": "csv" } }))).await;
    let export_id = task["id"].as_i64().unwrap();
    wait_mid_run(&http, &p.url, &key, export_id).await;
    assert!(
        published_files(dir.path(), tid, export_id).is_empty(),
        "a file was visible before the export finished"
    );
    p.kill9();
    assert!(
        published_files(dir.path(), tid, export_id).is_empty(),
        "the killed run left a visible file"
    );

    let p = spawn(dir.path(), db.as_deref());
    let done = wait_finished(&http, &p.url, &key, export_id).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(published_files(dir.path(), tid, export_id).len(), 1);
    let link = call(
        &http,
        &p.url,
        "GET",
        &format!("/tasks/{export_id}/download_url"),
        &key,
        None,
    )
    .await;
    let file = http
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (got, want) = (normalized(&file), normalized(&input));
    assert_eq!(got.len(), ROWS as usize);
    assert!(got == want, "the export differs from the imported file");
    p.kill9();
}

/// `profile_import` killed mid-run resumes from its checkpoint: every row
/// lands once (no row reported as a duplicate of itself), with its
/// attribute.
async fn kill_mid_profile_import(backend: Backend) {
    let Started {
        dir,
        db,
        http,
        p,
        tenant,
    } = started(backend, "kill-profiles").await;
    let key = tenant["privileged_key"].as_str().unwrap().to_string();
    call(
        &http,
        &p.url,
        "PUT",
        "/settings",
        &key,
        Some(json!({ "attributes": [{ "name": "ltv", "type": "number" }] })),
    )
    .await;
    let mut input = String::from("user_id,email,first_name,ltv\n");
    for i in 0..ROWS {
        input.push_str(&format!(
            "u{i:07},p{i}@example.com,Name {i},{}.5\n",
            i % 1000
        ));
    }
    let upload: Value = http
        .post(format!("{}/uploads?filename=profiles.csv", p.url))
        .bearer_auth(&key)
        .body(input)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = call(&http, &p.url, "POST", "/tasks", &key, Some(json!({ "identifier": "profile_import", "target": { "upload_id": upload["upload_id"] } }))).await;
    let id = task["id"].as_i64().unwrap();
    wait_mid_run(&http, &p.url, &key, id).await;
    p.kill9();

    let p = spawn(dir.path(), db.as_deref());
    let done = wait_finished(&http, &p.url, &key, id).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert!(
        done["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["msg"].as_str().unwrap().starts_with("resuming after row")),
        "{done}"
    );
    assert_eq!(done["output"]["applied"], ROWS, "{done}");
    assert_eq!(done["output"]["rejected"], 0, "{done}");
    // Counted by the engine over the stored profiles: each row once, with its attribute.
    let task = call(&http, &p.url, "POST", "/tasks", &key, Some(json!({ "identifier": "segment_count_recipients", "trigger": { "segment": { "field": "ltv", "op": "gte", "value": 0 } } }))).await;
    let count = wait_finished(&http, &p.url, &key, task["id"].as_i64().unwrap()).await;
    assert_eq!(count["output"]["count"], ROWS, "{count}");
    p.kill9();
}

/// kill -9 during a directory sync: the restarted run resumes the copy it
/// fetched (the endpoint, which answers differently the second time, is
/// asked once) and every row lands once.
async fn kill_mid_sync(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Started {
        dir,
        db,
        http,
        p,
        tenant,
    } = started(backend, "kill-sync").await;
    let key = tenant["privileged_key"].as_str().unwrap().to_string();
    let mut full = String::from("user_id,email,first_name\n");
    for i in 0..ROWS {
        full.push_str(&format!("u{i:07},p{i}@example.com,Name {i}\n"));
    }
    let asked = Arc::new(AtomicUsize::new(0));
    let app = {
        let asked = asked.clone();
        axum::Router::new().route(
            "/ad/profiles",
            axum::routing::get(move || {
                let asked = asked.clone();
                let full = full.clone();
                async move {
                    // A second fetch would get another directory.
                    if asked.fetch_add(1, Ordering::SeqCst) == 0 {
                        full
                    } else {
                        "user_id\nsomeone-else\n".to_string()
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/ad", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    call(
        &http,
        &p.url,
        "PUT",
        "/settings",
        &key,
        Some(json!({ "integrations": { "active_directory": { "url": endpoint } } })),
    )
    .await;
    let task = call(
        &http,
        &p.url,
        "POST",
        "/tasks",
        &key,
        Some(json!({ "identifier": "active_directory_profiles_sync" })),
    )
    .await;
    let id = task["id"].as_i64().unwrap();
    wait_mid_run(&http, &p.url, &key, id).await;
    p.kill9();

    let p = spawn(dir.path(), db.as_deref());
    let done = wait_finished(&http, &p.url, &key, id).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(asked.load(Ordering::SeqCst), 1, "fetched again: {done}");
    assert!(
        done["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["msg"].as_str().unwrap().starts_with("resuming the copy")),
        "{done}"
    );
    assert_eq!(done["output"]["applied"], ROWS, "{done}");
    let task = call(
        &http,
        &p.url,
        "POST",
        "/tasks",
        &key,
        Some(json!({ "identifier": "segment_count_recipients" })),
    )
    .await;
    let count = wait_finished(&http, &p.url, &key, task["id"].as_i64().unwrap()).await;
    assert_eq!(count["output"]["count"], ROWS, "{count}");
    // The copy went with the run.
    assert!(published_files(dir.path(), tenant["id"].as_i64().unwrap(), id).is_empty());
    p.kill9();
}

on_both_stores!(
    kill_mid_import_and_export,
    kill_mid_profile_import,
    kill_mid_sync
);
