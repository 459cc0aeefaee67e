//! Customer data and the first seed's identifiers, end to end over HTTP on
//! SQLite and PostgreSQL. Expectations are computed here, from the inputs.

mod common;

use common::{Backend, Tenant, TestServer, start};
use serde_json::{Value, json};

on_both_stores!(
    seed_sample_error_reports_word_for_word,
    profile_import_upserts_attributes_and_reports_rows,
);

async fn settings(s: &TestServer, t: &Tenant, body: Value) {
    let (status, resp) = s.call("PUT", "/settings", &t.key, Some(body)).await;
    assert_eq!(status, 200, "{resp}");
}

/// Uploads `csv` and runs `profile_import` on it; the finished task.
async fn profile_import(s: &TestServer, t: &Tenant, csv: &str, extra: Value) -> Value {
    let upload = s
        .upload(&t.key, "profiles.csv", csv.as_bytes().to_vec())
        .await;
    let mut target = json!({ "upload_id": upload });
    if let Value::Object(more) = extra {
        target.as_object_mut().unwrap().extend(more);
    }
    let task = s
        .create(
            &t.key,
            json!({ "identifier": "profile_import", "target": target }),
        )
        .await;
    s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await
}

/// Rows of a profile export as JSON objects, by user_id.
async fn profiles(s: &TestServer, t: &Tenant) -> Vec<Value> {
    let task = s
        .create(
            &t.key,
            json!({ "target": { "action": "export", "export_index": "users", "export_format": "json" } }),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    let done = s.wait(&t.key, id, 60).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    serde_json::from_slice(&s.download(&t.key, id).await).unwrap()
}

/// The three `profile_import` tasks of the first seed's sample response
/// (5853, 5852, 62), rebuilt from input files and read back through the
/// seed's own `list/task` request.
async fn seed_sample_error_reports_word_for_word(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("seed").await;
    settings(
        &s,
        &t,
        json!({ "attributes": [
            { "name": "ltv", "type": "number" },
            { "name": "firstname", "type": "string", "enabled": false }
        ] }),
    )
    .await;

    // Like task 62: 7 rows without identifier, 9 duplicates.
    let mut csv = String::from("user_id,email\n");
    let missing = [6, 11, 13, 18, 25, 26, 30];
    let duplicates = [12, 14, 15, 19, 21, 22, 27, 28, 31];
    for row in 2..=32 {
        if missing.contains(&row) {
            csv.push_str(&format!(",nobody{row}@example.com\n"));
        } else if duplicates.contains(&row) {
            csv.push_str(&format!("u{},again{row}@example.com\n", [2, 3, 4][row % 3]));
        } else {
            csv.push_str(&format!("u{row},p{row}@example.com\n"));
        }
    }
    let t62 = profile_import(&s, &t, &csv, json!({})).await;
    // Like task 5852: two unknown columns, `LTV` differing from `ltv` in case.
    let t5852 = profile_import(
        &s,
        &t,
        "user_id,first.name,LTV\nu100,Ann,3\nu101,Bob,4\n",
        json!({}),
    )
    .await;
    // Like task 5853: a known attribute not enabled, one row without identifier.
    let t5853 = profile_import(
        &s,
        &t,
        "user_id,firstname,ltv\nu200,Cy,1.5\nu201,Di,2\n,Ed,3\nu203,Flo,4\n",
        json!({}),
    )
    .await;
    for task in [&t62, &t5852, &t5853] {
        assert_eq!(task["state"]["code"], "ERROR", "{task}");
    }

    let (status, body) = s
        .call(
            "POST",
            "/api/external/list/task",
            "",
            Some(json!({
                "apptoken": t.apptoken,
                "condition": [
                    ["identifier", "=", "profile_import"],
                    ["finish_time", ">", 1580226128]
                ],
                "order": ["id DESC"],
                "select": ["id", "identifier", "errors", "finish_time"]
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{body}");
    let ids: Vec<i64> = data.iter().map(|d| d["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        [
            t5853["id"].as_i64().unwrap(),
            t5852["id"].as_i64().unwrap(),
            t62["id"].as_i64().unwrap()
        ]
    );
    assert_eq!(
        data[0]["errors"],
        json!({
            "file[columns]": ["Column 'firstname' is not set to be a profile attribute"],
            "file[rows]": ["Rows must contain identifier (Row 4)"]
        })
    );
    assert_eq!(
        data[1]["errors"],
        json!({
            "file[columns]": [
                "Column 'first.name' is not a recognized user profile field or attribute",
                "Column 'LTV' is not a recognized user profile field or attribute"
            ]
        })
    );
    assert_eq!(
        data[2]["errors"],
        json!({
            "file[rows]": [
                "7 Rows must contain identifier ( Row 6, Row 11, Row 13, Row 18, ...)",
                "9 Rows are duplicates ( Row 12, Row 14, Row 15, Row 19, ...)"
            ]
        })
    );
    for d in data {
        assert_eq!(d["identifier"], "profile_import");
        assert!(d["finish_time"].as_i64().unwrap() > 1580226128);
        assert_eq!(d.as_object().unwrap().len(), 4, "only the selected fields");
    }

    // Rows without problems were applied; ignored columns wrote nothing.
    let rows = profiles(&s, &t).await;
    let by_id = |id: &str| rows.iter().find(|r| r["user_id"] == id).cloned();
    let first_of_62 = 31 - missing.len() - duplicates.len();
    assert_eq!(rows.len(), first_of_62 + 2 + 3, "{rows:?}");
    assert_eq!(
        by_id("u2").unwrap()["email"],
        "p2@example.com",
        "the first of a duplicate key is kept"
    );
    assert_eq!(by_id("u100").unwrap()["attributes"], Value::Null);
    assert_eq!(by_id("u201").unwrap()["attributes"], json!({ "ltv": 2.0 }));
    assert!(by_id("u203").is_some());
    s.stop().await;
}

/// Standard fields and typed attributes are upserted; attributes merge;
/// a wrong-typed value is reported by row and column; the failed-rows
/// file holds the rejected rows verbatim; a dry run writes nothing.
async fn profile_import_upserts_attributes_and_reports_rows(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("crm").await;
    settings(
        &s,
        &t,
        json!({ "attributes": [
            { "name": "ltv", "type": "number" },
            { "name": "vip", "type": "boolean" },
            { "name": "signup", "type": "date" },
            { "name": "tier", "type": "string" }
        ] }),
    )
    .await;
    let csv = "user_id,email,email_opt_in,ltv,vip,signup,tier\n\
               u1,a@x.io,true,10.5,yes,2024-02-29,gold\n\
               u2,b@x.io,false,abc,no,,silver\n\
               u3,c@x.io,1,,true,2025-01-02T03:04:05+02:00,\n";
    let dry = profile_import(&s, &t, csv, json!({ "dry_run": true })).await;
    assert_eq!(dry["state"]["code"], "ERROR", "{dry}");
    assert_eq!(
        dry["errors"]["file[rows]"],
        json!(["Rows have an invalid value in column 'ltv' (Row 3)"])
    );
    assert!(
        profiles(&s, &t).await.is_empty(),
        "a dry run writes nothing"
    );

    let done = profile_import(&s, &t, csv, json!({})).await;
    assert_eq!(done["errors"], dry["errors"]);
    let failed = String::from_utf8(s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    let lines: Vec<&str> = failed.lines().collect();
    assert_eq!(
        lines[0],
        "_row,_error_code,_error,user_id,email,email_opt_in,ltv,vip,signup,tier"
    );
    assert!(lines[1].starts_with("3,invalid_value,"), "{failed}");
    assert!(
        lines[1].ends_with(",u2,b@x.io,false,abc,no,,silver"),
        "{failed}"
    );
    assert_eq!(lines.len(), 2);

    // A second file touches one attribute only: the others stay.
    let again = profile_import(
        &s,
        &t,
        "user_id,tier,first_name\nu1,platinum,Ann\n",
        json!({}),
    )
    .await;
    assert_eq!(again["state"]["code"], "DONE", "{again}");
    let rows = profiles(&s, &t).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["user_id"], "u1");
    assert_eq!(rows[0]["first_name"], "Ann");
    assert_eq!(rows[0]["email_opt_in"], true);
    assert_eq!(
        rows[0]["attributes"],
        json!({ "ltv": 10.5, "vip": true, "signup": "2024-02-29T00:00:00Z", "tier": "platinum" })
    );
    assert_eq!(
        rows[1]["attributes"],
        json!({ "vip": true, "signup": "2025-01-02T01:04:05Z" })
    );
    s.stop().await;
}
