//! Result and upload files behind `object_store`: a local directory by
//! default, or an S3-compatible bucket. Writers publish atomically: a local
//! write goes to a staging file renamed on completion, an S3 write is a
//! multipart upload that becomes visible only when completed, so nothing
//! half-written is ever visible.

use std::ops::Range;
use std::path::Path as FsPath;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::{Method, Signer};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file not found")]
    NotFound,
    #[error("the requested range is not satisfiable")]
    BadRange,
    #[error("file store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("file store: {0}")]
    Store(#[source] object_store::Error),
    #[error("file store i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<object_store::Error> for FileError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => FileError::NotFound,
            e => FileError::Store(e),
        }
    }
}

const LOCAL_PART_SIZE: usize = 1 << 20;
/// S3 refuses parts under 5 MiB (all but the last). At most 10,000 parts
/// per upload caps an object at about 48 GiB, far above the upload limit.
const S3_PART_SIZE: usize = 5 << 20;

#[derive(Clone)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
    /// The store's own URL signer; None for a local directory, whose links
    /// the API signs and serves itself.
    signer: Option<Arc<dyn Signer>>,
    /// Bytes a writer gathers before it hands them on as one part.
    part_size: usize,
    /// The directory of a local store: where a killed writer's staging
    /// files stay behind until `sweep_staging`.
    local_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("inner", &self.inner)
            .field("presigns", &self.signer.is_some())
            .finish()
    }
}

