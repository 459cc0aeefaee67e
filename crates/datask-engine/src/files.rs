//! Result and upload files behind `object_store`: a local directory by
//! default. Writers publish atomically: a local write goes to a staging
//! file renamed on completion, so nothing half-written is ever visible.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
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

#[derive(Clone, Debug)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
}

impl FileStore {
    /// A directory on this machine (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, FileError> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir)?;
        Ok(FileStore {
            inner: Arc::new(fs),
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

    /// A buffered writer; the object appears only when `shutdown` completes.
    /// Past 8 MiB it uploads in parts; at most two in flight, so a writer
    /// faster than the disk (or the network) waits instead of queueing
    /// parts in memory.
    pub fn writer(&self, key: &str) -> BufWriter {
        BufWriter::with_capacity(self.inner.clone(), Path::from(key), 8 << 20)
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
