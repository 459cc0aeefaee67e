//! The file store on a real S3-compatible server (s3s-fs, started by
//! `scripts/test`): multipart files appear whole or not at all, aborted and
//! dropped writers leave no upload behind, ranges, deletes and prefixes.

use std::time::Duration;

use datask_engine::FileStore;
use datask_engine::files::FileError;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;

/// `s3://bucket` of this test run, or None (with a note) when the run has
/// no S3 server and does not require one.
fn s3_url() -> Option<String> {
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

/// A store under a prefix of its own, so tests running at once (and runs
/// against a long-lived bucket) never see each other's keys.
fn fresh(bucket: &str) -> (FileStore, String) {
    let prefix = format!("engine-test-{}", uuid::Uuid::new_v4().simple());
    let files = FileStore::s3(&format!("{bucket}/{prefix}")).unwrap();
    (files, prefix)
}

/// Multipart uploads s3s-fs holds open: it keeps them as `.upload*` files
/// in its root. None when the root is unknown (another S3 server).
fn open_uploads() -> Option<Vec<String>> {
    let dir = std::env::var("DATASK_TEST_S3_DIR").ok()?;
    Some(
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect(),
    )
}

/// The open-upload checks look at the whole server: tests that write
/// several parts take turns.
static MULTIPART: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn read_all(files: &FileStore, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = files.read(key, range).await.unwrap();
    while let Some(b) = stream.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    out
}

async fn assert_absent(files: &FileStore, key: &str) {
    let got = files.size(key).await;
    assert!(matches!(got, Err(FileError::NotFound)), "{key}: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_parts_appears_whole_or_not_at_all() {
    let Some(bucket) = s3_url() else { return };
    let _turn = MULTIPART.lock().await;
    let (files, prefix) = fresh(&bucket);
    files.check().await.unwrap();
    // Three full 5 MiB parts and a short last one, written in pieces that
    // straddle the part bounds.
    let data = pattern(MIB * 33 / 2);
    let key = "results/1/2/3/a.csv";
    let mut w = files.writer(key);
    for piece in data.chunks(700_001) {
        w.write_all(piece).await.unwrap();
    }
    assert_absent(&files, key).await;
    w.shutdown().await.unwrap();

    assert_eq!(files.size(key).await.unwrap(), data.len() as u64);
    let read = read_all(&files, key, None).await;
    assert!(read == data, "{} bytes read of {}", read.len(), data.len());
    // A range across the first part boundary.
    let range = (5 * MIB - 10) as u64..(5 * MIB + 10) as u64;
    let got = read_all(&files, key, Some(range.clone())).await;
    assert_eq!(got, data[range.start as usize..range.end as usize]);

    // The prefix is honoured: the bucket itself holds the key under it.
    let whole = FileStore::s3(&bucket).unwrap();
    assert_eq!(
        whole.size(&format!("{prefix}/{key}")).await.unwrap(),
        data.len() as u64
    );
    assert_absent(&whole, key).await;

    files.delete(key).await.unwrap();
    assert_absent(&files, key).await;
    // Deleting what is gone is not an error.
    files.delete(key).await.unwrap();
    if let Some(open) = open_uploads() {
        assert!(open.is_empty(), "uploads left open: {open:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_writer_leaves_nothing() {
    let Some(bucket) = s3_url() else { return };
    let _turn = MULTIPART.lock().await;
    let (files, _) = fresh(&bucket);
    let key = "results/1/2/3/b.csv";
    let mut w = files.writer(key);
    // Past one part: the multipart upload exists and holds parts.
    w.write_all(&pattern(12 * MIB)).await.unwrap();
    w.flush().await.unwrap();
    if let Some(open) = open_uploads() {
        assert!(!open.is_empty(), "the write should have opened an upload");
    }
    w.abort().await.unwrap();
    assert_absent(&files, key).await;
    if let Some(open) = open_uploads() {
        assert!(open.is_empty(), "uploads left open: {open:?}");
    }
    // Aborting twice, or after the fact, is harmless.
    w.abort().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_dropped_unfinished_aborts_its_upload() {
    let Some(bucket) = s3_url() else { return };
    let _turn = MULTIPART.lock().await;
    let (files, _) = fresh(&bucket);
    let key = "uploads/1/dropped";
    let mut w = files.writer(key);
    w.write_all(&pattern(11 * MIB)).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    // The abort runs in the background.
    if open_uploads().is_some() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !open_uploads().unwrap().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "uploads left open: {:?}",
                open_uploads()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_absent(&files, key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_one_put() {
    let Some(bucket) = s3_url() else { return };
    let (files, _) = fresh(&bucket);
    let key = "results/1/2/3/small.json";
    let mut w = files.writer(key);
    w.write_all(b"{\"a\": 1}\n").await.unwrap();
    assert_absent(&files, key).await;
    w.shutdown().await.unwrap();
    assert_eq!(read_all(&files, key, None).await, b"{\"a\": 1}\n");
    assert_eq!(read_all(&files, key, Some(1..5)).await, b"\"a\":");
    // An aborted small writer never sent anything.
    let mut w = files.writer("results/1/2/3/never.json");
    w.write_all(b"x").await.unwrap();
    w.abort().await.unwrap();
    assert_absent(&files, "results/1/2/3/never.json").await;
    // A missing object is NotFound, for reads too.
    assert!(matches!(
        files.read("results/nope", None).await,
        Err(FileError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_are_the_stores_own() {
    let Some(bucket) = s3_url() else { return };
    let (files, prefix) = fresh(&bucket);
    let url = files
        .presigned_get("results/1/2/3/a.csv", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("S3 presigns");
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    assert!(url.starts_with(&endpoint), "{url}");
    assert!(
        url.contains(&format!("/{prefix}/results/1/2/3/a.csv?")),
        "{url}"
    );
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=60"), "{url}");

    // A local directory has no URLs of its own: the API signs those.
    let dir = tempfile::tempdir().unwrap();
    let local = FileStore::local(dir.path()).unwrap();
    assert_eq!(
        local
            .presigned_get("results/1/2/3/a.csv", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
}

#[test]
fn a_bad_url_is_refused_with_its_reason() {
    for (url, reason) in [
        ("bucket", "expected s3://bucket[/prefix]"),
        ("https://bucket", "expected s3://bucket[/prefix]"),
        ("s3://", "the bucket name is missing"),
        ("s3:///prefix", "the bucket name is missing"),
    ] {
        match FileStore::s3(url) {
            Err(FileError::BadUrl { reason: r, .. }) => assert_eq!(r, reason, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
}
