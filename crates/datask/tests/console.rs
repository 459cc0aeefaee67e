//! `/console` in a real headless browser: a server with a few finished,
//! failed and waiting tasks, and `console/console.test.mjs` driving
//! Chromium through playwright-core against it. `scripts/lib/browser.sh`
//! installs both and sets the variables read here.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Backend, start, synth_csv};
use datask_core::index;
use serde_json::json;

/// Chromium and the playwright-core modules of this test run, or None (with
/// a note) when the run has none and does not require them.
fn browser() -> Option<(String, String)> {
    match (
        std::env::var("DATASK_TEST_BROWSER"),
        std::env::var("DATASK_TEST_NODE_PATH"),
    ) {
        (Ok(b), Ok(n)) if !b.is_empty() && !n.is_empty() => Some((b, n)),
        _ => {
            if std::env::var("DATASK_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!(
                    "DATASK_REQUIRE_BROWSER=1 but DATASK_TEST_BROWSER or DATASK_TEST_NODE_PATH is not set"
                );
            }
            eprintln!(
                "skipped: DATASK_TEST_BROWSER / DATASK_TEST_NODE_PATH not set (source scripts/lib/browser.sh)"
            );
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_headless_browser() {
    let Some((chromium, node_path)) = browser() else {
        return;
    };
    let s = start(Backend::Sqlite).await;
    let t = s.tenant("console").await;
    let key = &t.key;
    s.synth_attributes(&t).await;

    let imported = s.import(&t, "users", synth_csv(&index::USERS, 20, 7)).await;
    assert_eq!(imported["state"]["code"], "DONE", "{imported}");

    let export = s
        .create(key, json!({ "desc": "all users", "target": { "action": "export", "export_index": "users", "export_format": "csv" } }))
        .await;
    let export_id = export["id"].as_i64().unwrap();
    assert_eq!(s.wait(key, export_id, 60).await["state"]["code"], "DONE");
    let file = s.download(key, export_id).await;
    let first_line = String::from_utf8_lossy(&file)
        .lines()
        .next()
        .unwrap()
        .to_string();

    // Row 3 has no identifier: ERROR, with the seed's row message.
    let upload = s
        .upload(
            key,
            "profiles.csv",
            b"user_id,email\nu1,a@x.io\n,b@x.io\n".to_vec(),
        )
        .await;
    let failed = s
        .create(
            key,
            json!({ "identifier": "profile_import", "desc": "bad file", "target": { "upload_id": upload } }),
        )
        .await;
    let failed_id = failed["id"].as_i64().unwrap();
    let failed = s.wait(key, failed_id, 60).await;
    assert_eq!(failed["state"]["code"], "ERROR", "{failed}");
    let row_error = failed["errors"]["file[rows]"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(row_error, "Rows must contain identifier (Row 3)");

    let xss_desc = "<img src=x onerror=alert(1)>";
    let xss = s
        .create(key, json!({ "desc": xss_desc, "target": { "action": "export", "export_index": "vouchers", "export_format": "json" } }))
        .await;
    let xss_id = xss["id"].as_i64().unwrap();
    assert_eq!(s.wait(key, xss_id, 60).await["state"]["code"], "DONE");

    // Waiting until tomorrow: enough rows for a second page, and one to cancel.
    let tomorrow = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24)).to_string();
    let mut waiting = Vec::new();
    for n in 0..8 {
        let task = s
            .create(key, json!({ "desc": format!("later {n}"), "trigger": { "once": tomorrow }, "target": { "action": "export", "export_index": "products", "export_format": "csv" } }))
            .await;
        waiting.push(task["id"].as_i64().unwrap());
    }

    // An admin user who may only look: the page must name the chain, and
    // show the 403 of an action the level does not allow.
    let (status, user) = s
        .call(
            "POST",
            "/admin/users",
            common::ROOT_KEY,
            Some(json!({ "name": "ann" })),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let (status, body) = s
        .call(
            "PUT",
            &format!("/admin/tenants/{}/members/{}", t.id, user["id"]),
            common::ROOT_KEY,
            Some(json!({ "level": "viewer" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let expect = json!({
        "chain": t.id,
        "viewer_token": user["token"],
        "export_id": export_id,
        "export_first_line": first_line,
        "export_bytes": file.len(),
        "failed_id": failed_id,
        "row_error": row_error,
        "xss_id": xss_id,
        "xss_desc": xss_desc,
        "waiting": waiting,
        "total": 4 + waiting.len(),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.test.mjs");
    // Kept after the run: a failure leaves its screenshot here.
    let downloads = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&downloads).unwrap();
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&s.url)
        .arg(key)
        .arg(expect.to_string())
        .env("DATASK_TEST_BROWSER", &chromium)
        .env("DATASK_TEST_NODE_PATH", &node_path)
        .env("DATASK_TEST_DOWNLOADS", &downloads)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test did not finish within 180 s")
        .expect("node could not be started");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display(),
        out.status
    );
    eprintln!("{stdout}");

    // What the page did went through the API: the export it created and the
    // task it cancelled are there for any other client too.
    let (_, created) = s
        .call("GET", "/tasks?identifier=export&limit=500", key, None)
        .await;
    assert!(
        created["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["desc"] == "from the browser" && t["state"]["code"] == "DONE"),
        "{created}"
    );
    let (_, cancelled) = s
        .call("GET", &format!("/tasks/{}", waiting[0]), key, None)
        .await;
    assert_eq!(cancelled["state"]["code"], "CANCELLED", "{cancelled}");
    s.stop().await;
}
