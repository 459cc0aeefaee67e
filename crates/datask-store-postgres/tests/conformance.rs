//! The shared conformance suite on a fresh PostgreSQL database per case.

use std::sync::Arc;

use datask_core::Store;

async fn fresh() -> Option<Arc<dyn Store>> {
    match std::env::var("DATASK_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(Arc::new(
            datask_store_postgres::testing::fresh_store(&url).await,
        )),
        _ => {
            assert_ne!(
                std::env::var("DATASK_REQUIRE_PG").as_deref(),
                Ok("1"),
                "DATASK_TEST_PG_URL is required"
            );
            eprintln!("skipped: DATASK_TEST_PG_URL not set");
            None
        }
    }
}

datask_store::conformance_tests!(fresh());
