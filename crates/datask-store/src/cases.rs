//! The cases. Each takes a fresh store and checks one part of the contract
//! written on `datask_core::Store`. Time is passed in explicitly wherever the
//! trait allows it, so nothing depends on sleeping.

use std::sync::Arc;
use std::time::Duration;

use datask_core::index::{self, Value};
use datask_core::store::*;
use datask_core::task::{LogEntry, NewTask, Repeat, TaskUpdate};
use datask_core::{Store, TaskState, Trigger};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, json};

type S = Arc<dyn Store>;

fn t0() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

async fn tenant(s: &S, concurrency: i64) -> i64 {
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

async fn insert(s: &S, t: NewTask) -> i64 {
    s.insert_task(t, t0()).await.unwrap().task.id
}

async fn get(s: &S, tenant: i64, id: i64) -> datask_core::Task {
    s.get_task(tenant, id).await.unwrap().unwrap()
}

async fn claim_one(s: &S, now: Timestamp) -> ClaimedTask {
    let mut c = s.claim("w", 1, Duration::from_secs(30), now).await.unwrap();
    assert_eq!(c.len(), 1, "expected one claimable task");
    c.remove(0)
}

fn msgs(t: &datask_core::Task) -> Vec<String> {
    t.logs.iter().map(|l| l.msg.clone()).collect()
}

fn done(state: TaskState, now: Timestamp) -> Completion {
    Completion {
        state,
        errors: Map::new(),
        output: None,
        result: None,
        logs: vec![],
        reschedule: None,
        now,
    }
}

/// A run's end without errors or output.
fn ended(id: i64, fence: i64, state: TaskState, now: Timestamp) -> Finished {
    Finished {
        id,
        fence,
        completion: done(state, now),
    }
}

fn lease_lost<T: std::fmt::Debug>(r: StoreResult<T>) -> bool {
    matches!(r, Err(StoreError::LeaseLost(_)))
}

pub async fn tenants_and_credentials(s: S) {
    let a = tenant(&s, 2).await;
    let b = tenant(&s, 3).await;
    assert_ne!(a, b);
    let got = s.tenant(a).await.unwrap().unwrap();
    assert_eq!((got.concurrency, got.timezone.as_str()), (2, "UTC"));
    assert!(s.tenant(9_999).await.unwrap().is_none());
    s.add_credential(Credential {
        tenant_id: b,
        kind: CredentialKind::PrivilegedKey,
        secret_sha256: "ab".into(),
    })
    .await
    .unwrap();
    s.add_credential(Credential {
        tenant_id: a,
        kind: CredentialKind::AppToken,
        secret_sha256: "cd".into(),
    })
    .await
    .unwrap();
    let c = s.credential_by_hash("ab").await.unwrap().unwrap();
    assert_eq!((c.tenant_id, c.kind), (b, CredentialKind::PrivilegedKey));
    assert_eq!(
        s.credential_by_hash("cd").await.unwrap().unwrap().kind,
        CredentialKind::AppToken
    );
    assert!(s.credential_by_hash("ef").await.unwrap().is_none());
}

pub async fn insert_get_and_isolation(s: S) {
    let a = tenant(&s, 4).await;
    let b = tenant(&s, 4).await;
    let mut t = new_task(a, at(60));
    t.trigger = Trigger {
        once: Some(at(60)),
        repeat: Some(Repeat::Daily),
        timezone: Some("Europe/Amsterdam".into()),
        ..Default::default()
    };
    let ins = s.insert_task(t, t0()).await.unwrap();
    assert!(ins.created);
    let task = get(&s, a, ins.task.id).await;
    assert_eq!(task, ins.task);
    assert_eq!(
        (task.state, task.version, task.attempts),
        (TaskState::Ready, 1, 0)
    );
    assert!(task.logs.is_empty());
    assert_eq!(task.created_at, t0());
    assert_eq!(task.run_at, at(60));
    assert_eq!(task.schedule_anchor, Some(at(60)));
    assert_eq!(task.trigger.repeat, Some(Repeat::Daily));
    assert_eq!(task.target["action"], "export");
    // The other tenant sees nothing of it.
    let id = task.id;
    assert!(s.get_task(b, id).await.unwrap().is_none());
    let upd = TaskUpdate {
        desc: "x".into(),
        trigger: Trigger::default(),
        target: Map::new(),
        run_at: t0(),
        expected_version: None,
    };
    assert!(matches!(
        s.update_task(b, id, upd, t0()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_task(b, id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.execute_now(b, id, t0()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.request_cancel(b, id, t0()).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        s.list_tasks(
            b,
            &TaskFilter {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .is_empty()
    );
}

pub async fn idempotency_keys(s: S) {
    let a = tenant(&s, 4).await;
    let b = tenant(&s, 4).await;
    let keyed = |tenant, desc: &str| NewTask {
        idempotency_key: Some("k1".into()),
        desc: desc.into(),
        ..new_task(tenant, t0())
    };
    let first = s.insert_task(keyed(a, "first"), t0()).await.unwrap();
    let again = s.insert_task(keyed(a, "second"), t0()).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.task.id, first.task.id);
    assert_eq!(again.task.desc, "first");
    let other = s.insert_task(keyed(b, "other"), t0()).await.unwrap();
    assert!(other.created, "another tenant may use the same key");
    assert_eq!(
        s.list_tasks(
            a,
            &TaskFilter {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .len(),
        1
    );
}

pub async fn list_filters_and_cursor(s: S) {
    let a = tenant(&s, 4).await;
    let mut ids = vec![];
    for i in 0..7 {
        let mut t = new_task(a, t0());
        if i % 3 == 0 {
            t.identifier = "import".into();
        }
        ids.push(s.insert_task(t, at(i)).await.unwrap().task.id);
    }
    s.request_cancel(a, ids[1], t0()).await.unwrap();
    let all = |f: TaskFilter| {
        let s = s.clone();
        async move {
            s.list_tasks(a, &f)
                .await
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(
        all(TaskFilter {
            limit: 100,
            ..Default::default()
        })
        .await,
        newest_first
    );
    // Pages of 3 with the cursor: no overlap, no gap.
    let mut seen: Vec<i64> = vec![];
    let mut cursor = None;
    loop {
        let page = all(TaskFilter {
            limit: 3,
            before_id: cursor,
            ..Default::default()
        })
        .await;
        seen.extend(&page);
        if page.len() < 3 {
            break;
        }
        cursor = page.last().copied();
    }
    assert_eq!(seen, newest_first);
    assert_eq!(
        all(TaskFilter {
            limit: 100,
            state: Some(TaskState::Cancelled),
            ..Default::default()
        })
        .await,
        vec![ids[1]]
    );
    assert_eq!(
        all(TaskFilter {
            limit: 100,
            identifier: Some("import".into()),
            ..Default::default()
        })
        .await,
        vec![ids[6], ids[3], ids[0]]
    );
    assert_eq!(
        all(TaskFilter {
            limit: 100,
            created_after: Some(at(4)),
            ..Default::default()
        })
        .await,
        vec![ids[6], ids[5]]
    );
    assert_eq!(
        all(TaskFilter {
            limit: 100,
            created_before: Some(at(2)),
            ..Default::default()
        })
        .await,
        vec![ids[1], ids[0]]
    );
}

pub async fn update_and_versions(s: S) {
    let a = tenant(&s, 4).await;
    let id = insert(&s, new_task(a, at(100))).await;
    let trigger = Trigger {
        once: Some(at(200)),
        repeat: Some(Repeat::Weekly),
        ..Default::default()
    };
    let upd = |v: Option<i64>| TaskUpdate {
        desc: "new".into(),
        trigger: trigger.clone(),
        target: json!({"action": "export", "export_format": "json"})
            .as_object()
            .cloned()
            .unwrap(),
        run_at: at(200),
        expected_version: v,
    };
    let t = s.update_task(a, id, upd(Some(1)), at(1)).await.unwrap();
    assert_eq!(
        (t.desc.as_str(), t.version, t.run_at, t.schedule_anchor),
        ("new", 2, at(200), Some(at(200)))
    );
    assert_eq!(t.target["export_format"], "json");
    assert_eq!(t.modified_at, at(1));
    match s.update_task(a, id, upd(Some(1)), at(2)).await {
        Err(StoreError::VersionConflict { current }) => assert_eq!(current, 2),
        other => panic!("{other:?}"),
    }
    s.update_task(a, id, upd(None), at(2)).await.unwrap();
    s.execute_now(a, id, at(3)).await.unwrap();
    claim_one(&s, at(3)).await;
    assert!(matches!(
        s.update_task(a, id, upd(None), at(4)).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn claim_order_due_and_limit(s: S) {
    let a = tenant(&s, 10).await;
    let later = insert(&s, new_task(a, at(100))).await;
    let bulk = insert(&s, new_task(a, at(0))).await;
    let interactive = insert(
        &s,
        NewTask {
            priority: 0,
            ..new_task(a, at(5))
        },
    )
    .await;
    let bulk2 = insert(&s, new_task(a, at(0))).await;
    let claimed = s
        .claim("w", 2, Duration::from_secs(30), at(10))
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|c| c.task.id).collect();
    assert_eq!(
        ids,
        vec![interactive, bulk],
        "interactive first, then by run_at and id"
    );
    let c = &claimed[0];
    assert_eq!(
        (c.task.state, c.task.attempts, c.task.started_at),
        (TaskState::InProgress, 1, Some(at(10)))
    );
    assert_eq!(msgs(&c.task), vec!["READY -> INPROGRESS"]);
    assert!(claimed[1].fence != claimed[0].fence, "fences are distinct");
    let rest = s
        .claim("w", 10, Duration::from_secs(30), at(10))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![bulk2],
        "the task due later waits"
    );
    assert!(
        s.claim("w", 10, Duration::from_secs(30), at(10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(claim_one(&s, at(100)).await.task.id, later);
}

pub async fn claim_honours_tenant_concurrency(s: S) {
    let narrow = tenant(&s, 1).await;
    let wide = tenant(&s, 3).await;
    for _ in 0..3 {
        insert(&s, new_task(narrow, at(0))).await;
    }
    for _ in 0..2 {
        insert(&s, new_task(wide, at(1))).await;
    }
    let claimed = s
        .claim("w", 10, Duration::from_secs(30), at(5))
        .await
        .unwrap();
    let per = |t| claimed.iter().filter(|c| c.task.tenant_id == t).count();
    assert_eq!((per(narrow), per(wide)), (1, 2));
    // Still at its limit while its task runs.
    assert!(
        s.claim("w", 10, Duration::from_secs(30), at(6))
            .await
            .unwrap()
            .is_empty()
    );
    let running = claimed.iter().find(|c| c.task.tenant_id == narrow).unwrap();
    s.complete(running.task.id, running.fence, done(TaskState::Done, at(7)))
        .await
        .unwrap();
    let next = s
        .claim("w", 10, Duration::from_secs(30), at(8))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].task.tenant_id, narrow);
}

pub async fn concurrent_claimers_never_share(s: S) {
    let a = tenant(&s, 1000).await;
    for _ in 0..200 {
        insert(&s, new_task(a, at(0))).await;
    }
    let claimer = |name: &'static str| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut got = vec![];
            loop {
                let batch = s
                    .claim(name, 7, Duration::from_secs(30), at(1))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|c| (c.task.id, c.fence)));
            }
        })
    };
    let (x, y) = (claimer("x"), claimer("y"));
    let (mut x, y) = (x.await.unwrap(), y.await.unwrap());
    x.extend(y);
    let mut ids: Vec<i64> = x.iter().map(|p| p.0).collect();
    let mut fences: Vec<i64> = x.iter().map(|p| p.1).collect();
    ids.sort();
    ids.dedup();
    fences.sort();
    fences.dedup();
    assert_eq!((ids.len(), fences.len(), x.len()), (200, 200, 200));
}

pub async fn fencing_after_reclaim(s: S) {
    let a = tenant(&s, 4).await;
    let id = insert(&s, new_task(a, at(0))).await;
    let old = claim_one(&s, at(0)).await;
    assert_eq!(s.reclaim_expired(at(31)).await.unwrap(), vec![id]);
    let t = get(&s, a, id).await;
    assert_eq!(t.state, TaskState::Ready);
    assert_eq!(&msgs(&t)[1..], ["INPROGRESS -> READY", "lease expired"]);
    let new = claim_one(&s, at(32)).await;
    assert_ne!(new.fence, old.fence);
    let before = get(&s, a, id).await;
    let f = old.fence;
    assert!(lease_lost(s.heartbeat(id, f, at(100)).await));
    assert!(lease_lost(s.set_progress(id, f, 5, Some(10)).await));
    assert!(lease_lost(
        s.append_logs(id, f, vec![LogEntry::new("stale", at(33))])
            .await
    ));
    assert!(lease_lost(
        s.complete(id, f, done(TaskState::Done, at(33))).await
    ));
    assert!(lease_lost(s.retry_later(id, f, at(40), vec![]).await));
    assert!(lease_lost(s.release(id, f, vec![]).await));
    assert!(lease_lost(s.clear_rejects(id, f).await));
    let batch = ImportBatch {
        tenant_id: a,
        task_id: id,
        fence: f,
        index: &index::PRODUCTS,
        columns: vec![0],
        rows: vec![ImportRow {
            row: 2,
            values: vec![Value::Text("p1".into())],
            raw: "p1".into(),
        }],
        rejects: vec![],
        run_tag: f,
        dry_run: false,
        checkpoint: json!({"rows": 1}),
        progress_done: 1,
    };
    assert!(lease_lost(s.import_batch(batch).await));
    assert_eq!(
        get(&s, a, id).await,
        before,
        "a stale fence changed the task"
    );
    assert_eq!(s.count_rows(a, &index::PRODUCTS, None).await.unwrap(), 0);
    // The current holder still may.
    assert!(!s.heartbeat(id, new.fence, at(100)).await.unwrap());
}

pub async fn heartbeat_and_cancel(s: S) {
    let a = tenant(&s, 4).await;
    let ready = insert(&s, new_task(a, at(100))).await;
    let t = s.request_cancel(a, ready, at(1)).await.unwrap();
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(t.finished_at, Some(at(1)));
    assert_eq!(msgs(&t), vec!["READY -> CANCELLED"]);
    assert!(matches!(
        s.request_cancel(a, ready, at(2)).await,
        Err(StoreError::Conflict(_))
    ));
    let id = insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    assert!(!s.heartbeat(id, c.fence, at(60)).await.unwrap());
    let t = s.request_cancel(a, id, at(3)).await.unwrap();
    assert!(t.cancel_requested);
    assert_eq!(t.state, TaskState::InProgress);
    assert!(s.heartbeat(id, c.fence, at(60)).await.unwrap());
    // The heartbeat moved the lease: nothing expires at 31 s.
    assert!(s.reclaim_expired(at(31)).await.unwrap().is_empty());
}

pub async fn complete_and_reschedule(s: S) {
    let a = tenant(&s, 4).await;
    let id = insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    s.set_progress(id, c.fence, 5, Some(10)).await.unwrap();
    let t = get(&s, a, id).await;
    assert_eq!((t.progress_done, t.progress_total), (5, Some(10)));
    let mut completion = done(TaskState::Done, at(9));
    completion.result = Some("results/x.csv".into());
    completion.output = Some(json!({"rows": 10}));
    completion.errors.insert("file[rows]".into(), json!(["x"]));
    completion.logs = vec![LogEntry {
        total: Some(10),
        success: Some(10),
        errors: Some(0),
        skips: Some(0),
        ..LogEntry::new("success", at(9))
    }];
    s.complete(id, c.fence, completion).await.unwrap();
    let t = get(&s, a, id).await;
    assert_eq!(t.state, TaskState::Done);
    assert_eq!(
        (t.result.as_deref(), t.output.clone(), t.finished_at),
        (
            Some("results/x.csv"),
            Some(json!({"rows": 10})),
            Some(at(9))
        )
    );
    assert_eq!(t.errors["file[rows]"], json!(["x"]));
    assert_eq!(
        msgs(&t),
        vec!["READY -> INPROGRESS", "INPROGRESS -> DONE", "success"]
    );
    assert_eq!(t.logs[2].total, Some(10));
    // A repeating task returns to READY at the new time.
    let mut rep = new_task(a, at(0));
    rep.trigger = Trigger {
        once: Some(at(0)),
        repeat: Some(Repeat::Daily),
        ..Default::default()
    };
    let rid = insert(&s, rep).await;
    let c = claim_one(&s, at(0)).await;
    let mut completion = done(TaskState::Done, at(5));
    completion.reschedule = Some(at(86_400));
    s.complete(rid, c.fence, completion).await.unwrap();
    let t = get(&s, a, rid).await;
    assert_eq!(
        (t.state, t.run_at, t.trigger.once),
        (TaskState::Ready, at(86_400), Some(at(86_400)))
    );
    assert_eq!(
        msgs(&t),
        vec!["READY -> INPROGRESS", "INPROGRESS -> DONE", "DONE -> READY"]
    );
    assert_eq!(t.schedule_anchor, Some(at(0)), "the anchor stays");
    assert_eq!(t.attempts, 0, "the next occurrence has all its attempts");
}

pub async fn retry_release_and_reclaim_to_fatal(s: S) {
    let a = tenant(&s, 4).await;
    let id = insert(
        &s,
        NewTask {
            max_attempts: 2,
            ..new_task(a, at(0))
        },
    )
    .await;
    let c = claim_one(&s, at(0)).await;
    s.release(id, c.fence, vec![LogEntry::new("released", at(1))])
        .await
        .unwrap();
    let t = get(&s, a, id).await;
    assert_eq!(
        (t.state, t.attempts),
        (TaskState::Ready, 0),
        "a release gives the attempt back"
    );
    let c = claim_one(&s, at(2)).await;
    s.retry_later(id, c.fence, at(50), vec![LogEntry::new("boom", at(3))])
        .await
        .unwrap();
    let t = get(&s, a, id).await;
    assert_eq!(
        (t.state, t.attempts, t.run_at),
        (TaskState::Ready, 1, at(50))
    );
    assert!(
        s.claim("w", 1, Duration::from_secs(30), at(49))
            .await
            .unwrap()
            .is_empty()
    );
    claim_one(&s, at(50)).await;
    assert_eq!(s.reclaim_expired(at(81)).await.unwrap(), vec![id]);
    let t = get(&s, a, id).await;
    assert_eq!(
        (t.state, t.attempts, t.finished_at),
        (TaskState::Fatal, 2, Some(at(81)))
    );
    assert_eq!(
        &msgs(&t)[msgs(&t).len() - 2..],
        [
            "INPROGRESS -> FATAL",
            "lease expired; all 2 attempts are spent"
        ]
    );
    // A lease that expires with cancellation requested ends CANCELLED.
    let id2 = insert(&s, new_task(a, at(100))).await;
    claim_one(&s, at(100)).await;
    s.request_cancel(a, id2, at(101)).await.unwrap();
    assert_eq!(s.reclaim_expired(at(200)).await.unwrap(), vec![id2]);
    assert_eq!(get(&s, a, id2).await.state, TaskState::Cancelled);
}

pub async fn execute_and_delete(s: S) {
    let a = tenant(&s, 4).await;
    let id = insert(&s, new_task(a, at(1000))).await;
    let t = s.execute_now(a, id, at(1)).await.unwrap();
    assert_eq!((t.state, t.run_at), (TaskState::Ready, at(1)));
    assert!(t.logs.is_empty(), "already READY: no transition logged");
    let c = claim_one(&s, at(1)).await;
    assert!(matches!(
        s.execute_now(a, id, at(2)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.delete_task(a, id).await,
        Err(StoreError::Conflict(_))
    ));
    s.complete(id, c.fence, done(TaskState::Done, at(3)))
        .await
        .unwrap();
    let t = s.execute_now(a, id, at(4)).await.unwrap();
    assert_eq!((t.state, t.run_at), (TaskState::Ready, at(4)));
    assert_eq!(t.attempts, 0, "a run again has all its attempts");
    assert_eq!(msgs(&t).last().unwrap(), "DONE -> READY");
    s.delete_task(a, id).await.unwrap();
    assert!(s.get_task(a, id).await.unwrap().is_none());
    assert!(matches!(
        s.delete_task(a, id).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn next_due_and_wake_ups(s: S) {
    let a = tenant(&s, 4).await;
    assert_eq!(s.next_due().await.unwrap(), None);
    insert(&s, new_task(a, at(30))).await;
    insert(&s, new_task(a, at(20))).await;
    assert_eq!(s.next_due().await.unwrap(), Some(at(20)));
    // With nothing happening a wait lasts its whole time. Wake-ups from the
    // inserts above may still be arriving (NOTIFY is asynchronous), so allow
    // a few early returns before the quiet one.
    let mut quiet = false;
    for _ in 0..10 {
        let started = std::time::Instant::now();
        s.wait_for_work(Duration::from_millis(300)).await;
        if started.elapsed() >= Duration::from_millis(250) {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "wait_for_work kept returning early with nothing new");
    // An insert wakes a waiter well before its timeout.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            s.wait_for_work(Duration::from_secs(5)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    insert(&s, new_task(a, at(0))).await;
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
}

pub async fn leadership(s: S) {
    let ttl = Duration::from_secs(10);
    assert!(s.try_lead("a", ttl, at(0)).await.unwrap());
    assert!(!s.try_lead("b", ttl, at(5)).await.unwrap());
    assert!(
        s.try_lead("a", ttl, at(5)).await.unwrap(),
        "the leader renews"
    );
    assert!(!s.try_lead("b", ttl, at(14)).await.unwrap());
    assert!(
        s.try_lead("b", ttl, at(16)).await.unwrap(),
        "after the ttl another node takes over"
    );
    assert!(!s.try_lead("a", ttl, at(17)).await.unwrap());
}

pub async fn uploads(s: S) {
    let a = tenant(&s, 4).await;
    let b = tenant(&s, 4).await;
    let u = Upload {
        id: "u1".into(),
        tenant_id: a,
        size: 10,
        sha256: "ff".into(),
        object_key: "uploads/1/u1".into(),
        filename: Some("f.csv".into()),
        created_at: t0(),
    };
    s.insert_upload(u).await.unwrap();
    let got = s.get_upload(a, "u1").await.unwrap().unwrap();
    assert_eq!(
        (got.size, got.filename.as_deref(), got.created_at),
        (10, Some("f.csv"), t0())
    );
    assert!(s.get_upload(b, "u1").await.unwrap().is_none());
    assert!(s.get_upload(a, "u2").await.unwrap().is_none());
    // Another tenant cannot delete it; its own can, twice.
    s.delete_upload(b, "u1").await.unwrap();
    assert!(s.get_upload(a, "u1").await.unwrap().is_some());
    s.delete_upload(a, "u1").await.unwrap();
    s.delete_upload(a, "u1").await.unwrap();
    assert!(s.get_upload(a, "u1").await.unwrap().is_none());
}

/// Old uploads no waiting or running task needs are found for deletion,
/// across tenants, oldest first; one a READY task names is kept until the
/// task has run.
pub async fn expired_uploads_spare_pending_tasks(s: S) {
    let a = tenant(&s, 4).await;
    let b = tenant(&s, 4).await;
    let upload = |id: &str, tenant: i64, created_at: Timestamp| Upload {
        id: id.into(),
        tenant_id: tenant,
        size: 1,
        sha256: "00".into(),
        object_key: format!("uploads/{tenant}/{id}"),
        filename: None,
        created_at,
    };
    s.insert_upload(upload("old-b", b, at(1))).await.unwrap();
    s.insert_upload(upload("old-a", a, at(0))).await.unwrap();
    s.insert_upload(upload("used", a, at(2))).await.unwrap();
    s.insert_upload(upload("new", a, at(100))).await.unwrap();
    let mut task = new_task(a, at(0));
    task.target = json!({"action": "import", "upload_id": "used"})
        .as_object()
        .cloned()
        .unwrap();
    let id = insert(&s, task).await;
    // Another tenant's task naming the same id protects nothing of a's.
    let mut other = new_task(b, at(1000));
    other.target = json!({"action": "import", "upload_id": "old-b"})
        .as_object()
        .cloned()
        .unwrap();
    insert(&s, other).await;
    let ids = |v: Vec<Upload>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(s.expired_uploads(at(50), 10).await.unwrap()), ["old-a"]);
    assert_eq!(
        ids(s.expired_uploads(at(50), 0).await.unwrap()),
        Vec::<String>::new()
    );
    let c = claim_one(&s, at(0)).await;
    assert_eq!(c.task.id, id);
    assert_eq!(ids(s.expired_uploads(at(50), 10).await.unwrap()), ["old-a"]);
    s.complete(c.task.id, c.fence, done(TaskState::Done, at(3)))
        .await
        .unwrap();
    assert_eq!(
        ids(s.expired_uploads(at(50), 10).await.unwrap()),
        ["old-a", "used"]
    );
}

fn product_row(row: i64, key: &str, name: Option<&str>, price: Option<f64>) -> ImportRow {
    ImportRow {
        row,
        values: vec![
            Value::Text(key.into()),
            name.map(|n| Value::Text(n.into())).unwrap_or(Value::Null),
            price.map(Value::Number).unwrap_or(Value::Null),
        ],
        raw: format!(
            "{key},{},{}",
            name.unwrap_or(""),
            price.map(|p| p.to_string()).unwrap_or_default()
        ),
    }
}

fn batch(
    tenant: i64,
    c: &ClaimedTask,
    run_tag: i64,
    columns: Vec<usize>,
    rows: Vec<ImportRow>,
    rejects: Vec<RowReject>,
    done: i64,
) -> ImportBatch {
    ImportBatch {
        tenant_id: tenant,
        task_id: c.task.id,
        fence: c.fence,
        index: &index::PRODUCTS,
        columns,
        rows,
        rejects,
        run_tag,
        dry_run: false,
        checkpoint: json!({"rows": done}),
        progress_done: done,
    }
}

async fn exported(s: &S, tenant: i64, idx: &'static index::IndexDef) -> Vec<Vec<Value>> {
    use futures::StreamExt;
    let mut out = vec![];
    let mut stream = s.export_rows(tenant, idx, None).await.unwrap();
    while let Some(b) = stream.next().await {
        out.extend(b.unwrap());
    }
    out
}

pub async fn import_upserts_and_duplicates(s: S) {
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let tag = c.fence;
    // columns: product_id, name, price
    let cols = vec![0, 1, 3];
    let out = s
        .import_batch(batch(
            a,
            &c,
            tag,
            cols.clone(),
            vec![
                product_row(2, "p1", Some("Shoe"), Some(10.0)),
                product_row(3, "p2", Some("Hat"), None),
            ],
            vec![],
            2,
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            applied: 2,
            duplicates: 0
        }
    );
    let t = get(&s, a, c.task.id).await;
    assert_eq!(
        (t.checkpoint.clone(), t.progress_done),
        (Some(json!({"rows": 2})), 2)
    );
    // A later batch of the same run repeating p1 is a duplicate; p3 is new
    // and comes first (a store that writes new keys first and falls back
    // when it meets a known one must not keep half of the batch).
    let out = s
        .import_batch(batch(
            a,
            &c,
            tag,
            cols.clone(),
            vec![
                product_row(4, "p3", None, Some(3.5)),
                product_row(5, "p1", Some("Boot"), Some(1.0)),
            ],
            vec![],
            4,
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            applied: 1,
            duplicates: 1
        }
    );
    let rejects = s.rejects(c.task.id, 0, 10).await.unwrap();
    assert_eq!(rejects.len(), 1);
    assert_eq!(
        (
            rejects[0].row,
            rejects[0].code.as_str(),
            rejects[0].raw.as_str()
        ),
        (5, "duplicate", "p1,Boot,1")
    );
    let rows = exported(&s, a, &index::PRODUCTS).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (&rows[0][1], &rows[0][3]),
        (&Value::Text("Shoe".into()), &Value::Number(10.0)),
        "the first of a duplicate key wins"
    );
    // A new run re-writes the same keys, and only the given columns.
    let out = s
        .import_batch(batch(
            a,
            &c,
            tag + 1_000_000,
            vec![0, 3],
            vec![ImportRow {
                row: 2,
                values: vec![Value::Text("p1".into()), Value::Number(99.0)],
                raw: String::new(),
            }],
            vec![],
            1,
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            applied: 1,
            duplicates: 0
        }
    );
    let rows = exported(&s, a, &index::PRODUCTS).await;
    assert_eq!(
        (&rows[0][1], &rows[0][3]),
        (&Value::Text("Shoe".into()), &Value::Number(99.0)),
        "name kept, price updated"
    );
    // Another tenant's data is its own.
    let b = tenant(&s, 4).await;
    assert!(exported(&s, b, &index::PRODUCTS).await.is_empty());
}

pub async fn rejects_summary_and_paging(s: S) {
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let reject = |row: i64, code: &str, column: Option<&str>| RowReject {
        row,
        code: code.into(),
        column: column.map(Into::into),
        message: format!("m{row}"),
        raw: format!("r{row}"),
    };
    let mut rejects = vec![];
    for row in [6, 11, 13, 18, 20, 25, 30] {
        rejects.push(reject(row, "missing_identifier", None));
    }
    rejects.push(reject(4, "invalid_value", Some("price")));
    rejects.push(reject(9, "invalid_value", Some("active")));
    s.import_batch(batch(a, &c, c.fence, vec![0], vec![], rejects, 30))
        .await
        .unwrap();
    let groups = s.reject_summary(c.task.id).await.unwrap();
    let summary: Vec<(&str, Option<&str>, i64, Vec<i64>)> = groups
        .iter()
        .map(|g| {
            (
                g.code.as_str(),
                g.column.as_deref(),
                g.count,
                g.first_rows.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("invalid_value", Some("price"), 1, vec![4]),
            ("missing_identifier", None, 7, vec![6, 11, 13, 18]),
            ("invalid_value", Some("active"), 1, vec![9]),
        ]
    );
    let page1 = s.rejects(c.task.id, 0, 4).await.unwrap();
    assert_eq!(
        page1.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![4, 6, 9, 11]
    );
    let page2 = s.rejects(c.task.id, 11, 100).await.unwrap();
    assert_eq!(
        page2.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![13, 18, 20, 25, 30]
    );
    assert_eq!(
        (page2[0].message.as_str(), page2[0].raw.as_str()),
        ("m13", "r13")
    );
    s.clear_rejects(c.task.id, c.fence).await.unwrap();
    assert!(s.reject_summary(c.task.id).await.unwrap().is_empty());
}

pub async fn dry_run_and_counts(s: S) {
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let mut b = batch(
        a,
        &c,
        c.fence,
        vec![0, 1, 3],
        vec![product_row(2, "p1", Some("x"), Some(1.0))],
        vec![],
        1,
    );
    b.dry_run = true;
    assert_eq!(s.import_batch(b).await.unwrap().applied, 1);
    assert_eq!(s.count_rows(a, &index::PRODUCTS, None).await.unwrap(), 0);
    assert_eq!(
        get(&s, a, c.task.id).await.checkpoint,
        Some(json!({"rows": 1})),
        "the checkpoint still moves"
    );
    s.import_batch(batch(
        a,
        &c,
        c.fence,
        vec![0, 1, 3],
        vec![
            product_row(2, "p1", Some("x"), Some(1.0)),
            product_row(3, "p2", None, None),
        ],
        vec![],
        2,
    ))
    .await
    .unwrap();
    assert_eq!(s.count_rows(a, &index::PRODUCTS, None).await.unwrap(), 2);
}

pub async fn export_every_type_in_key_order(s: S) {
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    for idx in index::ALL {
        // Two rows per index, given out of key order, one with every column
        // set to a value of its type and one with only the key.
        let full: Vec<Value> = idx
            .columns
            .iter()
            .enumerate()
            .map(|(i, col)| match (i, col.ty) {
                (0, _) => Value::Text("k2".into()),
                (1, _) if idx.is_key(1) => Value::Text("m".into()),
                (_, index::ColumnType::Text) => {
                    Value::Text(format!("{} é, \"quoted\"\ttab\\\\back\nline\r", col.name))
                }
                (_, index::ColumnType::Integer) => Value::Integer(-42),
                (_, index::ColumnType::Number) => Value::Number(12.25),
                (_, index::ColumnType::Boolean) => Value::Boolean(true),
                (_, index::ColumnType::Time) => Value::Time(1_767_225_600_123_456),
                (_, index::ColumnType::Json) => Value::Json(r#"{"tier":"gold"}"#.into()),
            })
            .collect();
        let columns: Vec<usize> = (0..idx.columns.len()).collect();
        let mut key_only = vec![Value::Null; idx.columns.len()];
        key_only[0] = Value::Text("k1".into());
        if idx.is_key(1) {
            key_only[1] = Value::Text("m".into());
        }
        let rows = vec![
            ImportRow {
                row: 2,
                values: full.clone(),
                raw: String::new(),
            },
            ImportRow {
                row: 3,
                values: key_only.clone(),
                raw: String::new(),
            },
        ];
        let out = s
            .import_batch(ImportBatch {
                tenant_id: a,
                task_id: c.task.id,
                fence: c.fence,
                index: idx,
                columns,
                rows,
                rejects: vec![],
                run_tag: c.fence,
                dry_run: false,
                checkpoint: json!({}),
                progress_done: 0,
            })
            .await
            .unwrap();
        assert_eq!(out.applied, 2, "{}", idx.name);
        let got = exported(&s, a, idx).await;
        assert_eq!(s.count_rows(a, idx, None).await.unwrap(), 2);
        assert_eq!(got[0], key_only, "{}", idx.name);
        let mut want = full.clone();
        // JSON may be re-serialised by the backend: compare it as JSON.
        for (w, g) in want.iter_mut().zip(&got[1]) {
            if let (Value::Json(a), Value::Json(b)) = (&*w, g) {
                let (ja, jb): (serde_json::Value, serde_json::Value) = (
                    serde_json::from_str(a).unwrap(),
                    serde_json::from_str(b).unwrap(),
                );
                assert_eq!(ja, jb);
                *w = g.clone();
            }
        }
        assert_eq!(got[1], want, "{}", idx.name);
    }
}

pub async fn segment_filters(s: S) {
    use datask_core::segment;
    let a = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    // products: product_id, name, category, price, currency, active, created_at
    let row = |n: i64,
               key: &str,
               name: Option<&str>,
               price: Option<f64>,
               active: Option<bool>,
               days_ago: Option<i64>| ImportRow {
        row: n,
        values: vec![
            Value::Text(key.into()),
            name.map(|x| Value::Text(x.into())).unwrap_or(Value::Null),
            Value::Null,
            price.map(Value::Number).unwrap_or(Value::Null),
            Value::Text("EUR".into()),
            active.map(Value::Boolean).unwrap_or(Value::Null),
            days_ago
                .map(|d| Value::Time(t0().as_microsecond() - d * 86_400_000_000))
                .unwrap_or(Value::Null),
        ],
        raw: String::new(),
    };
    let rows = vec![
        row(2, "p1", Some("Red Shoe"), Some(10.0), Some(true), Some(1)),
        row(3, "p2", Some("red hat"), Some(25.5), Some(false), Some(10)),
        row(4, "p3", Some("Blue Shoe"), None, None, Some(40)),
        row(5, "p4", None, Some(99.0), Some(true), None),
    ];
    let mut b = batch(a, &c, c.fence, (0..7).collect(), rows, vec![], 4);
    b.index = &index::PRODUCTS;
    s.import_batch(b).await.unwrap();
    let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
        (
            json!({"field": "price", "op": "gte", "value": 25.5}),
            vec!["p2", "p4"],
        ),
        (
            json!({"field": "price", "op": "lt", "value": 20}),
            vec!["p1"],
        ),
        (
            json!({"field": "name", "op": "contains", "value": "Shoe"}),
            vec!["p1", "p3"],
        ),
        (
            json!({"field": "name", "op": "contains", "value": "shoe"}),
            vec![],
        ),
        (
            json!({"field": "name", "op": "starts_with", "value": "red"}),
            vec!["p2"],
        ),
        (
            json!({"field": "active", "op": "eq", "value": true}),
            vec!["p1", "p4"],
        ),
        (json!({"field": "price", "op": "is_null"}), vec!["p3"]),
        (
            json!({"field": "name", "op": "not_null"}),
            vec!["p1", "p2", "p3"],
        ),
        (
            json!({"field": "product_id", "op": "in", "value": ["p2", "p4", "p9"]}),
            vec!["p2", "p4"],
        ),
        (
            json!({"field": "product_id", "op": "not_in", "value": ["p2"]}),
            vec!["p1", "p3", "p4"],
        ),
        (
            json!({"field": "created_at", "op": "within_days", "value": 15}),
            vec!["p1", "p2"],
        ),
        (
            json!({"field": "created_at", "op": "before", "value": "2026-02-15T00:00:00Z"}),
            vec!["p3"],
        ),
        (
            json!({"field": "created_at", "op": "after", "value": "2026-02-25"}),
            vec!["p1"],
        ),
        (
            json!({"not": {"field": "active", "op": "eq", "value": true}}),
            vec!["p2", "p3"],
        ),
        (
            json!({"field": "active", "op": "ne", "value": true}),
            vec!["p2"],
        ),
        (
            json!({"any": [{"field": "price", "op": "gt", "value": 50}, {"all": [{"field": "active", "op": "eq", "value": false}, {"field": "name", "op": "contains", "value": "hat"}]}]}),
            vec!["p2", "p4"],
        ),
        (json!({"all": []}), vec!["p1", "p2", "p3", "p4"]),
        (
            json!({"field": "name", "op": "eq", "value": "x' OR '1'='1"}),
            vec![],
        ),
    ];
    for (seg, want) in cases {
        let f = segment::parse(&index::PRODUCTS, &seg, "segment", t0()).unwrap();
        let got: Vec<String> = exported_filtered(&s, a, &f).await;
        assert_eq!(got, want, "{seg}");
        assert_eq!(
            s.count_rows(a, &index::PRODUCTS, Some(&f)).await.unwrap(),
            want.len() as i64,
            "{seg}"
        );
    }
}

async fn exported_filtered(s: &S, tenant: i64, f: &datask_core::segment::Filter) -> Vec<String> {
    use futures::StreamExt;
    let mut out = vec![];
    let mut stream = s
        .export_rows(tenant, &index::PRODUCTS, Some(f))
        .await
        .unwrap();
    while let Some(b) = stream.next().await {
        for row in b.unwrap() {
            if let Value::Text(k) = &row[0] {
                out.push(k.clone());
            }
        }
    }
    out
}

/// Keys of `idx` rows matching `f`, in key order (first key column).
async fn keys_matching(
    s: &S,
    tenant: i64,
    idx: &'static index::IndexDef,
    f: &datask_core::segment::Filter,
) -> Vec<String> {
    use futures::StreamExt;
    let mut out = vec![];
    let mut stream = s.export_rows(tenant, idx, Some(f)).await.unwrap();
    while let Some(b) = stream.next().await {
        for row in b.unwrap() {
            if let Value::Text(k) = &row[0] {
                out.push(k.clone());
            }
        }
    }
    out
}

/// Writes `rows` (values for every column) into `idx` in one batch.
async fn load(
    s: &S,
    tenant: i64,
    c: &ClaimedTask,
    idx: &'static index::IndexDef,
    rows: Vec<Vec<Value>>,
) {
    let rows = rows
        .into_iter()
        .enumerate()
        .map(|(i, values)| ImportRow {
            row: i as i64 + 2,
            values,
            raw: String::new(),
        })
        .collect();
    let mut b = batch(
        tenant,
        c,
        c.fence,
        (0..idx.columns.len()).collect(),
        rows,
        vec![],
        0,
    );
    b.index = idx;
    let out = s.import_batch(b).await.unwrap();
    assert_eq!(out.duplicates, 0);
}

/// Segments over custom attributes (the JSON type is checked: a value of
/// another type never matches), lists, channel eligibility and rows owned by
/// profiles give the same rows on every store; deletions and erasures by
/// filter touch exactly those rows.
pub async fn profile_segments_and_erasure(s: S) {
    use datask_core::segment::{self, Channel, Filter};
    use datask_core::settings::{Attribute, AttributeType};
    let a = tenant(&s, 4).await;
    let other = tenant(&s, 4).await;
    insert(&s, new_task(a, at(0))).await;
    let c = claim_one(&s, at(0)).await;
    let text = |v: &str| Value::Text(v.into());
    let profile = |id: &str,
                   email: Option<&str>,
                   email_in: bool,
                   mobile: Option<&str>,
                   sms_in: bool,
                   attrs: &str| {
        let mut v = vec![Value::Null; index::USERS.columns.len()];
        v[0] = text(id);
        v[1] = email.map(text).unwrap_or(Value::Null);
        v[2] = mobile.map(text).unwrap_or(Value::Null);
        v[3] = text(&format!("First {id}"));
        v[8] = Value::Boolean(email_in);
        v[9] = Value::Boolean(sms_in);
        v[13] = if attrs.is_empty() {
            Value::Null
        } else {
            Value::Json(attrs.into())
        };
        v
    };
    load(&s, a, &c, &index::USERS, vec![
        profile("u1", Some("a@x.io"), true, None, false, r#"{"ltv": 120.5, "tier": "gold", "vip": true, "since": "2024-01-02T00:00:00Z", "nick": "Al"}"#),
        profile("u2", Some("b@x.io"), false, Some("+311"), true, r#"{"ltv": 80, "tier": "silver", "vip": false, "since": "2025-06-01T00:00:00Z"}"#),
        profile("u3", Some(""), true, Some("+312"), true, r#"{"ltv": "lots", "tier": 7, "vip": "yes"}"#),
        profile("u4", None, true, Some(""), true, ""),
    ]).await;
    let device = |id: &str, user: &str, push: bool| {
        vec![
            text(id),
            text(user),
            text("ios"),
            text("tok"),
            Value::Boolean(push),
            Value::Null,
            Value::Null,
        ]
    };
    load(
        &s,
        a,
        &c,
        &index::DEVICES,
        vec![
            device("d1", "u1", true),
            device("d2", "u2", false),
            device("d3", "u3", true),
            device("d4", "u3", true),
        ],
    )
    .await;
    let member = |list: &str, user: &str| vec![text(list), text(user), Value::Null];
    load(
        &s,
        a,
        &c,
        &index::LIST_MEMBERS,
        vec![
            member("vip", "u1"),
            member("vip", "u4"),
            member("old", "u2"),
        ],
    )
    .await;
    // The same key in another tenant must never show.
    load(
        &s,
        other,
        &c,
        &index::LIST_MEMBERS,
        vec![member("vip", "u2")],
    )
    .await;

    let attrs = vec![
        Attribute {
            name: "ltv".into(),
            ty: AttributeType::Number,
            enabled: true,
            pii: false,
        },
        Attribute {
            name: "tier".into(),
            ty: AttributeType::String,
            enabled: true,
            pii: false,
        },
        Attribute {
            name: "vip".into(),
            ty: AttributeType::Boolean,
            enabled: true,
            pii: false,
        },
        Attribute {
            name: "since".into(),
            ty: AttributeType::Date,
            enabled: true,
            pii: false,
        },
        Attribute {
            name: "nick".into(),
            ty: AttributeType::String,
            enabled: true,
            pii: true,
        },
    ];
    let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
        (
            json!({"field": "ltv", "op": "gte", "value": 80}),
            vec!["u1", "u2"],
        ),
        (
            json!({"field": "ltv", "op": "lt", "value": 100}),
            vec!["u2"],
        ),
        (
            json!({"field": "tier", "op": "eq", "value": "gold"}),
            vec!["u1"],
        ),
        // u3's tier is a number and u4 has none: both are "not gold".
        (
            json!({"not": {"field": "tier", "op": "eq", "value": "gold"}}),
            vec!["u2", "u3", "u4"],
        ),
        (
            json!({"any": [{"field": "tier", "op": "eq", "value": "7"}, {"not": {"field": "tier", "op": "starts_with", "value": "g"}}]}),
            vec!["u2", "u3", "u4"],
        ),
        (
            json!({"field": "tier", "op": "in", "value": ["gold", "silver", "7"]}),
            vec!["u1", "u2"],
        ),
        (
            json!({"field": "tier", "op": "starts_with", "value": "sil"}),
            vec!["u2"],
        ),
        (
            json!({"field": "vip", "op": "eq", "value": true}),
            vec!["u1"],
        ),
        (
            json!({"field": "vip", "op": "eq", "value": false}),
            vec!["u2"],
        ),
        (
            json!({"field": "since", "op": "before", "value": "2025-01-01"}),
            vec!["u1"],
        ),
        (
            json!({"field": "since", "op": "after", "value": "2024-01-02"}),
            vec!["u2"],
        ),
        (json!({"field": "ltv", "op": "is_null"}), vec!["u3", "u4"]),
        (
            json!({"field": "user_id", "op": "in_list", "value": "vip"}),
            vec!["u1", "u4"],
        ),
        (
            json!({"not": {"field": "user_id", "op": "in_list", "value": "vip"}}),
            vec!["u2", "u3"],
        ),
        (
            json!({"all": [{"field": "user_id", "op": "in_list", "value": "vip"}, {"field": "ltv", "op": "gt", "value": 0}]}),
            vec!["u1"],
        ),
    ];
    for (seg, want) in cases {
        let f = segment::parse_with(&index::USERS, &attrs, &seg, "segment", t0()).unwrap();
        assert_eq!(keys_matching(&s, a, &index::USERS, &f).await, want, "{seg}");
        assert_eq!(
            s.count_rows(a, &index::USERS, Some(&f)).await.unwrap(),
            want.len() as i64,
            "{seg}"
        );
    }
    for (channel, want) in [
        (Channel::Email, vec!["u1"]),
        (Channel::Sms, vec!["u2", "u3"]),
        (Channel::Push, vec!["u1", "u3"]),
    ] {
        assert_eq!(
            keys_matching(&s, a, &index::USERS, &Filter::Eligible(channel)).await,
            want,
            "{channel:?}"
        );
    }
    let vip = segment::parse_with(
        &index::USERS,
        &attrs,
        &json!({"field": "ltv", "op": "gte", "value": 0}),
        "s",
        t0(),
    )
    .unwrap();
    let owned = Filter::OwnedBy(Box::new(vip.clone()));
    assert_eq!(
        keys_matching(&s, a, &index::DEVICES, &owned).await,
        vec!["d1", "d2"]
    );

    let mut found = s
        .lookup_profiles(
            a,
            "email",
            vec!["a@x.io".into(), "zz@x.io".into(), "b@x.io".into()],
        )
        .await
        .unwrap();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("a@x.io".into(), "u1".into()),
            ("b@x.io".into(), "u2".into())
        ]
    );
    assert!(
        s.lookup_profiles(other, "user_id", vec!["u1".into()])
            .await
            .unwrap()
            .is_empty()
    );

    // Erase u1 and u3: PII columns and the `nick` attribute go.
    let erase = Filter::In {
        column: segment::Field::Column("user_id"),
        negated: false,
        values: vec![
            segment::Bound::Text("u1".into()),
            segment::Bound::Text("u3".into()),
        ],
    };
    let n = s
        .clear_fields(
            a,
            &index::USERS,
            &erase,
            &["email", "first_name"],
            &["nick".into(), "absent".into()],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let rows = exported(&s, a, &index::USERS).await;
    assert_eq!(rows[0][1], Value::Null);
    assert_eq!(rows[0][3], Value::Null);
    let attrs_u1: serde_json::Value = match &rows[0][13] {
        Value::Json(j) => serde_json::from_str(j).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        attrs_u1,
        json!({"ltv": 120.5, "tier": "gold", "vip": true, "since": "2024-01-02T00:00:00Z"})
    );
    assert_eq!(rows[1][1], text("b@x.io"), "others untouched");
    assert_eq!(
        s.delete_rows(
            a,
            &index::DEVICES,
            &Filter::OwnedBy(Box::new(erase.clone()))
        )
        .await
        .unwrap(),
        3
    );
    assert_eq!(
        s.delete_rows(a, &index::LIST_MEMBERS, &erase)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.count_rows(a, &index::DEVICES, None).await.unwrap(), 1);
    assert_eq!(
        s.count_rows(other, &index::LIST_MEMBERS, None)
            .await
            .unwrap(),
        1,
        "another tenant's rows stay"
    );
}

pub async fn saved_segments(s: S) {
    let a = tenant(&s, 4).await;
    let b = tenant(&s, 4).await;
    let f = json!({"all": [{"field": "country", "op": "eq", "value": "NL"}]});
    let one = s
        .create_segment(a, "Dutch".into(), f.clone(), at(0))
        .await
        .unwrap();
    let two = s
        .create_segment(a, "All".into(), json!({"all": []}), at(1))
        .await
        .unwrap();
    assert_eq!(
        (one.name.as_str(), &one.filter, one.created_at),
        ("Dutch", &f, at(0))
    );
    assert_eq!(s.get_segment(a, one.id).await.unwrap(), Some(one.clone()));
    assert_eq!(s.get_segment(b, one.id).await.unwrap(), None);
    let all = s.list_segments(a).await.unwrap();
    assert_eq!(
        all.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![one.id, two.id]
    );
    assert!(s.list_segments(b).await.unwrap().is_empty());
    let changed = s
        .update_segment(a, one.id, "NL".into(), json!({"any": []}), at(5))
        .await
        .unwrap();
    assert_eq!(
        (
            changed.name.as_str(),
            changed.created_at,
            changed.updated_at
        ),
        ("NL", at(0), at(5))
    );
    assert!(matches!(
        s.update_segment(b, one.id, "x".into(), json!({}), at(6))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_segment(b, one.id).await,
        Err(StoreError::NotFound)
    ));
    s.delete_segment(a, one.id).await.unwrap();
    assert_eq!(s.get_segment(a, one.id).await.unwrap(), None);
    assert!(matches!(
        s.delete_segment(a, one.id).await,
        Err(StoreError::NotFound)
    ));
}

/// Everything one claim can take at `now`.
async fn claim_all(s: &S, now: Timestamp) -> Vec<ClaimedTask> {
    s.claim("w", 100, Duration::from_secs(30), now)
        .await
        .unwrap()
}

pub async fn complete_many_and_running_counts(s: S) {
    let a = tenant(&s, 3).await;
    for _ in 0..8 {
        insert(&s, new_task(a, at(0))).await;
    }
    let first = claim_all(&s, at(1)).await;
    assert_eq!(first.len(), 3, "the tenant's limit");
    assert!(claim_all(&s, at(1)).await.is_empty());

    // One batch: two right fences, one stale. The stale one is reported
    // and left alone; the others are recorded with their own logs.
    let (x, y, z) = (&first[0], &first[1], &first[2]);
    let mut failed = done(TaskState::Error, at(2));
    failed.errors.insert("rows".into(), json!(["row 2: bad"]));
    failed.logs = vec![LogEntry::new("completed with errors", at(2))];
    let lost = s
        .complete_many(vec![
            Finished {
                id: x.task.id,
                fence: x.fence,
                completion: done(TaskState::Done, at(2)),
            },
            Finished {
                id: y.task.id,
                fence: y.fence + 1_000,
                completion: done(TaskState::Done, at(2)),
            },
            Finished {
                id: z.task.id,
                fence: z.fence,
                completion: failed,
            },
        ])
        .await
        .unwrap();
    assert_eq!(lost, vec![y.task.id]);
    assert_eq!(get(&s, a, x.task.id).await.state, TaskState::Done);
    assert_eq!(get(&s, a, y.task.id).await.state, TaskState::InProgress);
    let zt = get(&s, a, z.task.id).await;
    assert_eq!(zt.state, TaskState::Error);
    assert_eq!(zt.errors["rows"], json!(["row 2: bad"]));
    assert_eq!(
        &msgs(&zt)[msgs(&zt).len() - 2..],
        ["INPROGRESS -> ERROR", "completed with errors"]
    );
    assert!(s.complete_many(vec![]).await.unwrap().is_empty());

    // Every way out of INPROGRESS frees a slot, and only one.
    let next = claim_all(&s, at(3)).await;
    assert_eq!(next.len(), 2, "two finished, two slots");
    s.retry_later(next[0].task.id, next[0].fence, at(1000), vec![])
        .await
        .unwrap();
    s.release(next[1].task.id, next[1].fence, vec![])
        .await
        .unwrap();
    let again = claim_all(&s, at(4)).await;
    assert_eq!(again.len(), 2, "retry and release freed one slot each");
    // The lease of everything running expires: all three come back.
    assert_eq!(s.reclaim_expired(at(100)).await.unwrap().len(), 3);
    assert_eq!(claim_all(&s, at(101)).await.len(), 3);
    assert!(claim_all(&s, at(101)).await.is_empty());
}

pub async fn insert_tasks_in_bulk(s: S) {
    let a = tenant(&s, 100).await;
    let b = tenant(&s, 100).await;
    assert!(s.insert_tasks(vec![], t0()).await.unwrap().is_empty());
    // One batch wakes a waiting worker.
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            s.wait_for_work(Duration::from_secs(5)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let keyed = |tenant, key: &str, desc: &str| NewTask {
        idempotency_key: Some(key.into()),
        desc: desc.into(),
        ..new_task(tenant, at(0))
    };
    let stored = s.insert_task(keyed(a, "k0", "stored"), t0()).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");

    let mut repeating = new_task(a, at(60));
    repeating.trigger = Trigger {
        once: Some(at(60)),
        repeat: Some(Repeat::Daily),
        ..Default::default()
    };
    let batch = vec![
        new_task(a, at(0)),
        keyed(a, "k1", "first"),
        repeating,
        keyed(a, "k1", "repeat"),
        keyed(b, "k1", "other tenant"),
        keyed(a, "k0", "repeat of a stored one"),
        new_task(a, at(0)),
    ];
    let got = s.insert_tasks(batch, at(5)).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.created).collect::<Vec<_>>(),
        [true, true, true, false, true, false, true]
    );
    assert_eq!(
        got[3].id, got[1].id,
        "a key repeated in the batch is its first task"
    );
    assert_eq!(
        got[5].id, stored.task.id,
        "a stored key answers the stored task"
    );
    let created: Vec<i64> = got.iter().filter(|e| e.created).map(|e| e.id).collect();
    assert!(
        created.windows(2).all(|w| w[0] < w[1]),
        "ids rise in the batch's order: {created:?}"
    );
    let first = get(&s, a, got[1].id).await;
    assert_eq!(first.desc, "first");
    assert_eq!(
        (first.state, first.version, first.attempts),
        (TaskState::Ready, 1, 0)
    );
    assert!(first.logs.is_empty());
    assert_eq!((first.created_at, first.run_at), (at(5), at(0)));
    let rep = get(&s, a, got[2].id).await;
    assert_eq!(rep.schedule_anchor, Some(at(60)));
    assert_eq!(get(&s, b, got[4].id).await.desc, "other tenant");
    assert_eq!(get(&s, a, stored.task.id).await.desc, "stored");
    // The batch is one queue with the rest: due ones in (priority, run_at, id) order.
    let claimed: Vec<i64> = claim_all(&s, at(10))
        .await
        .iter()
        .map(|c| c.task.id)
        .collect();
    assert_eq!(
        claimed,
        [stored.task.id, got[0].id, got[1].id, got[4].id, got[6].id]
    );

    // All or none: a task of a tenant that does not exist fails the batch.
    let count = |s: S, t| async move {
        s.list_tasks(
            t,
            &TaskFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .len()
    };
    let before = count(s.clone(), a).await;
    let bad = vec![
        new_task(a, at(0)),
        keyed(a, "k9", "x"),
        new_task(a + b + 1_000, at(0)),
    ];
    assert!(s.insert_tasks(bad, at(5)).await.is_err());
    assert_eq!(count(s.clone(), a).await, before);
    let retried = s
        .insert_tasks(vec![keyed(a, "k9", "y")], at(5))
        .await
        .unwrap();
    assert!(retried[0].created, "the failed batch left no key behind");
}

pub async fn complete_and_claim_in_one_trip(s: S) {
    let a = tenant(&s, 2).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(insert(&s, new_task(a, at(i))).await);
    }
    let lease = Duration::from_secs(30);
    let first = s.claim("w", 10, lease, at(10)).await.unwrap();
    assert_eq!(first.len(), 2, "the tenant's limit");
    let (x, y) = (&first[0], &first[1]);

    // One end recorded, one with a stale fence: the claim sees the one slot
    // the recorded end freed (the stale one still runs), in queue order.
    let (lost, claimed) = s
        .complete_and_claim(
            vec![
                ended(x.task.id, x.fence, TaskState::Done, at(11)),
                ended(y.task.id, y.fence + 1_000, TaskState::Done, at(11)),
            ],
            "w2",
            10,
            lease,
            at(11),
        )
        .await
        .unwrap();
    assert_eq!(lost, vec![y.task.id]);
    assert_eq!(get(&s, a, x.task.id).await.state, TaskState::Done);
    assert_eq!(get(&s, a, y.task.id).await.state, TaskState::InProgress);
    let claimed_ids: Vec<_> = claimed.iter().map(|c| c.task.id).collect();
    assert_eq!(
        claimed_ids,
        vec![ids[2]],
        "one freed slot, the next in line"
    );
    let c = &claimed[0];
    assert_eq!(c.task.state, TaskState::InProgress);
    assert_eq!(c.task.attempts, 1);
    assert!(c.fence > y.fence, "a fresh fence");
    assert_eq!(
        msgs(&get(&s, a, c.task.id).await)
            .last()
            .map(String::as_str),
        Some("READY -> INPROGRESS")
    );

    // Limit 0: the ends alone.
    let (lost, claimed) = s
        .complete_and_claim(
            vec![ended(y.task.id, y.fence, TaskState::Error, at(12))],
            "w",
            0,
            lease,
            at(12),
        )
        .await
        .unwrap();
    assert!(lost.is_empty() && claimed.is_empty());
    assert_eq!(get(&s, a, y.task.id).await.state, TaskState::Error);

    // No ends, a claim alone; then nothing left to end or claim.
    let (lost, claimed) = s
        .complete_and_claim(vec![], "w", 10, lease, at(13))
        .await
        .unwrap();
    assert!(lost.is_empty());
    assert_eq!(claimed.len(), 1, "one slot free again");
    let (c1, c2) = (&claimed[0], claim_all(&s, at(13)).await);
    assert!(c2.is_empty(), "the tenant is full");
    let (_, claimed) = s
        .complete_and_claim(
            vec![ended(c1.task.id, c1.fence, TaskState::Done, at(14))],
            "w",
            10,
            lease,
            at(14),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the last task");
    assert_eq!(claimed[0].task.id, ids[4]);
}
