//! PostgreSQL-specific checks beyond the shared conformance suite: the
//! schema against `datask_core::index`, the migration of old data, several
//! nodes on one database, and sizes the suite does not reach.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datask_core::index::{self, ColumnType, IndexDef, Value};
use datask_core::query::{Condition, Field, Op, Operand, Param, TaskQuery};
use datask_core::store::*;
use datask_core::task::{LogEntry, NewTask, TaskUpdate};
use datask_core::{Store, TaskState, Trigger};
use datask_store_postgres::PgStore;
use datask_store_postgres::testing::{fresh_database, fresh_store};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sqlx::Row;

/// The server's URL, or `None` to skip (a panic under DATASK_REQUIRE_PG=1).
fn pg_url() -> Option<String> {
    match std::env::var("DATASK_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
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

async fn store() -> Option<PgStore> {
    Some(fresh_store(&pg_url()?).await)
}

fn t0() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

async fn tenant(s: &PgStore, concurrency: i64) -> i64 {
    s.create_tenant(NewTenant {
        name: "t".into(),
        timezone: "UTC".into(),
        concurrency,
    })
    .await
    .unwrap()
    .id
}

fn new_task(tenant: i64, run_at: Timestamp) -> NewTask {
    NewTask {
        tenant_id: tenant,
        identifier: "export".into(),
        desc: "d".into(),
        trigger: Trigger::default(),
        target: json!({"action": "export"}).as_object().cloned().unwrap(),
        max_attempts: 3,
        priority: 10,
        run_at,
        idempotency_key: None,
    }
}

async fn insert(s: &PgStore, t: NewTask) -> i64 {
    s.insert_task(t, t0()).await.unwrap().task.id
}

async fn get(s: &PgStore, tenant: i64, id: i64) -> datask_core::Task {
    s.get_task(tenant, id).await.unwrap().unwrap()
}

const LEASE: Duration = Duration::from_secs(30);

async fn claim_one(s: &PgStore, now: Timestamp) -> ClaimedTask {
    let mut c = s.claim("w", 1, LEASE, now).await.unwrap();
    assert_eq!(c.len(), 1, "expected one claimable task");
    c.remove(0)
}

fn msgs(t: &datask_core::Task) -> Vec<String> {
    t.logs.iter().map(|l| l.msg.clone()).collect()
}

fn done(state: TaskState, now: Timestamp) -> Completion {
    Completion {
        state,
        errors: Default::default(),
        output: None,
        result: None,
        logs: vec![],
        reschedule: None,
        now,
    }
}

fn lease_lost<T: std::fmt::Debug>(r: StoreResult<T>) -> bool {
    matches!(r, Err(StoreError::LeaseLost(_)))
}

async fn exported(s: &PgStore, tenant: i64, idx: &'static IndexDef) -> (Vec<Vec<Value>>, usize) {
    let mut rows = vec![];
    let mut chunks = 0;
    let mut stream = s.export_rows(tenant, idx, None).await.unwrap();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(!chunk.is_empty() && chunk.len() <= 1000, "{}", chunk.len());
        chunks += 1;
        rows.extend(chunk);
    }
    (rows, chunks)
}

fn pg_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Text => "text",
        ColumnType::Integer => "bigint",
        ColumnType::Number => "double precision",
        ColumnType::Boolean => "boolean",
        ColumnType::Time => "timestamp with time zone",
        ColumnType::Json => "jsonb",
    }
}

#[tokio::test]
async fn schema_matches_the_index_definitions() {
    let Some(s) = store().await else { return };
    for idx in index::ALL {
        let cols: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text, collation_name::text
             FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
        )
        .bind(idx.table)
        .fetch_all(s.pool())
        .await
        .unwrap();
        let mut want: Vec<(String, String)> = vec![("tenant_id".into(), "bigint".into())];
        want.extend(
            idx.columns
                .iter()
                .map(|c| (c.name.to_string(), pg_type(c.ty).to_string())),
        );
        want.push(("_import_run".into(), "bigint".into()));
        let got: Vec<(String, String)> = cols.iter().map(|c| (c.0.clone(), c.1.clone())).collect();
        assert_eq!(got, want, "{}", idx.table);
        // Text compares by bytes, as in SQLite.
        for c in cols.iter().filter(|c| c.1 == "text") {
            assert_eq!(c.2.as_deref(), Some("C"), "{}.{}", idx.table, c.0);
        }
        let pk: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON TRUE
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.n",
        )
        .bind(idx.table)
        .fetch_all(s.pool())
        .await
        .unwrap();
        let mut want_pk = vec!["tenant_id"];
        want_pk.extend(idx.key().iter().map(|c| c.name));
        assert_eq!(pk, want_pk, "{}", idx.table);
    }
}

