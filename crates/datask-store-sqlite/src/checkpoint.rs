//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs on the connection that commits, once
//! the WAL passes its threshold: here the one writer thread, which every
//! write waits for (`perf`: ~7 % of that thread in the burn-down). A
//! `PASSIVE` checkpoint from another connection copies the same pages back
//! into the database file beside the writer, without taking its lock, on
//! the second core. The writer keeps a much higher automatic threshold as
//! a backstop, should this thread fall behind.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

/// How often the WAL is copied back. Writes at the burn-down's pace fill a
/// few MB of WAL in this time, about SQLite's default threshold (1000 pages).
const INTERVAL: Duration = Duration::from_millis(100);

/// WAL pages after which the writer checkpoints itself (SQLite's default is
/// 1000): only reached when this thread falls behind.
pub(crate) const WRITER_BACKSTOP_PAGES: i64 = 10_000;

/// Stops the thread when dropped.
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(conn, stopped))?;
        Ok(Checkpointer { _stop: stop })
    }
}

fn run(conn: Connection, stopped: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        // Answers (busy, frames in the WAL, frames copied); a busy or
        // partial checkpoint is simply taken up again next time.
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed; trying again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages committed to the WAL reach the database file with no
    /// checkpoint by the writing connection.
    #[test]
    fn the_wal_is_copied_back_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (v TEXT)",
            )
            .unwrap();
        let _checkpointer = Checkpointer::start(Connection::open(&path).unwrap()).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        writer
            .execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO t SELECT hex(randomblob(500)) FROM n",
                [],
            )
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() <= before + 1_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was not checkpointed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