impl FileStore {
    /// A directory on this machine (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, FileError> {
        std::fs::create_dir_all(dir)?;
        // fsync at publish: a result the database calls DONE must survive a
        // power cut, not only a kill (one sync per file, not per part).
        // Cleanup drops the directories of deleted runs.
        let fs = LocalFileSystem::new_with_prefix(dir)?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(FileStore {
            inner: Arc::new(fs),
            signer: None,
            // A local part is one write at an offset of the staging file:
            // small parts cost nothing in speed and keep a writer's memory
            // small (peak of a 3M-row upload and import: 110 → 96 MB against
            // 8 MiB parts).
            part_size: LOCAL_PART_SIZE,
            local_dir: Some(dir.to_path_buf()),
        })
    }

    /// Deletes the staging files (`name#n`, object_store's) of local writes
    /// that stopped changing more than `idle` ago: what a killed process
    /// was writing. They were never published and nothing names them; a
    /// live writer touches its file with every part. Answers how many went.
    /// An S3 bucket's unfinished multipart uploads are the bucket's
    /// lifecycle rule's to abort (README).
    pub async fn sweep_staging(&self, idle: Duration) -> Result<usize, FileError> {
        let Some(dir) = self.local_dir.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || sweep_dir(&dir, idle))
            .await
            .map_err(|e| FileError::Io(std::io::Error::other(e)))?
    }

    /// An S3-compatible bucket, `s3://bucket[/prefix]`, every key under the
    /// prefix. Endpoint, region and credentials come from the usual `AWS_*`
    /// environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …). Nothing is contacted
    /// here; `check` does that.
    pub fn s3(url: &str) -> Result<Self, FileError> {
        let bad = |reason| FileError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing"));
        }
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        // The prefix applies to signed URLs too: PrefixStore signs the full key.
        let store = Arc::new(PrefixStore::new(s3, Path::from(prefix)));
        Ok(FileStore {
            inner: store.clone(),
            signer: Some(store),
            part_size: S3_PART_SIZE,
            local_dir: None,
        })
    }

    /// Fails unless the store answers: a wrong bucket, endpoint or
    /// credential is reported at start-up rather than at the first upload.
    pub async fn check(&self) -> Result<(), FileError> {
        self.inner.list_with_delimiter(None).await?;
        Ok(())
    }

    /// Key of an upload's bytes.
    pub fn upload_key(tenant: i64, upload_id: &str) -> String {
        format!("uploads/{tenant}/{upload_id}")
    }

    /// Key of a run's result: the fence makes each attempt's file distinct,
    /// so a worker that lost its lease can never overwrite the winner's.
    pub fn result_key(tenant: i64, task: i64, fence: i64, name: &str) -> String {
        format!("results/{tenant}/{task}/{fence}/{name}")
    }

    /// Prefix of every file any run of a task wrote.
    pub fn task_prefix(tenant: i64, task: i64) -> String {
        format!("results/{tenant}/{task}")
    }

    /// Deletes every file of a task (all its runs): after the task is deleted.
    pub async fn delete_task_files(&self, tenant: i64, task: i64) -> Result<usize, FileError> {
        self.delete_under(&Self::task_prefix(tenant, task), |_| true)
            .await
    }

    /// Deletes the files of a task's earlier runs, keeping those of `fence`
    /// and any later run (which may be writing now): a task's `result` only
    /// ever names its last run's file, so the rest are unreachable.
    pub async fn delete_earlier_runs(
        &self,
        tenant: i64,
        task: i64,
        fence: i64,
    ) -> Result<usize, FileError> {
        self.delete_under(&Self::task_prefix(tenant, task), |rest| {
            rest.split('/')
                .next()
                .and_then(|f| f.parse::<i64>().ok())
                .is_some_and(|f| f < fence)
        })
        .await
    }

    /// Deletes the files under `prefix` whose path after it `doomed` picks.
    async fn delete_under(
        &self,
        prefix: &str,
        doomed: impl Fn(&str) -> bool,
    ) -> Result<usize, FileError> {
        let base = Path::from(prefix);
        let listed: Vec<_> = match self.inner.list(Some(&base)).try_collect().await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let start = prefix.len() + 1;
        let locations: Vec<Path> = listed
            .into_iter()
            .map(|m| m.location)
            .filter(|l| l.as_ref().get(start..).is_some_and(&doomed))
            .collect();
        let count = locations.len();
        if count > 0 {
            self.inner
                .delete_stream(futures::stream::iter(locations.into_iter().map(Ok)).boxed())
                .try_collect::<Vec<_>>()
                .await?;
        }
        Ok(count)
    }

    /// A buffered writer; the object appears only when `shutdown` completes.
    /// Past one part's size it writes in parts; at most two in flight, so a
    /// writer faster than the disk (or the network) waits instead of
    /// queueing parts in memory.
    pub fn writer(&self, key: &str) -> FileWriter {
        FileWriter {
            inner: Some(
                BufWriter::with_capacity(self.inner.clone(), Path::from(key), self.part_size)
                    .with_max_concurrency(2),
            ),
            shutting_down: false,
        }
    }

    /// The store's own presigned GET URL of `key`, valid for `ttl`; None
    /// for a local directory.
    pub async fn presigned_get(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<String>, FileError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(Method::GET, &Path::from(key), ttl)
            .await?;
        Ok(Some(url.to_string()))
    }

    pub async fn size(&self, key: &str) -> Result<u64, FileError> {
        Ok(self.inner.head(&Path::from(key)).await?.size)
    }

    /// The bytes of `key`, all or a range, as a stream.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, FileError>>, FileError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = self.inner.get_opts(&Path::from(key), options).await?;
        Ok(got
            .into_stream()
            .map(|r| r.map_err(FileError::from))
            .boxed())
    }

    pub async fn delete(&self, key: &str) -> Result<(), FileError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A file being written: `write_all` then `shutdown` publishes it, `abort`
/// (or dropping it unfinished) throws it away.
///
/// It wraps object_store's `BufWriter` for two reasons: a dropped
/// `BufWriter` leaves an S3 multipart upload open (its parts stay stored,
/// invisible, until a lifecycle rule removes them), and its `abort` panics
/// once `shutdown` has begun, which is exactly when a caller that saw
/// `shutdown` fail would call it.
pub struct FileWriter {
    /// None once published or aborted.
    inner: Option<BufWriter>,
    /// `shutdown` has begun: from then on the object is being published and
    /// object_store cleans up itself if that fails.
    shutting_down: bool,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("open", &self.inner.is_some())
            .field("shutting_down", &self.shutting_down)
            .finish()
    }
}

impl FileWriter {
    /// Throws the file away, with any parts already sent. A no-op once
    /// `shutdown` has begun: a failed completion aborts its own upload.
    pub async fn abort(&mut self) -> Result<(), FileError> {
        if self.shutting_down {
            return Ok(());
        }
        let Some(mut w) = self.inner.take() else {
            return Ok(());
        };
        abort(&mut w).await
    }
}