#[tokio::test]
async fn migration_converts_integer_times_exactly() {
    let Some(url) = pg_url() else { return };
    let url = fresh_database(&url).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // The schema as it was before times became TIMESTAMPTZ.
    sqlx::migrate!("./migrations")
        .run_to(3, &pool)
        .await
        .unwrap();
    let created = t0().as_microsecond() + 123_456;
    let before_1970 = -1_000_001;
    // Values inlined: several statements go by the simple protocol.
    sqlx::raw_sql(sqlx::AssertSqlSafe(
        "INSERT INTO tenants (id, name, timezone, concurrency, created_at) VALUES (1, 'a', 'UTC', 2, $1);
         INSERT INTO tasks (id, tenant_id, identifier, \"desc\", state, trigger, target, max_attempts, priority,
             created_at, modified_at, run_at, schedule_anchor)
         VALUES (7, 1, 'export', 'd', 'READY', '{}', '{}', 3, 10, $1, $1, $2, NULL)"
            .replace("$1", &created.to_string())
            .replace("$2", &before_1970.to_string()),
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let s = PgStore::connect(&url).await.unwrap();
    s.migrate().await.unwrap();
    let t = get(&s, 1, 7).await;
    assert_eq!(t.created_at.as_microsecond(), created);
    assert_eq!(t.modified_at.as_microsecond(), created);
    assert_eq!(t.run_at.as_microsecond(), before_1970);
    assert_eq!(
        s.tenant(1)
            .await
            .unwrap()
            .unwrap()
            .created_at
            .as_microsecond(),
        created
    );
}

#[tokio::test]
async fn times_keep_every_microsecond() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    for t in [
        "2026-03-01T12:00:00.000001Z",
        "1969-12-31T23:59:59.999999Z",
        "1900-01-01T00:00:00Z",
        "9000-12-31T23:59:59.999999Z",
    ] {
        let t: Timestamp = t.parse().unwrap();
        let ins = s.insert_task(new_task(a, t), t).await.unwrap().task;
        let got = get(&s, a, ins.id).await;
        assert_eq!((got.run_at, got.created_at), (t, t));
        assert_eq!(got, ins);
    }
}

#[tokio::test]
async fn concurrency_limit_holds_across_nodes() {
    let Some(url) = pg_url() else { return };
    let url = fresh_database(&url).await;
    let first = PgStore::connect(&url).await.unwrap();
    first.migrate().await.unwrap();
    let a = tenant(&first, 3).await;
    let b = tenant(&first, 2).await;
    for i in 0..40 {
        insert(&first, new_task(if i % 2 == 0 { a } else { b }, at(0))).await;
    }
    // Four nodes, each its own pool, claim at once.
    let mut handles = vec![];
    for n in 0..4 {
        let node = PgStore::connect(&url).await.unwrap();
        handles.push(tokio::spawn(async move {
            let mut got = vec![];
            for _ in 0..5 {
                got.extend(node.claim(&format!("n{n}"), 4, LEASE, at(1)).await.unwrap());
            }
            got
        }));
    }
    let mut claimed = vec![];
    for h in handles {
        claimed.extend(h.await.unwrap());
    }
    let per = |t: i64| claimed.iter().filter(|c| c.task.tenant_id == t).count();
    assert_eq!((per(a), per(b)), (3, 2));
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'INPROGRESS'")
        .fetch_one(first.pool())
        .await
        .unwrap();
    assert_eq!(running, 5);
}

/// `tenant_running` against a count of the rows themselves, per tenant.
async fn counters_match(s: &PgStore) {
    let drift: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT te.id, COALESCE(r.n, 0), (SELECT COUNT(*) FROM tasks t WHERE t.tenant_id = te.id AND t.state = 'INPROGRESS')
         FROM tenants te LEFT JOIN tenant_running r ON r.tenant_id = te.id",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    for (tenant, counted, actual) in drift {
        assert_eq!(
            counted, actual,
            "tenant {tenant}: counter {counted}, rows {actual}"
        );
    }
}

