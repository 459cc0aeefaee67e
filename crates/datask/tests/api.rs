//! The REST API end to end over HTTP, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::{Backend, ROOT_KEY, start, synth_csv};
use datask_core::index;
use serde_json::{Value, json};

on_both_stores!(
    export_workflow_of_the_second_seed,
    export_formats_hold_every_row,
    import_reports_rejected_rows_and_failed_rows_file,
    import_dry_run_writes_nothing,
    bad_requests_name_what_is_wrong,
    credentials_and_tenants,
    update_with_stale_version_conflicts,
    idempotency_key_returns_the_first_task,
    list_filters_and_cursor,
    cancel_and_execute_and_delete,
    repeating_task_returns_to_ready,
    signed_downloads_refuse_tampering_and_serve_ranges,
    uploads_refuse_binary_and_empty_files,
    events_stream_until_the_task_finishes,
    events_tell_each_run_of_a_repeating_task,
    query_dialect_of_the_first_seed,
    query_dialect_refuses_what_is_not_on_its_lists,
    access_matrix,
    tenant_settings,
    export_of_a_segment,
    oversized_and_incomplete_bodies,
    a_cancelled_import_says_what_it_wrote,
    an_overlong_row_is_the_files_problem,
);

/// Reads a CSV into rows of cells, numbers normalised so `3.50` equals `3.5`.
fn csv_rows(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    r.records()
        .map(|rec| {
            rec.unwrap()
                .iter()
                .map(|cell| match cell.parse::<f64>() {
                    Ok(f) if !cell.is_empty() => format!("{f}"),
                    _ => cell.to_string(),
                })
                .collect()
        })
        .collect()
}

async fn export_workflow_of_the_second_seed(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let input = synth_csv(&index::TRANSACTIONS, 2_000, 1);
    let imported = s.import(&t, "transactions", input.clone()).await;
    assert_eq!(imported["state"]["code"], "DONE", "{imported}");

    // Create an export a moment in the future, as the seed's workflow does.
    let once = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1)).to_string();
    let task = s
        .create(
            &t.key,
            json!({ "desc": "all transactions", "trigger": { "once": once },
                    "target": { "action": "export", "export_index": "transactions", "export_format": "csv" } }),
        )
        .await;
    assert_eq!(task["state"]["code"], "READY");
    assert_eq!(task["chain"], t.id);
    let id = task["id"].as_i64().unwrap();
    let done = s.wait(&t.key, id, 30).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["result"], format!("transactions-{id}.csv"));
    let msgs: Vec<&str> = done["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    assert_eq!(
        msgs,
        ["READY -> INPROGRESS", "INPROGRESS -> DONE", "success"]
    );
    // This process's engine ran the import and the export.
    let metrics = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("datask_tasks_claimed_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("datask_tasks_finished_total{state=\"DONE\"} 2\n"),
        "{metrics}"
    );
    let last = done["logs"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (
            last["total"].as_i64(),
            last["success"].as_i64(),
            last["errors"].as_i64()
        ),
        (Some(2000), Some(2000), Some(0))
    );

    let file = s.download(&t.key, id).await;
    // The export holds exactly the imported rows (synth keys are in key order).
    assert_eq!(csv_rows(&file), csv_rows(&input));
    let header = std::str::from_utf8(&file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        header,
        "transaction_id,user_id,store_id,amount,currency,status,created_at"
    );
    s.stop().await;
}

async fn export_formats_hold_every_row(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    assert_eq!(
        s.import(&t, "products", synth_csv(&index::PRODUCTS, 300, 2))
            .await["state"]["code"],
        "DONE"
    );
    for format in ["json", "jsonl"] {
        let task = s.create(&t.key, json!({ "identifier": "export", "target": { "export_index": "products", "export_format": format } })).await;
        let id = task["id"].as_i64().unwrap();
        assert_eq!(s.wait(&t.key, id, 30).await["state"]["code"], "DONE");
        let bytes = s.download(&t.key, id).await;
        let rows: Vec<Value> = if format == "json" {
            serde_json::from_slice(&bytes).unwrap()
        } else {
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect()
        };
        assert_eq!(rows.len(), 300, "{format}");
        assert_eq!(rows[0]["product_id"], "p00000000");
        assert_eq!(rows[299]["product_id"], "p00000299");
    }
    // An empty index exports a file with a header only.
    let task = s.create(&t.key, json!({ "target": { "action": "export", "export_index": "vouchers", "export_format": "csv" } })).await;
    let id = task["id"].as_i64().unwrap();
    assert_eq!(s.wait(&t.key, id, 30).await["state"]["code"], "DONE");
    let bytes = s.download(&t.key, id).await;
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap().trim_end(),
        "voucher_id,user_id,code,value,currency,status,issued_at,expires_at,redeemed_at"
    );
    s.stop().await;
}

async fn import_reports_rejected_rows_and_failed_rows_file(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let csv = "product_id,name,price,active\n\
               p1,Shoe,10.5,true\n\
               ,Nameless,1,true\n\
               p2,Hat,abc,false\n\
               p1,Shoe again,11,true\n\
               p3,Bag,20,yes\n";
    let done = s.import(&t, "products", csv.as_bytes().to_vec()).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    let rows = done["errors"]["file[rows]"].as_array().unwrap();
    let rows: Vec<&str> = rows.iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(
        rows,
        [
            "Rows must contain identifier (Row 3)",
            "Rows have an invalid value in column 'price' (Row 4)",
            "Rows are duplicates (Row 5)"
        ]
    );
    let last = done["logs"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (
            last["total"].as_i64(),
            last["success"].as_i64(),
            last["errors"].as_i64()
        ),
        (Some(5), Some(2), Some(3))
    );
    assert_eq!(done["result"], format!("failed-rows-{}.csv", done["id"]));
    let failed = String::from_utf8(s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    let lines: Vec<&str> = failed.lines().collect();
    assert_eq!(
        lines[0],
        "_row,_error_code,_error,product_id,name,price,active"
    );
    assert_eq!(lines.len(), 4, "{failed}");
    assert!(lines[1].starts_with("3,missing_identifier,"), "{failed}");
    assert!(
        lines[2].starts_with("4,invalid_value,") && lines[2].ends_with("p2,Hat,abc,false"),
        "{failed}"
    );
    assert!(
        lines[3].starts_with("5,duplicate,") && lines[3].ends_with("p1,Shoe again,11,true"),
        "{failed}"
    );

    // The good rows were applied; the first of two rows sharing a key won.
    let export = s.create(&t.key, json!({ "target": { "action": "export", "export_index": "products", "export_format": "json" } })).await;
    let id = export["id"].as_i64().unwrap();
    s.wait(&t.key, id, 30).await;
    let rows: Vec<Value> = serde_json::from_slice(&s.download(&t.key, id).await).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0]["product_id"].as_str(),
            rows[0]["name"].as_str(),
            rows[0]["price"].as_f64()
        ),
        (Some("p1"), Some("Shoe"), Some(10.5))
    );
    assert_eq!(
        (rows[1]["product_id"].as_str(), rows[1]["active"].as_bool()),
        (Some("p3"), Some(true))
    );

    // Unknown columns are reported before any row is written.
    let bad = s
        .import(
            &t,
            "products",
            b"product_id,first.name,LTV\np9,x,1\n".to_vec(),
        )
        .await;
    assert_eq!(bad["state"]["code"], "ERROR");
    let cols: Vec<&str> = bad["errors"]["file[columns]"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cols.len(), 2, "{cols:?}");
    assert!(
        cols[0].contains("'first.name'") && cols[1].contains("'LTV'"),
        "{cols:?}"
    );
    // Either column of a two-column key empty: one problem, one line.
    let members = s
        .import(
            &t,
            "list-members",
            b"list_id,user_id\nl1,u1\n,u2\nl1,\nl1,u3\n".to_vec(),
        )
        .await;
    assert_eq!(
        members["errors"]["file[rows]"],
        json!(["2 Rows must contain identifier ( Row 3, Row 4)"]),
        "{members}"
    );
    s.stop().await;
}