/// A `BufWriter` still creating its multipart upload would abort nothing
/// and leave the upload behind once created: flushing first finishes that.
async fn abort(w: &mut BufWriter) -> Result<(), FileError> {
    w.flush().await?;
    w.abort().await?;
    Ok(())
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.shutting_down {
            return;
        }
        // Dropped unfinished (an error path that skipped `abort`, or a task
        // cancelled mid-write): abort in the background, as object_store's
        // local upload does with its staging file.
        if let Some(mut w) = self.inner.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = abort(&mut w).await {
                    tracing::warn!("aborting an unfinished file: {e}");
                }
            });
        }
    }
}

impl AsyncWrite for FileWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.inner.as_mut() {
            Some(w) => Pin::new(w).poll_write(cx, buf),
            None => Poll::Ready(Err(finished())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.inner.as_mut() {
            Some(w) => Pin::new(w).poll_flush(cx),
            None => Poll::Ready(Err(finished())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shutting_down = true;
        let Some(w) = self.inner.as_mut() else {
            return Poll::Ready(Err(finished()));
        };
        let done = std::task::ready!(Pin::new(w).poll_shutdown(cx));
        self.inner = None;
        Poll::Ready(done)
    }
}

fn finished() -> std::io::Error {
    std::io::Error::other("the file was already published or aborted")
}

/// `sweep_staging` over one directory tree (it does not follow links).
fn sweep_dir(dir: &FsPath, idle: Duration) -> Result<usize, FileError> {
    let mut deleted = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let is_staging = name
                .to_str()
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !kind.is_file() || !is_staging {
                continue;
            }
            let idle_for = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
            if idle_for >= idle {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed writer's staging file goes once it has been idle long
    /// enough; a fresh one (a live writer's) and published files stay.
    #[tokio::test]
    async fn stale_staging_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::local(dir.path()).unwrap();
        let run = dir.path().join("results/1/7/3");
        std::fs::create_dir_all(&run).unwrap();
        let stale = run.join("export.csv#2");
        let fresh = run.join("other.csv#1");
        let published = run.join("export.csv");
        let odd = run.join("notes#draft");
        for p in [&stale, &fresh, &published, &odd] {
            std::fs::write(p, b"x").unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        for p in [&stale, &published, &odd] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        assert_eq!(
            files
                .sweep_staging(Duration::from_secs(3600))
                .await
                .unwrap(),
            1
        );
        assert!(!stale.exists());
        assert!(fresh.exists() && published.exists() && odd.exists());
        assert_eq!(
            files
                .sweep_staging(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
    }

    /// Several parts' worth, written in pieces that straddle part bounds:
    /// nothing is visible until `shutdown`, then all of it, in order; an
    /// aborted writer leaves nothing.
    #[tokio::test]
    async fn a_file_of_many_parts_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::local(dir.path()).unwrap();
        let data: Vec<u8> = (0..LOCAL_PART_SIZE * 7 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = files.writer("results/1/2/3/a.csv");
        for piece in data.chunks(300_007) {
            w.write_all(piece).await.unwrap();
        }
        assert!(matches!(
            files.size("results/1/2/3/a.csv").await,
            Err(FileError::NotFound)
        ));
        w.shutdown().await.unwrap();
        let mut read = Vec::new();
        let mut stream = files.read("results/1/2/3/a.csv", None).await.unwrap();
        while let Some(b) = stream.next().await {
            read.extend_from_slice(&b.unwrap());
        }
        assert!(read == data, "{} bytes read of {}", read.len(), data.len());

        let mut w = files.writer("results/1/2/3/b.csv");
        w.write_all(&data).await.unwrap();
        w.abort().await.unwrap();
        assert!(matches!(
            files.size("results/1/2/3/b.csv").await,
            Err(FileError::NotFound)
        ));
        // No staging file of either is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("results/1/2/3"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["a.csv"]);
    }

    /// A caller that saw `shutdown` fail aborts; object_store's own writer
    /// panics there ("Already shut down"), ours does nothing.
    #[tokio::test]
    async fn abort_after_a_failed_shutdown_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::local(dir.path()).unwrap();
        let mut w = files.writer("a");
        w.write_all(b"x").await.unwrap();
        w.shutdown().await.unwrap();
        // "a" is a file, so nothing can be created under it.
        let mut w = files.writer("a/b");
        w.write_all(b"y").await.unwrap();
        assert!(w.shutdown().await.is_err());
        w.abort().await.unwrap();
        assert!(matches!(
            files.size("a/b").await,
            Err(FileError::NotFound) | Err(FileError::Store(_))
        ));
    }
}