#[tokio::test]
async fn running_counters_follow_every_change_of_state() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 10).await;
    let b = tenant(&s, 10).await;
    for i in 0..12 {
        insert(&s, new_task(if i % 3 == 0 { b } else { a }, at(0))).await;
    }
    let claimed = s.claim("w", 12, LEASE, at(1)).await.unwrap();
    assert_eq!(claimed.len(), 12);
    counters_match(&s).await;
    // Completions in one batch across tenants, a stale fence among them.
    let mut batch: Vec<Finished> = claimed[..5]
        .iter()
        .map(|c| Finished {
            id: c.task.id,
            fence: c.fence,
            completion: Completion {
                state: TaskState::Done,
                errors: Default::default(),
                output: None,
                result: None,
                logs: vec![],
                reschedule: None,
                now: at(2),
            },
        })
        .collect();
    batch[4].fence += 1;
    assert_eq!(
        s.complete_many(batch).await.unwrap(),
        vec![claimed[4].task.id]
    );
    counters_match(&s).await;
    s.retry_later(claimed[5].task.id, claimed[5].fence, at(3), vec![])
        .await
        .unwrap();
    s.release(claimed[6].task.id, claimed[6].fence, vec![])
        .await
        .unwrap();
    s.heartbeat(claimed[7].task.id, claimed[7].fence, at(60))
        .await
        .unwrap();
    counters_match(&s).await;
    assert!(!s.reclaim_expired(at(40)).await.unwrap().is_empty());
    counters_match(&s).await;
    // Writes from outside the store are counted too.
    sqlx::query("UPDATE tasks SET state = 'INPROGRESS' WHERE state = 'READY' AND tenant_id = $1")
        .bind(a)
        .execute(s.pool())
        .await
        .unwrap();
    counters_match(&s).await;
    sqlx::query("DELETE FROM tasks WHERE tenant_id = $1")
        .bind(b)
        .execute(s.pool())
        .await
        .unwrap();
    counters_match(&s).await;
    sqlx::query(
        "INSERT INTO tasks (tenant_id, identifier, \"desc\", state, trigger, target, max_attempts, priority,
             created_at, modified_at, run_at)
         VALUES ($1, 'export', 'd', 'INPROGRESS', '{}', '{}', 3, 10, now(), now(), now())",
    )
    .bind(b)
    .execute(s.pool())
    .await
    .unwrap();
    counters_match(&s).await;
}

#[tokio::test]
async fn a_backlog_at_its_limit_does_not_hide_other_tenants() {
    let Some(s) = store().await else { return };
    let busy = tenant(&s, 1).await;
    let other = tenant(&s, 1).await;
    // More due tasks than one claim looks at, all ahead of the other
    // tenant's in queue order.
    sqlx::query(
        "INSERT INTO tasks (tenant_id, identifier, \"desc\", state, trigger, target, max_attempts, priority,
             created_at, modified_at, run_at)
         SELECT $1, 'export', 'd', 'READY', '{}', '{}', 3, 10, $2::timestamptz, $2::timestamptz, $2::timestamptz
         FROM generate_series(1, 3000)",
    )
    .bind(busy)
    .bind(t0().to_string())
    .execute(s.pool())
    .await
    .unwrap();
    let late = insert(&s, new_task(other, at(5))).await;
    let first = claim_one(&s, at(10)).await;
    assert_eq!(first.task.tenant_id, busy);
    let next = s.claim("w", 1, LEASE, at(10)).await.unwrap();
    assert_eq!(
        next.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![late]
    );
}