async fn import_dry_run_writes_nothing(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    s.synth_attributes(&t).await;
    let upload = s
        .upload(&t.key, "u.csv", synth_csv(&index::USERS, 50, 3))
        .await;
    let task = s.create(&t.key, json!({ "target": { "action": "import", "import_index": "users", "upload_id": upload, "dry_run": true } })).await;
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 30).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["output"]["rows"], 50);
    assert_eq!(done["output"]["dry_run"], true);
    assert_eq!(
        s.store.count_rows(t.id, &index::USERS, None).await.unwrap(),
        0
    );
    s.stop().await;
}

async fn bad_requests_name_what_is_wrong(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let export = |extra: Value| {
        let mut task = json!({ "target": { "action": "export", "export_index": "users", "export_format": "csv" } });
        for (k, v) in extra.as_object().unwrap() {
            if k == "target" {
                for (tk, tv) in v.as_object().unwrap() {
                    task["target"][tk] = tv.clone();
                }
            } else {
                task[k] = v.clone();
            }
        }
        task
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            export(json!({ "target": { "export_index": "customers" } })),
            400,
            "target.export_index",
            "'customers'",
        ),
        (
            export(json!({ "target": { "export_format": "xml" } })),
            400,
            "target.export_format",
            "'xml'",
        ),
        (
            export(json!({ "target": { "colour": "red" } })),
            400,
            "target.colour",
            "unknown field",
        ),
        (
            export(json!({ "trigger": { "once": "tomorrow" } })),
            400,
            "trigger.once",
            "'tomorrow'",
        ),
        (
            export(json!({ "trigger": { "once": "2026-01-31T09:00:00+25:00" } })),
            400,
            "trigger.once",
            "±18:00",
        ),
        (
            json!({ "identifier": "profile_export_data", "target": { "user_id": 5 } }),
            400,
            "target.user_id",
            "must be a string, not 5",
        ),
        (
            export(json!({ "trigger": { "timezone": "Mars/Base" } })),
            400,
            "trigger.timezone",
            "Mars/Base",
        ),
        (
            export(json!({ "trigger": { "repeat": "hourly" } })),
            400,
            "trigger.repeat",
            "'hourly'",
        ),
        (
            export(json!({ "trigger": { "often": true } })),
            400,
            "trigger",
            "often",
        ),
        (
            export(
                json!({ "trigger": { "segment": { "all": [{ "field": "colour", "op": "eq", "value": "red" }] } } }),
            ),
            400,
            "trigger.segment.all[0].field",
            "unknown field 'colour'",
        ),
        (
            export(
                json!({ "trigger": { "segment": { "field": "country", "op": "like", "value": "N%" } } }),
            ),
            400,
            "trigger.segment.op",
            "unknown op 'like'",
        ),
        (
            export(json!({ "surprise": 1 })),
            400,
            "surprise",
            "unknown field `surprise`",
        ),
        (export(json!({ "desc": 5 })), 400, "desc", "string"),
        (
            export(json!({ "max_attempts": 0 })),
            400,
            "max_attempts",
            "between",
        ),
        (
            json!({ "identifier": "teleport", "target": {} }),
            400,
            "identifier",
            "unknown identifier 'teleport'",
        ),
        (
            json!({ "identifier": "active_directory_lists_sync", "target": {} }),
            400,
            "target.list_id",
            "is required",
        ),
        (
            json!({ "identifier": "kochava_sync_installs", "target": { "url": "http://x" } }),
            400,
            "target.url",
            "unknown field",
        ),
        (
            json!({ "identifier": "import", "target": { "action": "export" } }),
            400,
            "identifier",
            "does not match",
        ),
        (
            json!({ "target": { "action": "import", "import_index": "users" } }),
            400,
            "target.upload_id",
            "required",
        ),
        (
            json!({ "target": { "action": "import", "import_index": "users", "upload_id": "nope" } }),
            400,
            "target.upload_id",
            "'nope'",
        ),
    ];
    for (body, status, field, needle) in cases {
        let (got, resp) = s.call("POST", "/tasks", &t.key, Some(body.clone())).await;
        assert_eq!(got, status, "{body} -> {resp}");
        let msg = resp["error"]["message"].as_str().unwrap_or_default();
        let f = resp["error"]["field"].as_str().unwrap_or(".");
        assert!(
            f.starts_with(field) || msg.contains(field),
            "{body}: field {f} / {msg}"
        );
        assert!(msg.contains(needle), "{body}: '{msg}' lacks '{needle}'");
    }
    // A huge wrong value is named, not echoed whole.
    let huge = "x".repeat(50_000);
    let (status, resp) = s
        .call(
            "POST",
            "/tasks",
            &t.key,
            Some(export(json!({ "target": { "export_index": huge } }))),
        )
        .await;
    assert_eq!(
        (status, resp["error"]["field"].as_str()),
        (400, Some("target.export_index"))
    );
    let msg = resp["error"]["message"].as_str().unwrap();
    assert!(
        msg.chars().count() < 2100 && msg.ends_with("(cut at 2000 characters)"),
        "{}",
        msg.len()
    );
    // Malformed JSON, wrong content type, oversized body, bad path id, bad query.
    let raw = |body: &'static str, ct: &'static str| {
        s.http
            .post(format!("{}/tasks", s.url))
            .bearer_auth(&t.key)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = raw("{\"target\": ", "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not valid JSON"));
    let r = raw("{}", "text/plain").await.unwrap();
    assert_eq!(r.status(), 415);
    // A second value or stray text after the object is refused, not ignored;
    // so is a task written as an array of its fields.
    let task =
        r#"{"target": {"action": "export", "export_index": "users", "export_format": "csv"}}"#;
    for body in [
        format!("{task}{{\"desc\": \"b\"}}"),
        format!("{task} trailing"),
    ] {
        let r = s
            .http
            .post(format!("{}/tasks", s.url))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert!(
            r.text().await.unwrap().contains("trailing characters"),
            "{body}"
        );
    }
    let r = raw(r#"["export", "as a list"]"#, "application/json")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("must be a JSON object"));
    let big = "x".repeat(100 * 1024);
    let (status, _) = s
        .call("POST", "/tasks", &t.key, Some(json!({ "desc": big })))
        .await;
    assert_eq!(status, 413);
    let (status, body) = s.call("GET", "/tasks/abc", &t.key, None).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")));
    // Not UTF-8 once decoded: still the API's error shape, naming the path.
    let (status, body) = s.call("GET", "/tasks/%ff", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("path")),
        "{body}"
    );
    let (status, body) = s.call("GET", "/tasks?state=SLEEPING", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("state"))
    );
    let (status, body) = s.call("GET", "/tasks?order=id", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("order"))
    );
    let (status, body) = s.call("GET", "/tasks?limit=100000", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("limit"))
    );
    let (status, body) = s.call("GET", "/nowhere", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (404, Some("no route for GET /nowhere"))
    );
    let (status, body) = s.call("PATCH", "/tasks/1", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (405, Some("PATCH is not allowed on /tasks/1"))
    );
    let r = s
        .http
        .post(format!("{}/uploads?name=x.csv", s.url))
        .bearer_auth(&t.key)
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "name");
    s.stop().await;
}

