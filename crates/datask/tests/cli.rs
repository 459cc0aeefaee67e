//! The `datask task` client against a real server on loopback: create,
//! wait, download, list, an import of a local file, and `wait` on a
//! repeating task, which ends with the run rather than never.

mod common;

use std::process::Command;

use common::{Backend, start, synth_csv};
use datask_core::index;
use serde_json::Value;

/// Runs `datask task <args>`: (exit code, stdout, stderr).
fn cli(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_datask"))
        .arg("task")
        .args(args)
        .env("DATASK_URL", url)
        .env("DATASK_TOKEN", token)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run datask");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn created_id(stdout: &str) -> i64 {
    let task: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    task["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_end_to_end() {
    let s = start(Backend::Sqlite).await;
    let t = s.tenant("cli").await;
    s.synth_attributes(&t).await;
    let dir = tempfile::tempdir().unwrap();
    let url = s.url.clone();
    let key = t.key.clone();
    let run = move |args: Vec<String>| {
        let (url, key) = (url.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&url, &key, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // An import of a local file, then an export of it, waited for and downloaded.
    let file = dir.path().join("users.csv");
    std::fs::write(&file, synth_csv(&index::USERS, 300, 5)).unwrap();
    let (code, out, err) = run(args(&[
        "create",
        "--import",
        "users",
        "--file",
        file.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let import = created_id(&out);
    let (code, out, err) = run(args(&["wait", &import.to_string()])).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("DONE"), "{out}");
    let (code, out, err) = run(args(&["create", "--export", "users", "--format", "csv"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let export = created_id(&out);
    assert_eq!(
        run(args(&["wait", &export.to_string()])).await.unwrap().0,
        0
    );
    let saved = dir.path().join("out.csv");
    let (code, _, err) = run(args(&[
        "download",
        &export.to_string(),
        "-o",
        saved.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap().lines().count(),
        301
    );

    // profile_import with --file and --identifier; a bad row makes wait exit 1.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "user_id,email\nu1,a@x.io\n,b@x.io\n").unwrap();
    let (code, out, err) = run(args(&[
        "create",
        "--identifier",
        "profile_import",
        "--file",
        bad.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, out2, _) = run(args(&["wait", &created_id(&out).to_string()]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out2}");
    assert!(
        out2.contains("ERROR") && out2.contains("Rows must contain identifier"),
        "{out2}"
    );

    // An identifier alone (no target) and a segment filter.
    let (code, out, err) = run(args(&[
        "create",
        "--identifier",
        "segment_count_recipients",
        "--segment",
        r#"{"field": "country", "op": "is_null"}"#,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        run(args(&["wait", &created_id(&out).to_string()]))
            .await
            .unwrap()
            .0,
        0
    );

    // A repeating task: wait follows the run that is due and ends with it
    // (the next run, due in two seconds, not never).
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2)).to_string();
    let (code, out, err) = run(args(&[
        "create", "--export", "products", "--once", &soon, "--repeat", "daily",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let daily = created_id(&out);
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        run(args(&["wait", &daily.to_string()])),
    )
    .await
    .expect("wait returned")
    .unwrap();
    assert_eq!(waited.0, 0, "{waited:?}");
    assert!(waited.1.contains("repeats"), "{waited:?}");

    let (code, out, _) = run(args(&["list", "--limit", "50"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&export.to_string()), "{out}");
    // Ids right-aligned under their header; pages by cursor; JSON for scripts.
    let header = out.lines().next().unwrap();
    let id_end = header.find("id").unwrap() + 2;
    for line in out.lines().skip(1) {
        assert!(
            line[..id_end].trim().parse::<i64>().is_ok(),
            "id not under its header: {line:?}\n{out}"
        );
    }
    let (code, out, err) = run(args(&["list", "--limit", "1", "--json"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("more pages")
        .to_string();
    let first = page["tasks"][0]["id"].as_i64().unwrap();
    let (code, out, err) = run(args(&[
        "list", "--limit", "1", "--json", "--cursor", &cursor,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let next: Value = serde_json::from_str(&out).unwrap();
    assert!(next["tasks"][0]["id"].as_i64().unwrap() < first, "{next}");
    let (_, _, err) = run(args(&["list", "--limit", "1"])).await.unwrap();
    assert!(err.contains("--cursor"), "{err}");
    // Mistakes: a clear message and a failing exit code.
    let (code, _, err) = run(args(&["get", "999999"])).await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("404") || err.to_lowercase().contains("not found"),
        "{err}"
    );
    let (code, _, err) = run(args(&["create"])).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("--export"), "{err}");
    // An empty token is no token: say how to give one, not the server's 401.
    let url = s.url.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || cli(&url, "", &["list"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("DATASK_TOKEN"), "{err}");
    s.stop().await;
}