#[tokio::test]
async fn claim_takes_interactive_first_and_sets_the_lease() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 10).await;
    let bulk = insert(&s, new_task(a, at(0))).await;
    let interactive = insert(
        &s,
        NewTask {
            priority: 0,
            ..new_task(a, at(3))
        },
    )
    .await;
    let c = s.claim("node-1", 5, LEASE, at(4)).await.unwrap();
    assert_eq!(
        c.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![interactive, bulk]
    );
    let row = sqlx::query(
        "SELECT lease_owner, lease_expires_at = $2::timestamptz FROM tasks WHERE id = $1",
    )
    .bind(bulk)
    .bind(at(34).to_string())
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "node-1");
    assert!(row.get::<bool, _>(1), "lease until now + 30 s");
    assert!(c[0].fence != c[1].fence);
    assert!(s.claim("w", 0, LEASE, at(4)).await.unwrap().is_empty());
}

#[tokio::test]
async fn stale_fences_write_nothing() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    let mut t = new_task(a, at(0));
    t.trigger = Trigger {
        once: Some(at(0)),
        repeat: Some(datask_core::task::Repeat::Daily),
        ..Default::default()
    };
    let id = insert(&s, t).await;
    let old = claim_one(&s, at(0)).await;
    // The lease expires and another worker takes the task.
    s.reclaim_expired(at(31)).await.unwrap();
    let new = claim_one(&s, at(32)).await;
    let before = get(&s, a, id).await;
    let mut c = done(TaskState::Done, at(40));
    c.reschedule = Some(at(86_400));
    assert!(lease_lost(s.complete(id, old.fence, c).await));
    assert!(lease_lost(
        s.retry_later(id, old.fence, at(50), vec![]).await
    ));
    assert!(lease_lost(s.release(id, old.fence, vec![]).await));
    assert!(lease_lost(
        s.append_logs(id, old.fence, vec![LogEntry::new("x", at(40))])
            .await
    ));
    let batch = ImportBatch {
        tenant_id: a,
        task_id: id,
        fence: old.fence,
        index: &index::PRODUCTS,
        columns: vec![0],
        rows: vec![product(2, "p1")],
        rejects: vec![reject(3)],
        run_tag: old.fence,
        dry_run: false,
        checkpoint: json!({"rows": 3}),
        progress_done: 3,
    };
    assert!(lease_lost(s.import_batch(batch).await));
    assert_eq!(get(&s, a, id).await, before);
    assert_eq!(s.count_rows(a, &index::PRODUCTS, None).await.unwrap(), 0);
    assert!(s.rejects(id, 0, 10).await.unwrap().is_empty());
    // A finished task has no lease at all.
    s.complete(id, new.fence, done(TaskState::Done, at(40)))
        .await
        .unwrap();
    assert!(lease_lost(s.heartbeat(id, new.fence, at(50)).await));
    assert!(lease_lost(s.set_progress(id, new.fence, 1, None).await));
}

#[tokio::test]
async fn reclaim_ends_fatal_after_max_attempts() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 10).await;
    let id = insert(&s, new_task(a, at(0))).await;
    let mut now = at(0);
    for attempt in 1..=3 {
        let c = claim_one(&s, now).await;
        assert_eq!(c.task.attempts, attempt);
        now += SignedDuration::from_secs(31);
        assert_eq!(s.reclaim_expired(now).await.unwrap(), vec![id]);
        let t = get(&s, a, id).await;
        let want = if attempt < 3 {
            TaskState::Ready
        } else {
            TaskState::Fatal
        };
        assert_eq!(t.state, want, "after attempt {attempt}");
    }
    let t = get(&s, a, id).await;
    assert_eq!(t.finished_at, Some(now));
    assert_eq!(
        &msgs(&t)[msgs(&t).len() - 2..],
        [
            "INPROGRESS -> FATAL",
            "lease expired; all 3 attempts are spent"
        ]
    );
    assert_eq!(t.logs.last().unwrap().time, now);
    assert_eq!(s.next_due().await.unwrap(), None);
    assert!(
        s.reclaim_expired(now + SignedDuration::from_secs(999))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn reclaim_handles_many_at_once() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 100).await;
    let again = insert(&s, new_task(a, at(0))).await;
    let spent = insert(
        &s,
        NewTask {
            max_attempts: 1,
            ..new_task(a, at(0))
        },
    )
    .await;
    let cancelled = insert(&s, new_task(a, at(0))).await;
    let alive = insert(&s, new_task(a, at(0))).await;
    let claimed = s.claim("w", 10, LEASE, at(0)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    s.request_cancel(a, cancelled, at(1)).await.unwrap();
    let fence_of = |id| claimed.iter().find(|c| c.task.id == id).unwrap().fence;
    s.heartbeat(alive, fence_of(alive), at(100)).await.unwrap();
    let mut ids = s.reclaim_expired(at(31)).await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![again, spent, cancelled]);
    let state = |id| {
        let s = s.clone();
        async move { get(&s, a, id).await.state }
    };
    assert_eq!(state(again).await, TaskState::Ready);
    assert_eq!(state(spent).await, TaskState::Fatal);
    assert_eq!(state(cancelled).await, TaskState::Cancelled);
    assert_eq!(state(alive).await, TaskState::InProgress);
    assert_eq!(get(&s, a, again).await.run_at, at(31));
    assert_eq!(get(&s, a, again).await.finished_at, None);
}

