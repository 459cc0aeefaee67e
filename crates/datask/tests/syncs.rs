//! The integration syncs against a real HTTP endpoint on loopback: an axum
//! server standing in for the directory and the attribution service, whose
//! answers each test changes as it goes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{Backend, Tenant, TestServer, start};
use serde_json::{Value, json};

/// Status, content type and body.
type Answer = (u16, &'static str, String);
/// A request's path and its `Authorization` header.
type Seen = (String, Option<String>);

/// What the stand-in endpoint answers, by path; every request is recorded.
#[derive(Clone, Default)]
struct Endpoint {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Endpoint {
    fn answer(&self, path: &str, status: u16, content_type: &'static str, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, content_type, body.to_string()));
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Serves on a loopback port; answers its base URL.
    async fn serve(&self) -> String {
        async fn any(State(e): State<Endpoint>, uri: Uri, headers: HeaderMap) -> Response {
            // As sent: percent-encoding kept.
            let path = uri.path().to_string();
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            e.seen.lock().unwrap().push((path.clone(), auth));
            match e.answers.lock().unwrap().get(&path).cloned() {
                Some((status, ct, body)) => (
                    StatusCode::from_u16(status).unwrap(),
                    [(header::CONTENT_TYPE, ct)],
                    body,
                )
                    .into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        let app = Router::new()
            .route("/{*path}", get(any))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/api")
    }
}

async fn configure(s: &TestServer, t: &Tenant, name: &str, endpoint: Value) -> Value {
    let (status, body) = s
        .call(
            "PUT",
            "/settings",
            &t.key,
            Some(json!({ "integrations": { name: endpoint } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn run(s: &TestServer, t: &Tenant, identifier: &str, target: Value) -> Value {
    let task = s
        .create(
            &t.key,
            json!({ "identifier": identifier, "target": target }),
        )
        .await;
    s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await
}

async fn count(s: &TestServer, t: &Tenant, index: &'static datask_core::index::IndexDef) -> i64 {
    s.store.count_rows(t.id, index, None).await.unwrap()
}

on_both_stores!(
    settings_keep_endpoints_and_hide_tokens,
    profiles_sync_reports_rows_like_an_import,
    lists_sync_mirrors_the_group,
    installs_sync_and_endpoint_failures,
    list_syncs_of_one_list_take_turns,
);

async fn settings_keep_endpoints_and_hide_tokens(backend: Backend) {
    let s = start(backend).await;
    let t = s.tenant("settings").await;
    let body = configure(
        &s,
        &t,
        "active_directory",
        json!({ "url": "https://directory.example/api", "token": "s3cret" }),
    )
    .await;
    assert_eq!(
        body["integrations"],
        json!({ "active_directory": { "url": "https://directory.example/api", "token_set": true } })
    );
    assert!(!body.to_string().contains("s3cret"), "{body}");
    // Another change keeps it; null removes it.
    let (_, body) = s
        .call(
            "PUT",
            "/settings",
            &t.key,
            Some(json!({ "concurrency": 3 })),
        )
        .await;
    assert_eq!(body["integrations"]["active_directory"]["token_set"], true);
    // Left out, the token stays while the URL keeps its server; a new server
    // needs it given again (tokens are never shown, so never sent back).
    let body = configure(
        &s,
        &t,
        "active_directory",
        json!({ "url": "https://directory.example/v2" }),
    )
    .await;
    assert_eq!(
        body["integrations"]["active_directory"]["token_set"], true,
        "{body}"
    );
    let (status, body) = s
        .call("PUT", "/settings", &t.key, Some(json!({ "integrations": { "active_directory": { "url": "https://elsewhere.example/api" } } })))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("integrations.active_directory.token")),
        "{body}"
    );
    let body = configure(
        &s,
        &t,
        "active_directory",
        json!({ "url": "https://elsewhere.example/api", "token": null }),
    )
    .await;
    assert_eq!(
        body["integrations"]["active_directory"]["token_set"], false,
        "{body}"
    );
    let body = configure(&s, &t, "active_directory", Value::Null).await;
    assert_eq!(body["integrations"], json!({}));

    for (input, field, words) in [
        (
            json!({ "ldap": { "url": "http://x" } }),
            "integrations.ldap",
            "unknown integration",
        ),
        (
            json!({ "kochava": { "url": "ftp://x/y" } }),
            "integrations.kochava.url",
            "http://",
        ),
        (
            json!({ "kochava": { "url": "not a url" } }),
            "integrations.kochava.url",
            "not a URL",
        ),
        (
            json!({ "kochava": { "url": "http://u:p@x/" } }),
            "integrations.kochava.url",
            "credentials",
        ),
        (
            json!({ "kochava": {} }),
            "integrations.kochava.url",
            "required",
        ),
        (
            json!({ "kochava": { "url": "http://x", "tok": "a" } }),
            "integrations.kochava.tok",
            "unknown field",
        ),
        (
            json!({ "kochava": { "url": "http://x", "token": 5 } }),
            "integrations.kochava.token",
            "string",
        ),
        (
            json!({ "kochava": "http://x" }),
            "integrations.kochava",
            "object",
        ),
    ] {
        let (status, body) = s
            .call(
                "PUT",
                "/settings",
                &t.key,
                Some(json!({ "integrations": input })),
            )
            .await;
        assert_eq!(status, 400, "{input}: {body}");
        assert_eq!(body["error"]["field"], field, "{input}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(words),
            "{input}: {body}"
        );
    }

    // Not configured: the run ends in ERROR naming the setting.
    let done = run(&s, &t, "kochava_sync_installs", json!({})).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert!(
        done["errors"]["integrations.kochava"][0]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{done}"
    );
    s.stop().await;
}

async fn profiles_sync_reports_rows_like_an_import(backend: Backend) {
    let s = start(backend).await;
    let t = s.tenant("directory").await;
    let endpoint = Endpoint::default();
    let base = endpoint.serve().await;
    configure(
        &s,
        &t,
        "active_directory",
        json!({ "url": base, "token": "tok-1" }),
    )
    .await;
    endpoint.answer(
        "/api/profiles",
        200,
        "text/csv",
        "user_id,email,email_opt_in\nu1,u1@x.io,true\n,u2@x.io,false\nu3,u3@x.io,maybe\nu4,u4@x.io,\n",
    );

    // A dry run checks and writes nothing.
    let dry = run(
        &s,
        &t,
        "active_directory_profiles_sync",
        json!({ "dry_run": true }),
    )
    .await;
    assert_eq!(dry["output"]["dry_run"], true, "{dry}");
    assert_eq!(count(&s, &t, &datask_core::index::USERS).await, 0);

    let done = run(&s, &t, "active_directory_profiles_sync", json!({})).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(done["output"]["applied"], 2, "{done}");
    assert_eq!(done["output"]["rejected"], 2, "{done}");
    assert_eq!(done["output"]["source"], format!("{base}/profiles"));
    let rows = done["errors"]["file[rows]"].to_string();
    assert!(rows.contains("Row 3") && rows.contains("Row 4"), "{done}");
    assert_eq!(count(&s, &t, &datask_core::index::USERS).await, 2);
    // The failed rows are downloadable, as for an upload.
    let failed = String::from_utf8(s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert!(failed.contains("maybe"), "{failed}");
    for (path, auth) in endpoint.requests() {
        assert_eq!(path, "/api/profiles");
        assert_eq!(auth.as_deref(), Some("Bearer tok-1"));
    }
    // The copy of the answer is deleted once the run has used it.
    let id = done["id"].as_i64().unwrap();
    let left: Vec<String> = s
        .files_under(&format!("results/{}/{id}", t.id))
        .into_iter()
        .filter(|f| f.contains("source"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    s.stop().await;
}

async fn lists_sync_mirrors_the_group(backend: Backend) {
    let s = start(backend).await;
    let t = s.tenant("lists").await;
    let endpoint = Endpoint::default();
    let base = endpoint.serve().await;
    configure(
        &s,
        &t,
        "active_directory",
        json!({ "url": format!("{base}/") }),
    )
    .await;
    let profiles = "user_id\nu1\nu2\nu3\nu4\n";
    assert_eq!(
        s.import(&t, "users", profiles.into()).await["state"]["code"],
        "DONE"
    );

    // A group that is no path segment is refused by name.
    for (target, field) in [
        (json!({ "list_id": "sales", "group": ".." }), "target.group"),
        (json!({ "list_id": "." }), "target.list_id"),
        (
            json!({ "list_id": "sales", "group": "a\nb" }),
            "target.group",
        ),
        (json!({ "list_id": "sales", "group": " " }), "target.group"),
    ] {
        let (status, body) = s
            .call(
                "POST",
                "/tasks",
                &t.key,
                Some(json!({ "identifier": "active_directory_lists_sync", "target": target })),
            )
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (400, Some(field)),
            "{target}: {body}"
        );
    }

    // The group's name has characters a path must encode.
    endpoint.answer(
        "/api/groups/Sales%20EU/members",
        200,
        "text/csv",
        "user_id\nu1\nu2\nu3\n",
    );
    let first = run(
        &s,
        &t,
        "active_directory_lists_sync",
        json!({ "list_id": "sales", "group": "Sales EU" }),
    )
    .await;
    assert_eq!(first["state"]["code"], "DONE", "{first}");
    assert_eq!(first["output"]["applied"], 3, "{first}");
    assert_eq!(first["output"]["removed"], 0, "{first}");
    assert_eq!(count(&s, &t, &datask_core::index::LIST_MEMBERS).await, 3);

    // u1 left the group, u4 joined, and someone unknown is reported.
    endpoint.answer(
        "/api/groups/Sales%20EU/members",
        200,
        "text/csv",
        "user_id\nu2\nu3\nu4\nghost\n",
    );
    let second = run(
        &s,
        &t,
        "active_directory_lists_sync",
        json!({ "list_id": "sales", "group": "Sales EU" }),
    )
    .await;
    assert_eq!(second["state"]["code"], "ERROR", "{second}");
    assert_eq!(second["output"]["removed"], 1, "{second}");
    assert!(
        second["errors"]["file[rows]"].to_string().contains("Row 5"),
        "{second}"
    );
    let export = run(
        &s,
        &t,
        "list_export",
        json!({ "list_id": "sales", "export_format": "csv" }),
    )
    .await;
    let file = String::from_utf8(s.download(&t.key, export["id"].as_i64().unwrap()).await).unwrap();
    let ids: Vec<&str> = file
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids, ["u2", "u3", "u4"], "{file}");

    // An unreadable answer removes no one.
    endpoint.answer("/api/groups/sales/members", 200, "text/csv", "");
    let empty = run(
        &s,
        &t,
        "active_directory_lists_sync",
        json!({ "list_id": "sales" }),
    )
    .await;
    assert_eq!(empty["state"]["code"], "ERROR", "{empty}");
    assert!(empty["errors"]["file"].is_array(), "{empty}");
    assert_eq!(count(&s, &t, &datask_core::index::LIST_MEMBERS).await, 3);
    s.stop().await;
}

async fn installs_sync_and_endpoint_failures(backend: Backend) {
    let s = start(backend).await;
    let t = s.tenant("kochava").await;
    let endpoint = Endpoint::default();
    let base = endpoint.serve().await;
    configure(&s, &t, "kochava", json!({ "url": base, "token": "k" })).await;
    endpoint.answer(
        "/api/installs",
        200,
        "application/x-ndjson",
        concat!(
            r#"{"device_id":"d1","user_id":"u1","platform":"ios","network":"Meta","campaign":"spring","installed_at":"2026-11-30T10:00:00Z"}"#,
            "\n",
            r#"{"device_id":"d2","platform":"android","network":"Google","installed_at":"yesterday"}"#,
            "\n",
        ),
    );
    let done = run(&s, &t, "kochava_sync_installs", json!({})).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(done["output"]["applied"], 1, "{done}");
    assert!(
        done["errors"]["file[rows]"]
            .to_string()
            .contains("installed_at"),
        "{done}"
    );
    assert_eq!(count(&s, &t, &datask_core::index::INSTALLS).await, 1);

    // A JSON array, as many APIs answer, is read element by element.
    endpoint.answer(
        "/api/installs",
        200,
        "application/json",
        "[\n {\"device_id\": \"d3\", \"platform\": \"ios\"},\n {\"device_id\": \"d4\"}\n]",
    );
    let done = run(&s, &t, "kochava_sync_installs", json!({})).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["output"]["applied"], 2, "{done}");
    assert_eq!(count(&s, &t, &datask_core::index::INSTALLS).await, 3);
    endpoint.answer(
        "/api/installs",
        200,
        "application/json",
        "[{\"device_id\": \"d5\"}",
    );
    let cut = run(&s, &t, "kochava_sync_installs", json!({})).await;
    assert_eq!(cut["state"]["code"], "ERROR", "{cut}");
    assert!(
        cut["errors"]["source"][0]
            .as_str()
            .unwrap()
            .contains("cut off"),
        "{cut}"
    );

    // A 4xx is the caller's configuration: ERROR at once, naming the answer.
    endpoint.answer("/api/installs", 401, "text/plain", "no");
    let refused = run(&s, &t, "kochava_sync_installs", json!({})).await;
    assert_eq!(refused["state"]["code"], "ERROR", "{refused}");
    assert_eq!(refused["attempts"], 1, "{refused}");
    assert!(
        refused["errors"]["source"][0]
            .as_str()
            .unwrap()
            .contains("401"),
        "{refused}"
    );

    // A 5xx is the endpoint's trouble: retried, then FATAL with the reason.
    endpoint.answer("/api/installs", 503, "text/plain", "busy");
    let task = s
        .create(
            &t.key,
            json!({ "identifier": "kochava_sync_installs", "target": {}, "max_attempts": 1 }),
        )
        .await;
    let failed = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(failed["state"]["code"], "FATAL", "{failed}");
    assert!(failed.to_string().contains("503"), "{failed}");

    // Nothing listening: also retried, with the connection error.
    configure(
        &s,
        &t,
        "kochava",
        json!({ "url": "http://127.0.0.1:9/api", "token": null }),
    )
    .await;
    let task = s
        .create(
            &t.key,
            json!({ "identifier": "kochava_sync_installs", "target": {}, "max_attempts": 1 }),
        )
        .await;
    let failed = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(failed["state"]["code"], "FATAL", "{failed}");
    assert!(
        failed.to_string().to_lowercase().contains("connect"),
        "{failed}"
    );
    s.stop().await;
}

/// Two syncs of one list started together: the second waits for the first,
/// so the list ends as the answer fetched last, not a mix of both.
async fn list_syncs_of_one_list_take_turns(backend: Backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let s = start(backend).await;
    let t = s.tenant("turns").await;
    let mut profiles = String::from("user_id\n");
    for i in 0..2000 {
        profiles.push_str(&format!("u{i:04}\n"));
    }
    assert_eq!(
        s.import(&t, "users", profiles.clone().into()).await["state"]["code"],
        "DONE"
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let app = {
        let calls = calls.clone();
        Router::new().route(
            "/ad/groups/{group}/members",
            get(move || {
                let calls = calls.clone();
                let profiles = profiles.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        // The first answer is slow and large.
                        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                        profiles
                    } else {
                        "user_id\nu0001\nu0002\nu0003\n".to_string()
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/ad", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    configure(&s, &t, "active_directory", json!({ "url": base })).await;
    let sync =
        json!({ "identifier": "active_directory_lists_sync", "target": { "list_id": "team" } });
    let first = s.create(&t.key, sync.clone()).await["id"].as_i64().unwrap();
    let second = s.create(&t.key, sync).await["id"].as_i64().unwrap();
    for id in [first, second] {
        assert_eq!(s.wait(&t.key, id, 60).await["state"]["code"], "DONE");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(count(&s, &t, &datask_core::index::LIST_MEMBERS).await, 3);
    s.stop().await;
}