async fn credentials_and_tenants(b: Backend) {
    let s = start(b).await;
    let a = s.tenant("a").await;
    let other = s.tenant("b").await;
    let task = s.create(&a.key, json!({ "target": { "action": "export", "export_index": "users", "export_format": "csv" } })).await;
    let id = task["id"].as_i64().unwrap();
    // No credential, a wrong one: 401 with no detail.
    for token in ["", "dtk_priv_wrong"] {
        let (status, body) = s.call("GET", &format!("/tasks/{id}"), token, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["message"], "missing or invalid credentials");
    }
    // Another tenant's task is 404 for every route, never 403.
    for (method, path) in [
        ("GET", format!("/tasks/{id}")),
        ("PUT", format!("/tasks/{id}")),
        ("DELETE", format!("/tasks/{id}")),
        ("POST", format!("/tasks/{id}/execute")),
        ("POST", format!("/tasks/{id}/cancel")),
        ("GET", format!("/tasks/{id}/download_url")),
    ] {
        let body = (method == "PUT").then(|| json!({ "desc": "mine now" }));
        let (status, resp) = s.call(method, &path, &other.key, body).await;
        assert_eq!(status, 404, "{method} {path}: {resp}");
    }
    let (_, list) = s.call("GET", "/tasks", &other.key, None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 0);
    // The app token reads but does not write.
    let (status, _) = s
        .call("GET", &format!("/tasks/{id}"), &a.apptoken, None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .call("POST", &format!("/tasks/{id}/cancel"), &a.apptoken, None)
        .await;
    assert_eq!(status, 403);
    // Admin routes need the root key.
    let (status, _) = s
        .call(
            "POST",
            "/admin/tenants",
            &a.key,
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = s
        .call(
            "POST",
            "/admin/tenants",
            ROOT_KEY,
            Some(json!({ "name": "x", "timezone": "Nowhere/Land" })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("timezone"))
    );
    s.stop().await;
}

async fn update_with_stale_version_conflicts(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let task = s
        .create(&t.key, json!({ "desc": "v1", "trigger": { "once": later }, "target": { "action": "export", "export_index": "users", "export_format": "csv" } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    let v = task["version"].as_i64().unwrap();
    let put = |desc: &str, version: i64| json!({ "desc": desc, "version": version, "trigger": { "once": later }, "target": { "action": "export", "export_index": "users", "export_format": "json" } });
    let (status, updated) = s
        .call("PUT", &format!("/tasks/{id}"), &t.key, Some(put("v2", v)))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["desc"], "v2");
    assert_eq!(updated["target"]["export_format"], "json");
    assert_eq!(updated["version"], v + 1);
    let (status, body) = s
        .call("PUT", &format!("/tasks/{id}"), &t.key, Some(put("v3", v)))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("version is now {}", v + 1))
    );
    // A PUT keeps what it leaves out: renaming a repeating task keeps its
    // schedule, and a task as GET shows it can be sent back.
    let (status, daily) = s
        .call("PUT", &format!("/tasks/{id}"), &t.key, Some(json!({ "trigger": { "once": later, "repeat": "daily", "timezone": "Europe/Amsterdam" } })))
        .await;
    assert_eq!(status, 200, "{daily}");
    let (status, renamed) = s
        .call(
            "PUT",
            &format!("/tasks/{id}"),
            &t.key,
            Some(json!({ "desc": "nightly" })),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["desc"], "nightly");
    assert_eq!(renamed["trigger"], daily["trigger"], "{renamed}");
    assert_eq!(renamed["target"], daily["target"], "{renamed}");
    assert_eq!(renamed["state"]["code"], "READY");
    // Within the trigger too: changing the repeat keeps the time and zone.
    let (status, weekly) = s
        .call(
            "PUT",
            &format!("/tasks/{id}"),
            &t.key,
            Some(json!({ "trigger": { "repeat": "weekly" } })),
        )
        .await;
    assert_eq!(status, 200, "{weekly}");
    assert_eq!(weekly["trigger"]["repeat"], "weekly");
    assert_eq!(
        (
            &weekly["trigger"]["once"],
            &weekly["trigger"]["timezone"],
            &weekly["state"]["code"]
        ),
        (
            &daily["trigger"]["once"],
            &daily["trigger"]["timezone"],
            &json!("READY")
        ),
        "{weekly}"
    );
    let (_, daily) = s
        .call(
            "PUT",
            &format!("/tasks/{id}"),
            &t.key,
            Some(json!({ "trigger": { "repeat": "daily" } })),
        )
        .await;
    // The task exactly as GET shows it can be sent back.
    let (_, as_read) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
    let mut sent_back = as_read.clone();
    sent_back["desc"] = json!("as read");
    let (status, body) = s
        .call("PUT", &format!("/tasks/{id}"), &t.key, Some(sent_back))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["desc"].as_str(), &body["trigger"]),
        (Some("as read"), &daily["trigger"])
    );
    // A PUT that changes nothing (the task sent back as it is, or `{}`)
    // writes nothing: the version stays; a stale version is still refused.
    let version = body["version"].as_i64().unwrap();
    for same in [body.clone(), json!({})] {
        let (status, again) = s
            .call("PUT", &format!("/tasks/{id}"), &t.key, Some(same))
            .await;
        assert_eq!(
            (status, again["version"].as_i64()),
            (200, Some(version)),
            "{again}"
        );
        assert_eq!(again["desc"], "as read");
    }
    let (status, stale) = s
        .call(
            "PUT",
            &format!("/tasks/{id}"),
            &t.key,
            Some(json!({ "version": version - 1 })),
        )
        .await;
    assert_eq!(status, 409, "{stale}");
    let (status, body) = s
        .call(
            "POST",
            "/tasks",
            &t.key,
            Some(json!({ "id": 7, "target": { "action": "export", "export_index": "users" } })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("id")),
        "{body}"
    );
    let (status, body) = s
        .call(
            "PUT",
            &format!("/tasks/{id}"),
            &t.key,
            Some(json!({ "identifier": "import", "target": { "action": "import" } })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("identifier")),
        "{body}"
    );
    s.stop().await;
}

