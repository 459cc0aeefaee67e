//! `--files s3://…` end to end: a server whose uploads and results live on a
//! real S3-compatible server (s3s-fs, started by `scripts/test`), and whose
//! download links are that store's own presigned URLs (SPEC §4).

mod common;

use std::time::Duration;

use common::{Backend, Options, TestServer, s3_files, synth_csv};
use datask_core::index;
use datask_engine::FileStore;
use futures::StreamExt;
use serde_json::{Value, json};

/// A server on SQLite with its files on S3 (the database plays no part in
/// where files go), or None when the run has no S3 server.
async fn start(download_ttl: Duration) -> Option<(TestServer, FileStore)> {
    let files = s3_files()?;
    let s = common::start_with(
        Backend::Sqlite,
        Options {
            download_ttl,
            files: Some(files.clone()),
            ..Default::default()
        },
    )
    .await;
    // The same bucket and prefix, to look behind the server's back.
    Some((s, FileStore::s3(&files).unwrap()))
}

async fn stored(files: &FileStore, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = files.read(key, None).await.unwrap();
    while let Some(b) = stream.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    out
}

/// The object key of a task's result (the API shows only its name).
async fn result_key(s: &TestServer, tenant: i64, id: i64) -> String {
    s.store
        .get_task(tenant, id)
        .await
        .unwrap()
        .unwrap()
        .result
        .expect("a result")
}

async fn link(s: &TestServer, token: &str, id: i64) -> (String, jiff::Timestamp) {
    let (status, body) = s
        .call("GET", &format!("/tasks/{id}/download_url"), token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    (
        body["url"].as_str().unwrap().to_string(),
        body["expires_at"].as_str().unwrap().parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_download_from_the_stores_presigned_url() {
    let Some((s, files)) = start(Duration::from_secs(3)).await else {
        return;
    };
    let t = s.tenant("shop").await;
    // An upload and an import through S3: large enough for several parts
    // each way.
    let csv = synth_csv(&index::PRODUCTS, 200_000, 5);
    assert!(csv.len() > 11 << 20, "{} bytes", csv.len());
    let upload = s.upload(&t.key, "products.csv", csv.clone()).await;
    let upload_key = FileStore::upload_key(t.id, &upload);
    assert_eq!(stored(&files, &upload_key).await, csv);
    let task = s
        .create(&t.key, json!({ "target": { "action": "import", "import_index": "products", "upload_id": upload } }))
        .await;
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 120).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(
        done["logs"].as_array().unwrap().last().unwrap()["success"],
        200_000,
        "{done}"
    );

    let task = s
        .create(&t.key, json!({ "target": { "action": "export", "export_index": "products", "export_format": "csv" } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    let done = s.wait(&t.key, id, 120).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    // Nothing went to the server's own directory.
    assert!(!s.dir.path().join("files").exists());

    let (url, expires_at) = link(&s, &t.key, id).await;
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    assert!(url.starts_with(&format!("{endpoint}/")), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=3&"), "{url}");
    let ttl = expires_at.as_second() - jiff::Timestamp::now().as_second();
    assert!((2..=3).contains(&ttl), "expires in {ttl}s");

    // The store serves the result itself, whole and by range, without any
    // credential of ours.
    let key = result_key(&s, t.id, id).await;
    let file = stored(&files, &key).await;
    assert!(file.len() > 5 << 20, "{} bytes", file.len());
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.headers()["content-length"],
        file.len().to_string().as_str()
    );
    let body = got.bytes().await.unwrap();
    assert!(body == file, "{} bytes of {}", body.len(), file.len());
    assert_eq!(
        std::str::from_utf8(&body).unwrap().lines().count(),
        200_001,
        "a header and every row"
    );
    let part = s
        .http
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), file[10..20]);

    // A tampered link is the store's to refuse.
    let sig_at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if url.as_bytes()[sig_at] == b'0' {
        "1"
    } else {
        "0"
    };
    let tampered = [
        format!("{}{flipped}{}", &url[..sig_at], &url[sig_at + 1..]),
        url.replace("X-Amz-Expires=3&", "X-Amz-Expires=3600&"),
        url.replace(
            &format!("/results/{}/{id}/", t.id),
            &format!("/results/{}/{}/", t.id, id + 1),
        ),
        url.replace(&key, &upload_key),
        url.split('?').next().unwrap().to_string(),
    ];
    for u in tampered {
        let status = s.http.get(&u).send().await.unwrap().status();
        assert_eq!(status, 403, "{u}");
    }
    // After its lifetime the store refuses the link too.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(s.http.get(&url).send().await.unwrap().status(), 403);
    // A fresh one works again.
    let (again, _) = link(&s, &t.key, id).await;
    assert_eq!(s.http.get(&again).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// `profile_import` from an upload on S3; its failed-rows file is a result
/// on S3 like any other, and downloads the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_imports_read_uploads_and_write_failed_rows_on_s3() {
    let Some((s, files)) = start(Duration::from_secs(900)).await else {
        return;
    };
    let t = s.tenant("crm").await;
    let csv = "user_id,email\nu1,a@example.com\n,nobody@example.com\nu3,c@example.com\n";
    let upload = s
        .upload(&t.key, "profiles.csv", csv.as_bytes().to_vec())
        .await;
    let task = s
        .create(
            &t.key,
            json!({ "identifier": "profile_import", "target": { "upload_id": upload } }),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    let done = s.wait(&t.key, id, 60).await;
    // It ran; one row had no identifier, the others were applied.
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    let last: &Value = done["logs"].as_array().unwrap().last().unwrap();
    assert_eq!(last["success"], 2, "{done}");
    assert!(
        done["result"].as_str().unwrap().starts_with("failed-rows-"),
        "{done}"
    );
    let key = result_key(&s, t.id, id).await;
    let file = stored(&files, &key).await;
    let (url, _) = link(&s, &t.key, id).await;
    let body = reqwest::get(&url).await.unwrap();
    assert_eq!(body.status(), 200);
    let body = body.bytes().await.unwrap();
    assert_eq!(body, file);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains("nobody@example.com"), "{text}");
    assert_eq!(
        text.lines().count(),
        2,
        "a header and the one failed row: {text}"
    );

    // The imported profiles export as they went in.
    let task = s
        .create(&t.key, json!({ "target": { "action": "export", "export_index": "users", "export_format": "json" } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    assert_eq!(s.wait(&t.key, id, 60).await["state"]["code"], "DONE");
    let users: Vec<Value> = serde_json::from_slice(&s.download(&t.key, id).await).unwrap();
    let mut ids: Vec<&str> = users
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["u1", "u3"]);
    s.stop().await;
}

/// A server given an unreachable bucket refuses to start, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_fails_at_start_up() {
    if common::s3_url().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = datask::app::open_files(dir.path(), Some("s3://no-such-bucket-here/p"))
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("reaching the file store s3://no-such-bucket-here/p"),
        "{e:#}"
    );
}