#[tokio::test]
async fn racing_idempotent_inserts_create_one_task() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    let mut handles = vec![];
    for i in 0..16 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let t = NewTask {
                idempotency_key: Some("same".into()),
                desc: format!("try {i}"),
                ..new_task(a, at(0))
            };
            s.insert_task(t, t0()).await.unwrap()
        }));
    }
    let mut results = vec![];
    for h in handles {
        results.push(h.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    let first = results.iter().find(|r| r.created).unwrap().task.clone();
    assert!(results.iter().all(|r| r.task == first));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn versions_conflict_and_running_tasks_refuse_changes() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    let other = tenant(&s, 4).await;
    let id = insert(&s, new_task(a, at(100))).await;
    let upd = |v| TaskUpdate {
        desc: "new".into(),
        trigger: Trigger::default(),
        target: Default::default(),
        run_at: at(0),
        expected_version: v,
    };
    assert_eq!(
        s.update_task(a, id, upd(Some(1)), at(1))
            .await
            .unwrap()
            .version,
        2
    );
    assert!(matches!(
        s.update_task(a, id, upd(Some(1)), at(2)).await,
        Err(StoreError::VersionConflict { current: 2 })
    ));
    assert!(matches!(
        s.update_task(other, id, upd(Some(2)), at(2)).await,
        Err(StoreError::NotFound)
    ));
    claim_one(&s, at(3)).await;
    assert!(matches!(
        s.update_task(a, id, upd(None), at(4)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.delete_task(a, id).await,
        Err(StoreError::Conflict(_))
    ));
    let t = s.request_cancel(a, id, at(5)).await.unwrap();
    assert_eq!(
        (t.state, t.cancel_requested, t.version),
        (TaskState::InProgress, true, 4)
    );
}

fn product(row: i64, key: &str) -> ImportRow {
    ImportRow {
        row,
        values: vec![Value::Text(key.into())],
        raw: key.into(),
    }
}

fn reject(row: i64) -> RowReject {
    RowReject {
        row,
        code: "invalid_value".into(),
        column: Some("price".into()),
        message: "not a number".into(),
        raw: format!("raw{row}"),
    }
}

fn user_row(row: i64, key: &str, n: i64) -> ImportRow {
    let values = index::USERS
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| match (i, c.ty) {
            (0, _) => Value::Text(key.into()),
            (_, ColumnType::Text) => Value::Text(format!("{}-{n}", c.name)),
            (_, ColumnType::Boolean) => Value::Boolean(n % 2 == 0),
            (_, ColumnType::Time) => Value::Time(t0().as_microsecond() + n),
            // In jsonb's text form, which is what comes back.
            (_, ColumnType::Json) => Value::Json(format!(r#"{{"n": {n}}}"#)),
            (_, ColumnType::Integer) => Value::Integer(n),
            (_, ColumnType::Number) => Value::Number(n as f64 / 4.0),
        })
        .collect();
    ImportRow {
        row,
        values,
        raw: format!("{key},{n}"),
    }
}

fn users_batch(c: &ClaimedTask, tenant: i64, run_tag: i64, rows: Vec<ImportRow>) -> ImportBatch {
    ImportBatch {
        tenant_id: tenant,
        task_id: c.task.id,
        fence: c.fence,
        index: &index::USERS,
        columns: (0..index::USERS.columns.len()).collect(),
        rows,
        rejects: vec![],
        run_tag,
        dry_run: false,
        checkpoint: json!({}),
        progress_done: 0,
    }
}

#[tokio::test]
async fn large_batches_upsert_and_find_duplicates() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    // 20,000 rows of 14 columns: 280,000 values, far past 65,535 parameters.
    let rows: Vec<ImportRow> = (0..20_000)
        .map(|n| user_row(n + 2, &format!("u{n:06}"), n))
        .collect();
    let mut b = users_batch(&c, a, c.fence, rows);
    b.checkpoint = json!({"rows": 20_000});
    b.progress_done = 20_000;
    let out = s.import_batch(b).await.unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            applied: 20_000,
            duplicates: 0
        }
    );
    let t = get(&s, a, c.task.id).await;
    assert_eq!(
        (t.checkpoint, t.progress_done),
        (Some(json!({"rows": 20_000})), 20_000)
    );
    // The same run again: 5,000 keys it already wrote, 5,000 new ones.
    let rows: Vec<ImportRow> = (15_000..25_000)
        .map(|n| user_row(n + 100_000, &format!("u{n:06}"), -n))
        .collect();
    let out = s
        .import_batch(users_batch(&c, a, c.fence, rows))
        .await
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            applied: 5_000,
            duplicates: 5_000
        }
    );
    let rejects = s.rejects(c.task.id, 0, 10_000).await.unwrap();
    assert_eq!(rejects.len(), 5_000);
    assert_eq!(
        rejects[0],
        RowReject {
            row: 115_000,
            code: "duplicate".into(),
            column: None,
            message: "duplicate key".into(),
            raw: "u015000,-15000".into(),
        }
    );
    let (rows, chunks) = exported(&s, a, &index::USERS).await;
    assert_eq!((rows.len(), chunks), (25_000, 25));
    // The first write of a duplicate key stays.
    assert_eq!(rows[15_000], user_row(0, "u015000", 15_000).values);
    assert_eq!(rows[24_999], user_row(0, "u024999", -24_999).values);
    // A dry run writes no data, but its checkpoint and rejects.
    let mut dry = users_batch(&c, a, c.fence, vec![user_row(2, "new", 1)]);
    dry.dry_run = true;
    dry.rejects = vec![reject(3)];
    dry.checkpoint = json!({"rows": 3});
    assert_eq!(s.import_batch(dry).await.unwrap().applied, 1);
    assert_eq!(s.count_rows(a, &index::USERS, None).await.unwrap(), 25_000);
    assert_eq!(
        get(&s, a, c.task.id).await.checkpoint,
        Some(json!({"rows": 3}))
    );
    assert_eq!(s.rejects(c.task.id, 2, 1).await.unwrap()[0].row, 3);
    // A new run writes the same keys again.
    let out = s
        .import_batch(users_batch(
            &c,
            a,
            c.fence + 1,
            vec![user_row(2, "u000000", 7)],
        ))
        .await
        .unwrap();
    assert_eq!(out.applied, 1);
}