async fn idempotency_key_returns_the_first_task(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let body = json!({ "target": { "action": "export", "export_index": "users", "export_format": "csv" } });
    let send = || {
        s.http
            .post(format!("{}/tasks", s.url))
            .bearer_auth(&t.key)
            .header("Idempotency-Key", "abc-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let (_, list) = s.call("GET", "/tasks", &t.key, None).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);
    s.stop().await;
}

async fn list_filters_and_cursor(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let mut ids = Vec::new();
    for i in 0..7 {
        let index = if i % 2 == 0 { "users" } else { "products" };
        let task = s.create(&t.key, json!({ "trigger": { "once": later }, "target": { "action": "export", "export_index": index, "export_format": "csv" } })).await;
        ids.push(task["id"].as_i64().unwrap());
    }
    let (_, c) = s
        .call("POST", &format!("/tasks/{}/cancel", ids[0]), &t.key, None)
        .await;
    assert_eq!(c["state"]["code"], "CANCELLED");
    // Pages of 3, newest first, no gap and no overlap.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/tasks?limit=3&cursor={c}"),
            None => "/tasks?limit=3".to_string(),
        };
        let (status, page) = s.call("GET", &path, &t.key, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let (_, cancelled) = s.call("GET", "/tasks?state=CANCELLED", &t.key, None).await;
    assert_eq!(cancelled["tasks"].as_array().unwrap().len(), 1);
    let (_, ready) = s
        .call("GET", "/tasks?state=READY&identifier=export", &t.key, None)
        .await;
    assert_eq!(ready["tasks"].as_array().unwrap().len(), 6);
    let (_, none) = s
        .call("GET", "/tasks?identifier=import", &t.key, None)
        .await;
    assert_eq!(none["tasks"].as_array().unwrap().len(), 0);
    let (status, body) = s.call("GET", "/tasks?identifier=nope", &t.key, None).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("identifier")),
        "{body}"
    );
    let future = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2)).to_string();
    let (_, after) = s
        .call(
            "GET",
            &format!("/tasks?created_after={future}"),
            &t.key,
            None,
        )
        .await;
    assert_eq!(after["tasks"].as_array().unwrap().len(), 0);
    let (_, before) = s
        .call(
            "GET",
            &format!("/tasks?created_before={future}"),
            &t.key,
            None,
        )
        .await;
    assert_eq!(before["tasks"].as_array().unwrap().len(), 7);
    s.stop().await;
}

async fn cancel_and_execute_and_delete(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let task = s.create(&t.key, json!({ "trigger": { "once": later }, "target": { "action": "export", "export_index": "users", "export_format": "csv" } })).await;
    let id = task["id"].as_i64().unwrap();
    // Not due: it waits. Execute runs it now regardless of `once`.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, still) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
    assert_eq!(still["state"]["code"], "READY");
    let (status, _) = s
        .call("POST", &format!("/tasks/{id}/execute"), &t.key, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.wait(&t.key, id, 30).await["state"]["code"], "DONE");
    let first_run = s.files_under(&format!("results/{}/{id}", t.id));
    assert_eq!(first_run.len(), 1, "{first_run:?}");
    // Finished: cancel is a conflict; execute again re-runs it.
    let (status, _) = s
        .call("POST", &format!("/tasks/{id}/cancel"), &t.key, None)
        .await;
    assert_eq!(status, 409);
    let (status, again) = s
        .call("POST", &format!("/tasks/{id}/execute"), &t.key, None)
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["attempts"], 0,
        "a new run has all its attempts: {again}"
    );
    let done = s.wait(&t.key, id, 30).await;
    assert_eq!(done["state"]["code"], "DONE");
    assert_eq!(done["attempts"], 1);
    // Only the last run's file is kept: the first is unreachable.
    let second_run = s.files_under(&format!("results/{}/{id}", t.id));
    assert_eq!(second_run.len(), 1, "{second_run:?}");
    assert_ne!(first_run, second_run);
    let (status, _) = s
        .call("DELETE", &format!("/tasks/{id}"), &t.key, None)
        .await;
    assert_eq!(status, 204);
    // Its files went with it, directories included.
    assert!(
        !s.dir
            .path()
            .join(format!("files/results/{}/{id}", t.id))
            .exists()
    );
    let (status, _) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
    assert_eq!(status, 404);
    s.stop().await;
}

