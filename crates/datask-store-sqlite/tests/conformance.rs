//! The shared conformance suite on a fresh SQLite file per case.

use std::sync::Arc;

use datask_core::Store;
use datask_store_sqlite::SqliteStore;

async fn fresh() -> Option<Arc<dyn Store>> {
    // The directory lives as long as the test process.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let store = SqliteStore::open(dir.path().join("datask.db"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Some(Arc::new(store))
}

datask_store::conformance_tests!(fresh());