/// New keys are written with `COPY`; a batch that meets a key already
/// there, however late in the batch, is written whole by the upsert instead,
/// and a value the server refuses fails the batch with nothing written.
#[tokio::test]
async fn a_refused_copy_falls_back_to_the_upsert() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let out = s
        .import_batch(users_batch(&c, a, c.fence, vec![user_row(2, "known", 1)]))
        .await
        .unwrap();
    assert_eq!(out.applied, 1);
    // 10,000 new keys (about 2 MB on the wire), then the known one, from a
    // later run: the known key is updated, the new ones written once.
    let mut rows: Vec<ImportRow> = (0..10_000)
        .map(|n| user_row(n + 2, &format!("n{n:05}"), n))
        .collect();
    rows.push(user_row(10_002, "known", 2));
    let out = s
        .import_batch(users_batch(&c, a, c.fence + 1, rows))
        .await
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            applied: 10_001,
            duplicates: 0
        }
    );
    let (rows, _) = exported(&s, a, &index::USERS).await;
    assert_eq!(rows.len(), 10_001);
    // Updated, but for `created_at`, which keeps its first value.
    let mut known = user_row(0, "known", 2).values;
    let (created, _) = index::USERS.column("created_at").unwrap();
    known[created] = user_row(0, "known", 1).values[created].clone();
    assert_eq!(rows[0], known, "key order: known < n…");
    // A NUL byte is not text to PostgreSQL: neither way writes the batch.
    let mut bad = user_row(3, "nul", 3);
    bad.values[1] = Value::Text("a\0b".into());
    let b = users_batch(&c, a, c.fence + 2, vec![user_row(2, "fine", 4), bad]);
    assert!(matches!(
        s.import_batch(b).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(s.count_rows(a, &index::USERS, None).await.unwrap(), 10_001);
    // The connections are fit for use afterwards.
    for _ in 0..8 {
        assert_eq!(s.count_rows(a, &index::USERS, None).await.unwrap(), 10_001);
    }
}

#[tokio::test]
async fn a_value_of_the_wrong_type_fails_the_batch() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let b = ImportBatch {
        tenant_id: a,
        task_id: c.task.id,
        fence: c.fence,
        index: &index::PRODUCTS,
        columns: vec![0, 3],
        rows: vec![ImportRow {
            row: 2,
            values: vec![Value::Text("p1".into()), Value::Text("ten".into())],
            raw: String::new(),
        }],
        rejects: vec![],
        run_tag: c.fence,
        dry_run: false,
        checkpoint: json!({"rows": 1}),
        progress_done: 1,
    };
    assert!(matches!(
        s.import_batch(b).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(get(&s, a, c.task.id).await.checkpoint, None);
    assert_eq!(s.count_rows(a, &index::PRODUCTS, None).await.unwrap(), 0);
}

#[tokio::test]
async fn exports_are_in_byte_order() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let keys = ["b", "B", "a", "é", "Z", "10", "9", "_x", "ab", "A"];
    let rows = keys
        .iter()
        .enumerate()
        .map(|(i, k)| product(i as i64 + 2, k))
        .collect();
    s.import_batch(ImportBatch {
        tenant_id: a,
        task_id: c.task.id,
        fence: c.fence,
        index: &index::PRODUCTS,
        columns: vec![0],
        rows,
        rejects: vec![],
        run_tag: c.fence,
        dry_run: false,
        checkpoint: json!({}),
        progress_done: 0,
    })
    .await
    .unwrap();
    let (rows, _) = exported(&s, a, &index::PRODUCTS).await;
    let got: Vec<String> = rows
        .iter()
        .map(|r| match &r[0] {
            Value::Text(k) => k.clone(),
            v => panic!("{v:?}"),
        })
        .collect();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort(); // Rust sorts strings by bytes
    assert_eq!(got, want);
    // The order can come from the primary key: with sorting priced out,
    // the plan still has no Sort (the tiny table would otherwise be sorted).
    let mut tx = s.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (COSTS OFF) SELECT product_id FROM idx_products WHERE tenant_id = 1 ORDER BY product_id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(!plan.iter().any(|l| l.contains("Sort")), "{plan:?}");
}

#[tokio::test]
async fn writes_that_make_work_due_wake_other_nodes() {
    let Some(url) = pg_url() else { return };
    let url = fresh_database(&url).await;
    let writer = PgStore::connect(&url).await.unwrap();
    writer.migrate().await.unwrap();
    let waiter = Arc::new(PgStore::connect(&url).await.unwrap());
    let a = tenant(&writer, 4).await;
    // Drain any wake-up left from the set-up.
    waiter.wait_for_work(Duration::from_millis(200)).await;
    let woken = |w: Arc<PgStore>| {
        tokio::spawn(async move {
            let start = Instant::now();
            w.wait_for_work(Duration::from_secs(10)).await;
            start.elapsed()
        })
    };
    let quick = Duration::from_secs(5);
    let h = woken(waiter.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = insert(&writer, new_task(a, at(0))).await;
    assert!(h.await.unwrap() < quick, "insert_task");
    let c = claim_one(&writer, at(0)).await;
    let h = woken(waiter.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    writer
        .retry_later(id, c.fence, at(1), vec![])
        .await
        .unwrap();
    assert!(h.await.unwrap() < quick, "retry_later");
    let c = claim_one(&writer, at(1)).await;
    let h = woken(waiter.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut comp = done(TaskState::Done, at(2));
    comp.reschedule = Some(at(3));
    writer.complete(id, c.fence, comp).await.unwrap();
    assert!(h.await.unwrap() < quick, "complete with reschedule");
    // A notification that comes before anyone waits is kept.
    writer.execute_now(a, id, at(4)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    waiter.wait_for_work(Duration::from_secs(10)).await;
    assert!(start.elapsed() < quick, "execute_now before waiting");
    // Without work, the timeout ends the wait.
    let start = Instant::now();
    waiter.wait_for_work(Duration::from_millis(300)).await;
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn query_dialect_reads_times_as_unix_seconds() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            s.insert_task(new_task(a, at(0)), at(i * 10))
                .await
                .unwrap()
                .task
                .id,
        );
    }
    s.request_cancel(a, ids[3], at(100)).await.unwrap();
    let q = |conditions: Vec<Condition>, order: Vec<(Field, bool)>, limit, offset| TaskQuery {
        conditions,
        order,
        limit,
        offset,
    };
    let ids_of = |tasks: Vec<datask_core::Task>| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    let since = Condition {
        field: Field::CreateTime,
        op: Op::Ge,
        value: Operand::One(Param::Int(at(20).as_second())),
    };
    let got = s
        .query_tasks(
            a,
            &q(vec![since.clone()], vec![(Field::CreateTime, false)], 10, 0),
        )
        .await
        .unwrap();
    assert_eq!(ids_of(got), vec![ids[2], ids[3], ids[4]]);
    let got = s
        .query_tasks(a, &q(vec![since], vec![(Field::CreateTime, true)], 2, 1))
        .await
        .unwrap();
    assert_eq!(ids_of(got), vec![ids[3], ids[2]]);
    let finished = Condition {
        field: Field::FinishTime,
        op: Op::Eq,
        value: Operand::One(Param::Int(at(100).as_second())),
    };
    let status = Condition {
        field: Field::Status,
        op: Op::In,
        value: Operand::List(vec![Param::Int(5)]),
    };
    let got = s
        .query_tasks(a, &q(vec![finished, status], vec![], 10, 0))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], get(&s, a, ids[3]).await);
    let other = tenant(&s, 4).await;
    assert!(
        s.query_tasks(other, &q(vec![], vec![], 10, 0))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn leadership_passes_on_when_it_expires() {
    let Some(s) = store().await else { return };
    let ttl = Duration::from_secs(10);
    assert!(s.try_lead("a", ttl, at(0)).await.unwrap());
    assert!(!s.try_lead("b", ttl, at(5)).await.unwrap());
    assert!(s.try_lead("a", ttl, at(9)).await.unwrap(), "renewed");
    assert!(!s.try_lead("b", ttl, at(15)).await.unwrap());
    assert!(s.try_lead("b", ttl, at(20)).await.unwrap());
    assert!(!s.try_lead("a", ttl, at(21)).await.unwrap());
}

#[tokio::test]
async fn duplicate_secrets_are_conflicts() {
    let Some(s) = store().await else { return };
    let a = tenant(&s, 4).await;
    let cred = Credential {
        tenant_id: a,
        kind: CredentialKind::AppToken,
        secret_sha256: "ab".repeat(32),
    };
    s.add_credential(cred.clone()).await.unwrap();
    assert!(matches!(
        s.add_credential(cred).await,
        Err(StoreError::Conflict(_))
    ));
    s.create_user("u", "cd").await.unwrap();
    assert!(matches!(
        s.create_user("v", "cd").await,
        Err(StoreError::Conflict(_))
    ));
}