async fn repeating_task_returns_to_ready(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    // Stores keep microseconds.
    let once = jiff::Timestamp::from_microsecond(jiff::Timestamp::now().as_microsecond()).unwrap();
    let task = s
        .create(&t.key, json!({ "trigger": { "once": once.to_string(), "repeat": "daily", "timezone": "Europe/Amsterdam" },
                                "target": { "action": "export", "export_index": "users", "export_format": "csv" } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (_, body) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
        let ran = body["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["msg"] == "DONE -> READY");
        if ran {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["state"]["code"], "READY");
    let next: jiff::Timestamp = body["trigger"]["once"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        next,
        once + jiff::SignedDuration::from_hours(24),
        "no DST change within a day of the test"
    );
    assert_eq!(body["result"], format!("users-{id}.csv"));

    // Missed runs (the anchor is ten days back) run once, then the schedule
    // resumes at the first occurrence after now.
    let anchor =
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 10 * 86_400 + 3600)
            .unwrap();
    let task = s
        .create(&t.key, json!({ "trigger": { "once": anchor.to_string(), "repeat": "daily", "timezone": "UTC" },
                                "target": { "action": "export", "export_index": "users", "export_format": "csv" } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (_, body) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
        if body["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["msg"] == "DONE -> READY")
        {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let runs = body["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["msg"] == "READY -> INPROGRESS")
        .count();
    assert_eq!(runs, 1, "{body}");
    let next: jiff::Timestamp = body["trigger"]["once"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, anchor + jiff::SignedDuration::from_hours(240));
    s.stop().await;
}

async fn signed_downloads_refuse_tampering_and_serve_ranges(b: Backend) {
    let s = common::start_with(
        b,
        common::Options {
            download_ttl: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await;
    let t = s.tenant("shop").await;
    let other = s.tenant("other").await;
    s.import(&t, "products", synth_csv(&index::PRODUCTS, 100, 5))
        .await;
    let task = s.create(&t.key, json!({ "target": { "action": "export", "export_index": "products", "export_format": "csv" } })).await;
    let id = task["id"].as_i64().unwrap();
    s.wait(&t.key, id, 30).await;
    let (_, link) = s
        .call("GET", &format!("/tasks/{id}/download_url"), &t.key, None)
        .await;
    let url = link["url"].as_str().unwrap().to_string();
    let expires_at: jiff::Timestamp = link["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires_at > jiff::Timestamp::now());
    let full = s.http.get(&url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    let len: usize = full.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let full = full.bytes().await.unwrap();
    assert_eq!(full.len(), len);
    let part = s
        .http
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{len}").as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), full.slice(10..20));
    let bad = s
        .http
        .get(&url)
        .header("Range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    // Tampering with any part of the link: 403.
    let tampered = [
        url.replace("signature=", "signature=0"),
        url.replace(
            &format!("/downloads/{}/", t.id),
            &format!("/downloads/{}/", other.id),
        ),
        url.replace("expires=", "expires=9"),
        url.split('?').next().unwrap().to_string(),
    ];
    for u in tampered {
        assert_eq!(s.http.get(&u).send().await.unwrap().status(), 403, "{u}");
    }
    // After its lifetime the link is refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(s.http.get(&url).send().await.unwrap().status(), 403);
    // A task without a result has no link.
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let pending = s.create(&t.key, json!({ "trigger": { "once": later }, "target": { "action": "export", "export_index": "users", "export_format": "csv" } })).await;
    let (status, _) = s
        .call(
            "GET",
            &format!("/tasks/{}/download_url", pending["id"]),
            &t.key,
            None,
        )
        .await;
    assert_eq!(status, 409);
    s.stop().await;
}

async fn uploads_refuse_binary_and_empty_files(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let post = |body: Vec<u8>, ct: &'static str| {
        s.http
            .post(format!("{}/uploads", s.url))
            .bearer_auth(&t.key)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post(
        vec![0x89, b'P', b'N', b'G', 0, 0, 1],
        "application/octet-stream",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.text().await.unwrap().contains("binary"));
    let r = post(vec![], "text/csv").await.unwrap();
    assert_eq!(r.status(), 400);
    let r = post(b"a,b\n".to_vec(), "image/png").await.unwrap();
    assert_eq!(r.status(), 415);
    let r = post(b"user_id\nu1\n".to_vec(), "text/csv").await.unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["size"], 11);
    assert_eq!(body["sha256"], datask_api::sha256_hex(b"user_id\nu1\n"));
    s.stop().await;
}

/// A repeating task's run ends back in READY, often between two polls of
/// the stream: a `run` event says how each one ended, and the stream goes on.
async fn events_tell_each_run_of_a_repeating_task(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let task = s
        .create(&t.key, json!({ "trigger": { "once": "2099-01-01T09:00:00Z", "repeat": "daily" },
                                "target": { "action": "export", "export_index": "users", "export_format": "csv" } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    let mut resp = s
        .http
        .get(format!("{}/tasks/{id}/events", s.url))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, body) = s
        .call("POST", &format!("/tasks/{id}/execute"), &t.key, None)
        .await;
    assert!(status < 300, "{status} {body}");
    let mut text = String::new();
    let run = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let chunk = resp.chunk().await.unwrap().expect("the stream ended");
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = text.find("event: run\n") {
                if let Some(data) = text[at..].lines().find_map(|l| l.strip_prefix("data: ")) {
                    if text[at..].contains("\n\n") {
                        return serde_json::from_str::<Value>(data).unwrap();
                    }
                }
            }
        }
    })
    .await
    .expect("no run event");
    assert_eq!(run["state"], "DONE", "{run}");
    assert!(run["finished_at"].is_string(), "{run}");
    assert_eq!(run["task"]["state"]["code"], "READY", "{run}");
    assert_eq!(run["task"]["result"], format!("users-{id}.csv"), "{run}");
    // The stream is still open; stopping the server ends it rather than
    // waiting on it.
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("the shutdown waited on the open stream");
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while resp.chunk().await.ok().flatten().is_some() {}
    })
    .await;
    assert!(rest.is_ok(), "the stream outlived the server");
}

async fn events_stream_until_the_task_finishes(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    s.synth_attributes(&t).await;
    s.import(&t, "users", synth_csv(&index::USERS, 2_000, 9))
        .await;
    let task = s.create(&t.key, json!({ "target": { "action": "export", "export_index": "users", "export_format": "csv" } })).await;
    let id = task["id"].as_i64().unwrap();
    let resp = s
        .http
        .get(format!("{}/tasks/{id}/events", s.url))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The stream ends by itself after the finished state.
    let text = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("the stream did not end")
        .unwrap();
    let states: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["state"]["code"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!states.is_empty(), "{text}");
    assert_eq!(states.last().unwrap(), "DONE", "{text}");
    let (status, _) = s.call("GET", "/tasks/999999/events", &t.key, None).await;
    assert_eq!(status, 404);
    s.stop().await;
}

async fn query(s: &common::TestServer, path: &str, body: Value) -> (u16, Value) {
    let resp = s
        .http
        .post(format!("{}/api/external/{path}", s.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["code"].as_u64(),
        Some(status as u64),
        "the envelope's code matches the HTTP status: {body}"
    );
    assert_eq!(body["success"], status == 200);
    (status, body)
}

async fn query_dialect_of_the_first_seed(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("project").await;
    let before = jiff::Timestamp::now().as_second() - 1;
    // Two imports with problems and one clean export, made through REST.
    let bad = s
        .import(&t, "products", b"product_id,price\n,1\np2,x\n".to_vec())
        .await;
    let cols = s
        .import(&t, "products", b"product_id,first.name\np1,x\n".to_vec())
        .await;
    let export = s.create(&t.key, json!({ "desc": "all", "target": { "action": "export", "export_index": "products", "export_format": "csv" } })).await;
    let export = s.wait(&t.key, export["id"].as_i64().unwrap(), 30).await;

    // The seed's request, word for word but for the token and the time.
    let (status, body) = query(
        &s,
        "list/task",
        json!({
            "apptoken": t.apptoken,
            "condition": [["identifier", "=", "import"], ["finish_time", ">", before]],
            "order": ["id DESC"],
            "select": ["id", "identifier", "errors", "finish_time"]
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], cols["id"]);
    assert_eq!(data[1]["id"], bad["id"]);
    let keys: Vec<&str> = data[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "identifier", "errors", "finish_time"]);
    assert_eq!(
        data[0]["errors"]["file[columns]"][0],
        "Column 'first.name' is not a recognized field of index 'products'"
    );
    assert_eq!(
        data[1]["errors"]["file[rows]"],
        json!([
            "Rows must contain identifier (Row 2)",
            "Rows have an invalid value in column 'price' (Row 3)"
        ])
    );
    assert!(data[0]["finish_time"].as_i64().unwrap() > before);
    // Progress only while running, as the REST view shows it.
    let (status, body) = query(
        &s,
        "info/task",
        json!({ "apptoken": t.apptoken, "id": cols["id"], "select": ["progress", "status"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["progress"].is_null(), "{body}");

    // The same task reads the same through both dialects.
    let (_, info) = query(
        &s,
        "info/task",
        json!({ "apptoken": t.apptoken, "id": export["id"] }),
    )
    .await;
    let q = &info["data"];
    assert_eq!(
        (q["id"].clone(), q["identifier"].clone(), q["desc"].clone()),
        (export["id"].clone(), json!("export"), json!("all"))
    );
    assert_eq!(q["status"], 2);
    assert_eq!(q["project_id"], t.id);
    assert_eq!(q["result"], export["result"]);
    let created: jiff::Timestamp = export["state"]["created_date"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(q["create_time"], created.as_second());
    let finished = export["logs"].as_array().unwrap().last().unwrap()["time"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert_eq!(q["finish_time"], finished.as_second());

    // Status, in / not in, null, offset and limit.
    let ids = |body: &Value| {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let (_, r) = query(
        &s,
        "list/task",
        json!({ "apptoken": t.apptoken, "condition": [["status", "=", 3]], "select": ["id"] }),
    )
    .await;
    assert_eq!(
        ids(&r),
        vec![cols["id"].as_i64().unwrap(), bad["id"].as_i64().unwrap()]
    );
    let (_, r) = query(&s, "list/task", json!({ "apptoken": t.apptoken, "condition": [["status", "in", [2]], ["identifier", "not in", ["import"]]] })).await;
    assert_eq!(ids(&r), vec![export["id"].as_i64().unwrap()]);
    let (_, r) = query(&s, "list/task", json!({ "apptoken": t.apptoken, "condition": [["result", "=", null]], "order": ["id asc"] })).await;
    assert_eq!(
        ids(&r),
        vec![cols["id"].as_i64().unwrap()],
        "the import with only column errors has no failed-rows file"
    );
    // `result` is the name the task shows, in conditions and order.
    let name = export["result"].as_str().unwrap().to_string();
    let (_, r) = query(&s, "list/task", json!({ "apptoken": t.apptoken, "condition": [["result", "=", name]], "select": ["id", "result"] })).await;
    assert_eq!(ids(&r), vec![export["id"].as_i64().unwrap()], "{r}");
    assert_eq!(r["data"][0]["result"], json!(name));
    let (_, r) = query(
        &s,
        "list/task",
        json!({ "apptoken": t.apptoken, "condition": [["result", ">=", "results/"]] }),
    )
    .await;
    assert_eq!(
        ids(&r),
        Vec::<i64>::new(),
        "the stored key is not what is compared: {r}"
    );
    let (_, r) = query(
        &s,
        "list/task",
        json!({ "apptoken": t.apptoken, "order": ["id ASC"], "limit": 1, "offset": 1 }),
    )
    .await;
    assert_eq!(ids(&r), vec![cols["id"].as_i64().unwrap()]);
    let (_, r) = query(&s, "list/task", json!({ "apptoken": t.apptoken })).await;
    assert_eq!(r["data"].as_array().unwrap().len(), 3);
    assert_eq!(r["data"][0]["status"], 2, "newest first by default");
    s.stop().await;
}

async fn query_dialect_refuses_what_is_not_on_its_lists(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("project").await;
    let other = s.tenant("other").await;
    let task = s.create(&other.key, json!({ "target": { "action": "export", "export_index": "users", "export_format": "csv" } })).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({ "condition": [["id; DROP TABLE tasks", "=", 1]] }),
            400,
            "unknown field 'id; DROP TABLE tasks'",
        ),
        (
            json!({ "condition": [["id", "like", 1]] }),
            400,
            "unknown operator 'like'",
        ),
        (
            json!({ "condition": [["id", "=", "one"]] }),
            400,
            "'id' needs an integer",
        ),
        (
            json!({ "condition": [["identifier", "=", 5]] }),
            400,
            "'identifier' needs a string",
        ),
        (
            json!({ "condition": [["id", "in", 5]] }),
            400,
            "needs a list",
        ),
        (
            json!({ "condition": [["id", ">", null]] }),
            400,
            "null only works",
        ),
        (
            json!({ "condition": [["id", "="]] }),
            400,
            "expected [field, operator, value]",
        ),
        (
            json!({ "condition": [["errors", "=", "x"]] }),
            400,
            "unknown field 'errors'",
        ),
        (
            json!({ "order": ["id; DROP TABLE tasks"] }),
            400,
            "unknown field 'id;'",
        ),
        (json!({ "order": ["id SIDEWAYS"] }), 400, "'id SIDEWAYS'"),
        (
            json!({ "select": ["password"] }),
            400,
            "unknown field 'password'",
        ),
        (json!({ "select": [] }), 400, "select: names no field"),
        (json!({ "limit": 5000 }), 400, "limit"),
        (json!({ "offset": -1 }), 400, "offset"),
        // Large but well-formed queries are 400s too, before the store's SQL
        // limits could make them 500s.
        (
            json!({ "condition": vec![json!(["id", ">", 0]); 201] }),
            400,
            "condition: at most 200 conditions",
        ),
        (
            json!({ "condition": vec![json!(["id", "in", (0..1000).collect::<Vec<_>>()]); 11] }),
            400,
            "at most 10000 values in all the lists",
        ),
        (
            json!({ "order": vec![json!("id DESC"); 17] }),
            400,
            "order: at most 16 order terms",
        ),
        (json!({ "sort": ["id"] }), 400, "sort"),
    ];
    for (mut body, status, needle) in cases {
        body["apptoken"] = json!(t.apptoken);
        let (got, resp) = query(&s, "list/task", body.clone()).await;
        assert_eq!(got, status, "{body}: {resp}");
        assert!(
            resp["message"].as_str().unwrap().contains(needle),
            "{body}: {resp}"
        );
    }
    let (got, resp) = query(&s, "list/task", json!({ "apptoken": "wrong" })).await;
    assert_eq!(
        (got, resp["message"].as_str()),
        (401, Some("missing or invalid credentials"))
    );
    let (got, _) = query(&s, "list/task", json!({})).await;
    assert_eq!(got, 401);
    let (got, resp) = query(
        &s,
        "info/task",
        json!({ "apptoken": t.apptoken, "id": task["id"] }),
    )
    .await;
    assert_eq!(got, 404, "another tenant's task: {resp}");
    let (got, _) = query(
        &s,
        "info/task",
        json!({ "apptoken": other.apptoken, "id": task["id"] }),
    )
    .await;
    assert_eq!(got, 200);
    let (got, resp) = query(
        &s,
        "info/task",
        json!({ "apptoken": t.apptoken, "id": "x" }),
    )
    .await;
    assert_eq!(
        (got, resp["message"].as_str().unwrap().starts_with("id:")),
        (400, true)
    );
    let resp = s
        .http
        .post(format!("{}/api/external/list/task", s.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["success"].as_bool(), body["code"].as_u64()),
        (Some(false), Some(400))
    );
    // Too large, no such route, wrong method: still this dialect's envelope.
    let big = format!(
        r#"{{"apptoken": "{}", "x": "{}"}}"#,
        t.apptoken,
        "y".repeat(100 * 1024)
    );
    for (method, path, body, status) in [
        ("POST", "list/task", big, 413),
        ("POST", "nowhere", "{}".to_string(), 404),
        ("GET", "list/task", String::new(), 405),
    ] {
        let resp = s
            .http
            .request(
                method.parse().unwrap(),
                format!("{}/api/external/{path}", s.url),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            (body["success"].as_bool(), body["code"].as_u64()),
            (Some(false), Some(u64::from(status))),
            "{method} {path}: {body}"
        );
    }
    s.stop().await;
}

/// Every tenant route × every kind of credential × own and foreign tenant.
async fn access_matrix(b: Backend) {
    let s = start(b).await;
    let own = s.tenant("own").await;
    let foreign = s.tenant("foreign").await;
    let user = |name: &'static str| {
        let s = &s;
        async move {
            let (status, body) = s
                .call(
                    "POST",
                    "/admin/users",
                    ROOT_KEY,
                    Some(json!({ "name": name })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            (
                body["id"].as_i64().unwrap(),
                body["token"].as_str().unwrap().to_string(),
            )
        }
    };
    let mut creds: Vec<(&str, String, Option<i64>, u8)> = vec![
        ("app token", own.apptoken.clone(), None, 1),
        ("privileged key", own.key.clone(), None, 4),
    ];
    for (name, level, rank) in [
        ("viewer", "viewer", 1u8),
        ("operator", "operator", 2),
        ("manager", "manager", 3),
    ] {
        let (id, token) = user(name).await;
        let (status, body) = s
            .call(
                "PUT",
                &format!("/admin/tenants/{}/members/{id}", own.id),
                ROOT_KEY,
                Some(json!({ "level": level })),
            )
            .await;
        assert_eq!((status, body["level"].as_str()), (200, Some(level)));
        creds.push((name, token, Some(own.id), rank));
    }
    let (status, _) = s
        .call(
            "PUT",
            "/admin/tenants/999999/members/1",
            ROOT_KEY,
            Some(json!({ "level": "viewer" })),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = s
        .call(
            "PUT",
            &format!("/admin/tenants/{}/members/1", own.id),
            ROOT_KEY,
            Some(json!({ "level": "owner" })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("level"))
    );

    // A finished export of each tenant, for reads and download links.
    let export = json!({ "target": { "action": "export", "export_index": "products", "export_format": "csv" } });
    let own_done = s.create(&own.key, export.clone()).await["id"]
        .as_i64()
        .unwrap();
    let foreign_done = s.create(&foreign.key, export.clone()).await["id"]
        .as_i64()
        .unwrap();
    s.wait(&own.key, own_done, 30).await;
    s.wait(&foreign.key, foreign_done, 30).await;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let pending = json!({ "trigger": { "once": later }, "target": { "action": "export", "export_index": "users", "export_format": "csv" } });

    // (method, path template, rank needed; {id} is filled per case)
    let routes: &[(&str, &str, u8)] = &[
        ("GET", "/tasks", 1),
        ("GET", "/tasks/{done}", 1),
        ("GET", "/tasks/{done}/download_url", 1),
        ("GET", "/tasks/{done}/events", 1),
        ("POST", "/tasks", 2),
        ("PUT", "/tasks/{pending}", 2),
        ("POST", "/tasks/{pending}/execute", 2),
        ("POST", "/tasks/{pending}/cancel", 2),
        ("POST", "/uploads", 2),
        ("DELETE", "/tasks/{pending}", 3),
        ("GET", "/settings", 1),
        ("PUT", "/settings", 3),
    ];
    for &(method, template, needed) in routes {
        for foreign_tenant in [false, true] {
            // The listing and creation routes have no task of another tenant.
            if foreign_tenant && !template.contains('{') {
                continue;
            }
            for (name, token, chain, rank) in &creds {
                let owner = if foreign_tenant { &foreign } else { &own };
                let pending_id = s.create(&owner.key, pending.clone()).await["id"]
                    .as_i64()
                    .unwrap();
                let done_id = if foreign_tenant {
                    foreign_done
                } else {
                    own_done
                };
                let path = template
                    .replace("{done}", &done_id.to_string())
                    .replace("{pending}", &pending_id.to_string());
                let mut req = s
                    .http
                    .request(method.parse().unwrap(), format!("{}{path}", s.url))
                    .bearer_auth(token);
                if let Some(c) = chain {
                    req = req.header("X-Chain-Id", c.to_string());
                }
                req = match (method, template) {
                    ("POST", "/uploads") => {
                        req.header("content-type", "text/csv").body("user_id\nu1\n")
                    }
                    ("POST", "/tasks") => req.json(&pending),
                    ("PUT", "/settings") => req.json(&json!({ "concurrency": 4 })),
                    ("PUT", _) => req.json(&pending),
                    _ => req,
                };
                let status = req.send().await.unwrap().status().as_u16();
                let expected: &[u16] = if *rank < needed {
                    &[403]
                } else if foreign_tenant {
                    &[404]
                } else {
                    &[200, 201, 204]
                };
                assert!(
                    expected.contains(&status),
                    "{name} {method} {path} (foreign: {foreign_tenant}): {status}, expected {expected:?}"
                );
            }
        }
    }
    // A user naming a tenant it is not a member of: 404; naming none: 400.
    let (_, manager_token) = (creds[4].2, creds[4].1.clone());
    let r = s
        .http
        .get(format!("{}/tasks", s.url))
        .bearer_auth(&manager_token)
        .header("X-Chain-Id", foreign.id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = s
        .http
        .get(format!("{}/tasks", s.url))
        .bearer_auth(&manager_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .get(format!("{}/tasks?chain={}", s.url, own.id))
        .bearer_auth(&manager_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the chain query parameter names the tenant too"
    );
    // Bad tokens: 401 everywhere.
    for &(method, template, _) in routes {
        let path = template
            .replace("{done}", &own_done.to_string())
            .replace("{pending}", &own_done.to_string());
        let status = s
            .http
            .request(method.parse().unwrap(), format!("{}{path}", s.url))
            .bearer_auth("dtk_user_nope")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{method} {path}");
    }
    s.stop().await;
}

async fn tenant_settings(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let (status, got) = s.call("GET", "/settings", &t.key, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got,
        json!({ "id": t.id, "name": "shop", "timezone": "UTC", "concurrency": 4,
                             "identifier_column": "user_id", "retention": null, "attributes": [], "integrations": {} })
    );
    let change = json!({
        "timezone": "Europe/Amsterdam",
        "identifier_column": "email",
        "retention": { "delete_inactive_after_days": 365 },
        "attributes": [{ "name": "ltv", "type": "number" }, { "name": "firstname", "type": "string", "enabled": false, "pii": true }]
    });
    let (status, got) = s.call("PUT", "/settings", &t.key, Some(change)).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (
            got["name"].as_str(),
            got["timezone"].as_str(),
            got["identifier_column"].as_str()
        ),
        (Some("shop"), Some("Europe/Amsterdam"), Some("email"))
    );
    assert_eq!(
        got["attributes"][0],
        json!({ "name": "ltv", "type": "number", "enabled": true, "pii": false })
    );
    assert_eq!(got["attributes"][1]["enabled"], false);
    // Absent fields stay; null clears the retention policy.
    let (_, got) = s
        .call(
            "PUT",
            "/settings",
            &t.key,
            Some(json!({ "retention": null, "concurrency": 2 })),
        )
        .await;
    assert_eq!(
        (
            got["retention"].clone(),
            got["concurrency"].as_i64(),
            got["attributes"].as_array().unwrap().len()
        ),
        (json!(null), Some(2), 2)
    );
    let (_, again) = s.call("GET", "/settings", &t.key, None).await;
    assert_eq!(again, got);
    // The tenant's time zone is the default of its repeating tasks.
    let task = s.create(&t.key, json!({ "trigger": { "once": "2030-01-01T09:00:00", "repeat": "daily" },
                                        "target": { "action": "export", "export_index": "users", "export_format": "csv" } })).await;
    assert_eq!(
        task["trigger"]["once"], "2030-01-01T08:00:00Z",
        "09:00 in Amsterdam"
    );
    for (body, field) in [
        (json!({ "timezone": "Mars/Base" }), "timezone"),
        (json!({ "concurrency": 0 }), "concurrency"),
        (
            json!({ "identifier_column": "first_name" }),
            "identifier_column",
        ),
        (
            json!({ "retention": { "delete_inactive_after_days": 0 } }),
            "retention.delete_inactive_after_days",
        ),
        (json!({ "retention": { "days": 3 } }), "retention"),
        (
            json!({ "attributes": [{ "name": "LTV", "type": "number" }] }),
            "attributes[0].name",
        ),
        (
            json!({ "attributes": [{ "name": "email", "type": "string" }] }),
            "attributes[0].name",
        ),
        (
            json!({ "attributes": [{ "name": "a", "type": "string" }, { "name": "a", "type": "date" }] }),
            "attributes[1].name",
        ),
        (
            json!({ "attributes": [{ "name": "a", "type": "colour" }] }),
            "attributes[0].type",
        ),
        (json!({ "owner": "me" }), "owner"),
    ] {
        let (status, resp) = s.call("PUT", "/settings", &t.key, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(
            resp["error"]["field"]
                .as_str()
                .unwrap_or("")
                .starts_with(field),
            "{body}: {resp}"
        );
    }
    s.stop().await;
}

async fn export_of_a_segment(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let csv = "user_id,country,email_opt_in,attributes\nu1,NL,true,\nu2,DE,true,\nu3,NL,false,\nu4,NL,,\n";
    assert_eq!(
        s.import(&t, "users", csv.as_bytes().to_vec()).await["state"]["code"],
        "DONE"
    );
    let seg = json!({ "all": [{ "field": "country", "op": "eq", "value": "NL" }, { "not": { "field": "email_opt_in", "op": "eq", "value": false } }] });
    let task = s
        .create(&t.key, json!({ "trigger": { "segment": seg }, "target": { "action": "export", "export_index": "users", "export_format": "jsonl" } }))
        .await;
    assert_eq!(task["trigger"]["segment"], seg);
    let id = task["id"].as_i64().unwrap();
    let done = s.wait(&t.key, id, 30).await;
    assert_eq!(done["output"]["rows"], 2, "{done}");
    let bytes = s.download(&t.key, id).await;
    let keys: Vec<String> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<Value>(l).unwrap()["user_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys, ["u1", "u4"]);
    // Only exports take a segment.
    let upload = s.upload(&t.key, "u.csv", b"user_id\nu9\n".to_vec()).await;
    let (status, body) = s
        .call("POST", "/tasks", &t.key, Some(json!({ "trigger": { "segment": seg }, "target": { "action": "import", "import_index": "users", "upload_id": upload } })))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("trigger.segment")),
        "{body}"
    );
    s.stop().await;
}

/// A declared length over the limit is refused before any body arrives; a
/// missing field is named.
async fn oversized_and_incomplete_bodies(b: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let addr = s.url.trim_start_matches("http://").to_string();
    for path in [
        "/tasks",
        "/uploads?filename=a.csv",
        "/api/external/list/task",
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 999999999999\r\n\r\n{{}}",
            t.key
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut answer))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
    let (status, body) = s
        .call(
            "POST",
            "/segments",
            &t.key,
            Some(json!({ "filter": { "field": "country", "op": "eq", "value": "NL" } })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );
    s.stop().await;
}

/// Cancelling an import mid-file: its log says how many rows were written,
/// and exactly those are there.
async fn a_cancelled_import_says_what_it_wrote(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let upload = s
        .upload(
            &t.key,
            "products.csv",
            synth_csv(&index::PRODUCTS, 400_000, 3),
        )
        .await;
    let task = s
        .create(&t.key, json!({ "target": { "action": "import", "import_index": "products", "upload_id": upload } }))
        .await;
    let id = task["id"].as_i64().unwrap();
    // Once a batch is in, cancel.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, now) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
        if now["progress"]["done"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            now["state"]["code"] != "DONE",
            "finished before it could be cancelled: {now}"
        );
        assert!(tokio::time::Instant::now() < deadline, "{now}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = s
        .call("POST", &format!("/tasks/{id}/cancel"), &t.key, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let done = s.wait(&t.key, id, 60).await;
    assert_eq!(done["state"]["code"], "CANCELLED", "{done}");
    let said = done["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["msg"].as_str())
        .find(|m| m.starts_with("cancelled at row"))
        .unwrap_or_else(|| panic!("no cancellation line: {done}"))
        .to_string();
    let written: i64 = said
        .split("; the ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(written > 0 && written < 400_000, "{said}");
    assert_eq!(
        s.store
            .count_rows(t.id, &index::PRODUCTS, None)
            .await
            .unwrap(),
        written,
        "{said}"
    );
    s.stop().await;
}

/// A row past the reader's limit ends the import in ERROR at once (not
/// retried as if reading had failed), keeping what came before it.
async fn an_overlong_row_is_the_files_problem(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("shop").await;
    let mut input = b"user_id,email\nu1,a@x.io\nu2,".to_vec();
    input.resize(
        // Past the limit by more than a read buffer (it is checked per read).
        input.len() + datask_data::MAX_RECORD_BYTES as usize + (2 << 20),
        b'x',
    );
    input.extend_from_slice(b"\nu3,c@x.io\n");
    let upload = s.upload(&t.key, "long.csv", input).await;
    let task = s
        .create(
            &t.key,
            json!({ "identifier": "profile_import", "target": { "upload_id": upload } }),
        )
        .await;
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    let problems = done["errors"]["file"].to_string();
    assert!(
        problems.contains("longer than") && problems.contains("the 1 rows before"),
        "{done}"
    );
    assert_eq!(
        s.store.count_rows(t.id, &index::USERS, None).await.unwrap(),
        1
    );
    s.stop().await;
}
