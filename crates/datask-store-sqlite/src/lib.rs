//! The embedded SQLite store: one file in WAL mode.
//!
//! SQLite allows one writer at a time, so every write goes through one
//! connection (no `SQLITE_BUSY` storms), which commits the writes queued
//! meanwhile together (`writer`); reads use a small pool of their own
//! connections. Both run on tokio's blocking pool.
//! In-process wake-ups replace PostgreSQL's LISTEN/NOTIFY.

mod checkpoint;
mod customer;
mod data;
mod tasks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datask_core::store::{StoreError, StoreResult};
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Notify;

const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/0001_init.sql")),
    ("0002_users", include_str!("../migrations/0002_users.sql")),
    (
        "0003_settings",
        include_str!("../migrations/0003_settings.sql"),
    ),
    (
        "0004_customer_data",
        include_str!("../migrations/0004_customer_data.sql"),
    ),
    (
        "0005_installs",
        include_str!("../migrations/0005_installs.sql"),
    ),
    (
        "0006_running_index",
        include_str!("../migrations/0006_running_index.sql"),
    ),
];
const READERS: usize = 4;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Writer,
    _checkpointer: checkpoint::Checkpointer,
    readers: Mutex<Vec<Connection>>,
    work: Notify,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

/// Page cache per connection, in KiB. Bounded so that memory does not
/// grow with the database: the writer's holds the hot end of the tables and
/// key indexes an import appends to; readers stream, so theirs stays small.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
const READER_CACHE_KIB: i64 = 4 * 1024;

fn open_connection(path: &Path, cache_kib: i64) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL lets readers run beside the writer; NORMAL sync is durable across
    // process crashes (only an OS crash may lose the last transactions).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        let (writer, checkpointer) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> rusqlite::Result<_> {
                let writer = open_connection(&path, WRITER_CACHE_KIB)?;
                writer.pragma_update(
                    None,
                    "wal_autocheckpoint",
                    checkpoint::WRITER_BACKSTOP_PAGES,
                )?;
                Ok((writer, open_connection(&path, READER_CACHE_KIB)?))
            }
        })
        .await
        .map_err(StoreError::backend)?
        .map_err(backend)?;
        let writer = writer::Writer::start(writer).map_err(StoreError::backend)?;
        let checkpointer =
            checkpoint::Checkpointer::start(checkpointer).map_err(StoreError::backend)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer,
                _checkpointer: checkpointer,
                readers: Mutex::new(Vec::new()),
                work: Notify::new(),
            }),
        })
    }

    /// Applies the migrations not yet applied, tracked in `PRAGMA user_version`.
    pub async fn migrate(&self) -> StoreResult<()> {
        self.write(|conn| {
            let applied: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            for (i, (_name, sql)) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
                let tx = conn.savepoint()?;
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", i as i64 + 1)?;
                tx.commit()?;
            }
            Ok(())
        })
        .await
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer connection, off the async runtime, inside a
    /// transaction shared with other writes (`f` uses savepoints, never
    /// `transaction()`); answers once that transaction committed.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> StoreResult<T> {
        self.inner
            .writer
            .write(move |conn| f(conn).map_err(StoreError::from))
            .await
    }

    /// Runs `f` on a reader connection, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let out = f(&conn);
            inner.return_reader(conn);
            out.map_err(StoreError::from)
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// Runs a point lookup by key on a reader connection right here, on the
    /// async worker: it reads a few cached pages, in less time than the
    /// hand-off to the blocking pool and back (two thread wake-ups) took,
    /// which was most of a `GET /tasks/{id}`. Scans stay on `read`.
    fn lookup<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Failure>) -> StoreResult<T> {
        let conn = self.inner.take_reader()?;
        let out = f(&conn);
        self.inner.return_reader(conn);
        out.map_err(StoreError::from)
    }

    fn wake_workers(&self) {
        self.inner.work.notify_one();
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, Failure> {
        if let Some(c) = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        Ok(open_connection(&self.path, READER_CACHE_KIB)?)
    }

    fn return_reader(&self, conn: Connection) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if readers.len() < READERS {
            readers.push(conn);
        }
    }
}

/// What can go wrong inside a blocking closure: a database error or a
/// store-level outcome (lease lost, conflict, …).
enum Failure {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Store(StoreError::backend(e))
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Sql(e) => backend(e),
            Failure::Store(e) => e,
        }
    }
}

fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn from_micros(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::MAX)
}

fn from_micros_opt(us: Option<i64>) -> Option<Timestamp> {
    us.map(from_micros)
}
