//! The PostgreSQL store, for many nodes: claims under `FOR UPDATE SKIP
//! LOCKED` behind a transaction-scoped advisory lock (so per-tenant limits
//! hold across nodes), wake-ups by LISTEN/NOTIFY, bulk upserts by UNNEST.

mod data;
mod tasks;
pub mod testing;

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
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(backend)?;
        let work = Arc::new(Notify::new());
        // Subscribe before anything is claimed so no wake-up is lost; the
        // worker loop polls as a fallback should the listener drop.
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        listener.listen(WORK_CHANNEL).await.map_err(backend)?;
        let waker = Arc::downgrade(&work);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => match waker.upgrade() {
                        Some(w) => w.notify_one(),
                        None => return,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; retrying");
                        if waker.upgrade().is_none() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(PgStore { pool, work })
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
