//! Result and upload files behind `object_store`: a local directory by
//! default. Writers publish atomically: a local write goes to a staging
//! file renamed on completion, so nothing half-written is ever visible.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file not found")]
    NotFound,
    #[error("the requested range is not satisfiable")]
    BadRange,
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

#[derive(Clone, Debug)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
    /// Bytes a writer gathers before it hands them on as one part.
    part_size: usize,
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
            // A local part is one write at an offset of the staging file:
            // small parts cost nothing in speed and keep a writer's memory
            // small (peak of a 3M-row upload and import: 110 → 96 MB against
            // 8 MiB parts). An S3-compatible store will need ≥ 5 MiB.
            part_size: LOCAL_PART_SIZE,
        })
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
    pub fn writer(&self, key: &str) -> BufWriter {
        BufWriter::with_capacity(self.inner.clone(), Path::from(key), self.part_size)
            .with_max_concurrency(2)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

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
}
