//! The conformance suite every store backend runs (see README.md).

pub mod cases;

/// Expands to one test per case; `$factory` is an async expression that
/// yields `Some` fresh, migrated, empty `Arc<dyn Store>`, or `None` to skip
/// (a backend whose server this run does not have).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            tenants_and_credentials, insert_get_and_isolation, idempotency_keys, list_filters_and_cursor,
            update_and_versions, claim_order_due_and_limit, claim_honours_tenant_concurrency,
            concurrent_claimers_never_share, fencing_after_reclaim, heartbeat_and_cancel,
            complete_and_reschedule, retry_release_and_reclaim_to_fatal, execute_and_delete,
            next_due_and_wake_ups, leadership, uploads, expired_uploads_spare_pending_tasks,
            import_upserts_and_duplicates,
            rejects_summary_and_paging, dry_run_and_counts, export_every_type_in_key_order,
            segment_filters, profile_segments_and_erasure, saved_segments,
            complete_many_and_running_counts, insert_tasks_in_bulk, complete_and_claim_in_one_trip);
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = $factory.await else { return };
                $crate::cases::$case(store).await;
            }
        )*
    };
}
