//! The one writer connection, on a thread of its own, with group commit.
//!
//! SQLite allows one writer at a time, and in WAL mode most of a small
//! write's cost is its commit (the WAL frames of every page it touched, and
//! now and then a checkpoint). So the writer thread takes every write queued
//! while it was busy and runs them in one transaction, each inside a
//! savepoint of its own: a write that fails is rolled back alone and the
//! others stand. Nobody hears back before the commit that made their write
//! durable; if that commit fails, everyone in the group gets the error.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use datask_core::store::{StoreError, StoreResult};
use rusqlite::Connection;

/// Most writes committed together.
const MAX_GROUP: usize = 256;

/// How long the thread stays awake for the next write before it sleeps:
/// waking a sleeping thread costs more than a lone write's SQL.
const STAY_AWAKE: Duration = Duration::from_micros(100);

/// Delivers a write's outcome once the group's commit is known: `None` when
/// it committed, the commit's error otherwise.
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// A queued write: runs on the connection, says whether it succeeded, and
/// hands back how to answer its caller.
type Job = Box<dyn FnOnce(&mut Connection) -> (bool, Reply) + Send>;

#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread; it ends when every `Writer` is dropped.
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, jobs))?;
        Ok(Writer { queue })
    }

    /// Runs `f` in the next group and answers after its commit.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let out = f(conn);
            let ok = out.is_ok();
            let reply: Reply = Box::new(move |commit_error: Option<&str>| {
                let answer = match commit_error {
                    None => out,
                    Some(e) => Err(StoreError::Backend(
                        format!("the write was not committed: {e}").into(),
                    )),
                };
                let _ = tx.send(answer);
            });
            (ok, reply)
        });
        self.queue
            .send(job)
            .map_err(|_| StoreError::Backend("the SQLite writer thread stopped".into()))?;
        rx.await.map_err(|_| {
            StoreError::Backend("the write was dropped: it panicked (see the log)".into())
        })?
    }
}

fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Some(first) = next(&jobs) {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        run_group(&mut conn, group);
    }
}

/// The next write: spins briefly, then sleeps until one comes.
fn next(jobs: &mpsc::Receiver<Job>) -> Option<Job> {
    let since = Instant::now();
    while since.elapsed() < STAY_AWAKE {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    jobs.recv().ok()
}

fn run_group(conn: &mut Connection, mut group: Vec<Job>) {
    if group.len() == 1 {
        // Alone, a write's own savepoint is its transaction.
        let (_, reply) = run_job(conn, group.remove(0));
        reply(None);
        return;
    }
    let mut pending: Vec<Reply> = Vec::with_capacity(group.len());
    let mut open = begin(conn);
    for job in group {
        if !open {
            // No transaction to share (BEGIN failed, or SQLite rolled one
            // back): the job runs on its own, its savepoints its transaction.
            let (_, reply) = run_job(conn, job);
            reply(None);
            open = begin(conn);
            continue;
        }
        let _ = control(conn, "SAVEPOINT job");
        let (ok, reply) = run_job(conn, job);
        if conn.is_autocommit() {
            // Some errors (disk full, I/O) make SQLite roll back the whole
            // transaction: the writes before this one are gone too.
            fail(&mut pending, "the transaction was rolled back");
            reply(None);
            open = begin(conn);
            continue;
        }
        let end = if ok {
            control(conn, "RELEASE job")
        } else {
            control(conn, "ROLLBACK TO job").and_then(|()| control(conn, "RELEASE job"))
        };
        if let Err(e) = end {
            tracing::warn!(error = %e, "could not end a write's savepoint");
        }
        pending.push(reply);
    }
    if open {
        match control(conn, "COMMIT") {
            Ok(()) => pending.drain(..).for_each(|reply| reply(None)),
            Err(e) => {
                let _ = control(conn, "ROLLBACK");
                fail(&mut pending, &e.to_string());
            }
        }
    }
}

/// Runs one write. A write that panics is a failed write (rolled back like
/// any other, its caller told it was dropped); the thread, and every write
/// after it, carry on.
fn run_job(conn: &mut Connection, job: Job) -> (bool, Reply) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
        Ok(done) => done,
        Err(_) => {
            tracing::error!("a write panicked; it is rolled back");
            (false, Box::new(|_| {}))
        }
    }
}

/// Starts a group's transaction; false when there is none to share.
fn begin(conn: &Connection) -> bool {
    match control(conn, "BEGIN IMMEDIATE") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not begin a write transaction");
            false
        }
    }
}

/// A transaction or savepoint statement, from the connection's statement
/// cache: `execute_batch` parsed it again every time, which `perf` put at
/// about 3 % of the writer thread's samples in the burn-down.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn fail(pending: &mut Vec<Reply>, why: &str) {
    pending.drain(..).for_each(|reply| reply(Some(why)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Writes queued behind a busy one run together; the one that fails and
    /// the one that panics are rolled back alone, the others commit and hear
    /// so, and the writer goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_leaves_its_group_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER)")
            .unwrap();
        let writer = Writer::start(conn).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        // The first write holds the connection until told to go on, so the
        // next three queue up and form one group.
        let busy = tokio::spawn({
            let w = writer.clone();
            async move {
                w.write(move |c| {
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    c.execute("INSERT INTO t VALUES (1)", [])
                        .map_err(StoreError::backend)?;
                    Ok(())
                })
                .await
            }
        });
        started_rx.recv().unwrap();
        let insert = |v: i64, fail: bool| {
            let w = writer.clone();
            tokio::spawn(async move {
                w.write(move |c| {
                    // No savepoint of its own: undoing it is the group's job.
                    c.execute("INSERT INTO t VALUES (?1)", [v])
                        .map_err(StoreError::backend)?;
                    if fail {
                        return Err(StoreError::Conflict(format!("write {v} refused")));
                    }
                    Ok(())
                })
                .await
            })
        };
        let (two, three, four) = (insert(2, false), insert(3, true), insert(4, false));
        let panics = tokio::spawn({
            let w = writer.clone();
            async move {
                w.write(|c| -> StoreResult<()> {
                    c.execute("INSERT INTO t VALUES (5)", [])
                        .map_err(StoreError::backend)?;
                    panic!("a bug in a write")
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        go_tx.send(()).unwrap();
        busy.await.unwrap().unwrap();
        two.await.unwrap().unwrap();
        assert!(matches!(
            three.await.unwrap(),
            Err(StoreError::Conflict(m)) if m == "write 3 refused"
        ));
        four.await.unwrap().unwrap();
        let dropped = panics.await.unwrap();
        assert!(
            matches!(dropped, Err(StoreError::Backend(_))),
            "{dropped:?}"
        );
        assert_eq!(count(&Connection::open(&path).unwrap()), vec![1, 2, 4]);
        // The thread lives on.
        insert(6, false).await.unwrap().unwrap();
        assert_eq!(count(&Connection::open(&path).unwrap()), vec![1, 2, 4, 6]);
    }
}
