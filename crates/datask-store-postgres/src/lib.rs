//! The PostgreSQL store, for many nodes: claims under `FOR UPDATE SKIP
//! LOCKED` behind a transaction-scoped advisory lock (so per-tenant limits
//! hold across nodes), wake-ups by LISTEN/NOTIFY, bulk upserts by UNNEST.

mod customer;
mod data;
mod tasks;
pub mod testing;
mod time;

use std::sync::Arc;
use std::time::Duration;

use datask_core::store::{StoreError, StoreResult};
use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::Notify;

/// The channel every node listens on for new due work.
const WORK_CHANNEL: &str = "datask_work";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    work: Arc<Notify>,
    /// Stops the LISTEN task (and frees its connection) when the last clone
    /// of the store goes.
    _listener: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::backend(e)
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        // Exports are single long streaming statements; sqlx's slow-statement
        // warnings would flag every one of them.
        let options = PgConnectOptions::from_str(url)
            .map_err(backend)?
            .disable_statement_logging();
        // sqlx pings a connection on its way back into the pool and, by
        // default, again on its way out: a second round trip for every
        // statement (under load, most of a `GET /tasks/{id}`). A connection
        // idle for less than a second passed that release ping just now, so
        // only one idle for longer is checked before it is handed out.
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= Duration::from_secs(1) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(backend)?;
        let work = Arc::new(Notify::new());
        // Subscribe before anything is claimed so no wake-up is lost; the
        // worker loop polls as a fallback.
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        listener.listen(WORK_CHANNEL).await.map_err(backend)?;
        let waker = work.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    // notify_one keeps a permit when nobody waits yet.
                    Ok(Some(_)) => waker.notify_one(),
                    // The connection dropped and was re-established:
                    // notifications sent meanwhile are gone, so look.
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost and re-established");
                        waker.notify_one();
                    }
                    Err(sqlx::Error::PoolClosed) => return,
                    // Reconnecting failed; the next try_recv tries again.
                    // Meanwhile the workers' polling finds the work.
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        waker.notify_one();
                    }
                }
            }
        });
        Ok(PgStore {
            pool,
            work,
            _listener: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    /// Applies the migrations in `migrations/` not yet applied.
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .map_err(StoreError::backend)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
