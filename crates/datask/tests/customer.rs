//! Customer data and the first seed's identifiers, end to end over HTTP on
//! SQLite and PostgreSQL. Expectations are computed here, from the inputs.

mod common;

use common::{Backend, Tenant, TestServer, start};
use serde_json::{Value, json};

on_both_stores!(
    segments_that_no_longer_fit_end_in_error,
    seed_sample_error_reports_word_for_word,
    profile_import_upserts_attributes_and_reports_rows,
    segments_lists_and_campaign_audiences,
    messages_and_personal_data,
    profiles_identified_by_email,
    bad_files_end_precisely,
    multipart_task_with_its_file,
    atomic_imports_write_all_or_nothing,
    generic_import_into_users_checks_attributes,
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

/// One profile of the shared test data.
struct P {
    id: &'static str,
    email: &'static str,
    email_opt_in: bool,
    mobile: &'static str,
    sms_opt_in: bool,
    ltv: f64,
    vip: bool,
}

const PEOPLE: [P; 6] = [
    P {
        id: "u1",
        email: "a@x.io",
        email_opt_in: true,
        mobile: "",
        sms_opt_in: false,
        ltv: 120.0,
        vip: true,
    },
    P {
        id: "u2",
        email: "b@x.io",
        email_opt_in: false,
        mobile: "+3161",
        sms_opt_in: true,
        ltv: 80.0,
        vip: false,
    },
    P {
        id: "u3",
        email: "",
        email_opt_in: true,
        mobile: "+3162",
        sms_opt_in: true,
        ltv: 50.0,
        vip: true,
    },
    P {
        id: "u4",
        email: "d@x.io",
        email_opt_in: true,
        mobile: "+3163",
        sms_opt_in: false,
        ltv: 10.0,
        vip: false,
    },
    P {
        id: "u5",
        email: "e@x.io",
        email_opt_in: true,
        mobile: "+3164",
        sms_opt_in: true,
        ltv: 75.5,
        vip: false,
    },
    P {
        id: "u6",
        email: "f@x.io",
        email_opt_in: false,
        mobile: "",
        sms_opt_in: true,
        ltv: 0.0,
        vip: true,
    },
];

/// (device_id, user_id, push_enabled)
const DEVICES: [(&str, &str, bool); 5] = [
    ("d1", "u1", true),
    ("d2", "u2", false),
    ("d3", "u3", true),
    ("d4", "u3", true),
    ("d5", "u5", false),
];

const VIP_LIST: [&str; 2] = ["u1", "u3"];

fn eligible(p: &P, channel: &str) -> bool {
    match channel {
        "email" => !p.email.is_empty() && p.email_opt_in,
        "sms" => !p.mobile.is_empty() && p.sms_opt_in,
        _ => DEVICES.iter().any(|(_, u, push)| *u == p.id && *push),
    }
}

/// Loads PEOPLE (with attributes), DEVICES and the vip list.
async fn load_people(s: &TestServer, t: &Tenant) {
    settings(
        s,
        t,
        json!({ "attributes": [
            { "name": "ltv", "type": "number" },
            { "name": "vip", "type": "boolean" },
            { "name": "nickname", "type": "string", "pii": true }
        ] }),
    )
    .await;
    let mut csv = String::from(
        "user_id,email,email_opt_in,mobile_number,sms_opt_in,ltv,vip,nickname,last_active_at\n",
    );
    for (i, p) in PEOPLE.iter().enumerate() {
        // u5 and u6 have not been seen for years.
        let active = if i >= 4 { "2020-01-01" } else { "2099-01-01" };
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},nick{},{active}\n",
            p.id, p.email, p.email_opt_in, p.mobile, p.sms_opt_in, p.ltv, p.vip, p.id
        ));
    }
    let done = profile_import(s, t, &csv, json!({})).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let mut devices = String::from("device_id,user_id,platform,push_enabled\n");
    for (d, u, push) in DEVICES {
        devices.push_str(&format!("{d},{u},ios,{push}\n"));
    }
    let done = s.import(t, "devices", devices.into_bytes()).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    // The list file names one profile that does not exist (row 4).
    let upload = s
        .upload(
            &t.key,
            "vip.csv",
            b"user_id,note\nu1,x\nu3,y\nu9,z\nu1,again\n".to_vec(),
        )
        .await;
    let task = s
        .create(&t.key, json!({ "identifier": "list_import", "target": { "list_id": "vip", "upload_id": upload } }))
        .await;
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": ["Rows do not match a profile in column 'user_id' (Row 4)", "Rows are duplicates (Row 5)"] })
    );
    assert_eq!(done["output"]["applied"], 2, "{done}");
}

/// Runs a task to its end; the finished task.
/// The task ended in ERROR with exactly these `errors`.
fn assert_refused(done: &Value, errors: Value) {
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(done["errors"], errors, "{done}");
}

async fn run(s: &TestServer, t: &Tenant, task: Value) -> Value {
    let created = s.create(&t.key, task).await;
    s.wait(&t.key, created["id"].as_i64().unwrap(), 60).await
}

fn csv_column(bytes: &[u8], column: usize) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(column).unwrap().to_string())
        .collect()
}

async fn segments_lists_and_campaign_audiences(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("audiences").await;
    load_people(&s, &t).await;

    // Saved segments: checked against the attribute schema.
    let (status, body) = s
        .call("POST", "/segments", &t.key, Some(json!({ "name": "big", "filter": { "all": [{ "field": "ltv", "op": "gte", "value": 75 }] } })))
        .await;
    assert_eq!(status, 201, "{body}");
    let big = body["id"].as_i64().unwrap();
    let (status, body) = s
        .call("POST", "/segments", &t.key, Some(json!({ "name": "bad", "filter": { "all": [{ "field": "LTV", "op": "gte", "value": 1 }] } })))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("filter.all[0].field"), "{body}");
    let (status, list) = s.call("GET", "/segments", &t.key, None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let other = s.tenant("other").await;
    let (status, _) = s
        .call("GET", &format!("/segments/{big}"), &other.key, None)
        .await;
    assert_eq!(
        status, 404,
        "another tenant's segment does not exist for it"
    );

    // segment_count_recipients over the saved segment, per channel.
    let in_big: Vec<&P> = PEOPLE.iter().filter(|p| p.ltv >= 75.0).collect();
    let done = run(&s, &t, json!({ "identifier": "segment_count_recipients", "trigger": { "segment_id": big }, "target": { "per_channel": true } })).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let want = |c: &str| in_big.iter().filter(|p| eligible(p, c)).count();
    assert_eq!(
        done["output"],
        json!({ "count": in_big.len(), "channels": { "email": want("email"), "push": want("push"), "sms": want("sms") } })
    );
    // A segment_id of nothing is a 400 naming it.
    let (status, body) = s
        .call("POST", "/tasks", &t.key, Some(json!({ "identifier": "segment_count_recipients", "trigger": { "segment_id": 999 } })))
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("trigger.segment_id"), "{body}");
    // Either an inline segment or a saved one, not both (seed 001).
    let (status, body) = s
        .call("POST", "/tasks", &t.key, Some(json!({ "identifier": "segment_count_recipients",
            "trigger": { "segment_id": big, "segment": { "all": [{ "field": "ltv", "op": "gte", "value": 1 }] } } })))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("not both"), "{body}");
    // A PUT that sets one replaces the other: a saved segment switched to
    // an inline one, no explicit null needed.
    let parked = s
        .create(&t.key, json!({ "identifier": "segment_count_recipients", "trigger": { "segment_id": big, "once": "2099-01-01T00:00:00Z" } }))
        .await;
    let (status, body) = s
        .call(
            "PUT",
            &format!("/tasks/{}", parked["id"]),
            &t.key,
            Some(json!({ "trigger": { "segment": { "field": "ltv", "op": "gte", "value": 1 } } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["trigger"]["segment_id"].is_null(), "{body}");
    assert_eq!(body["trigger"]["segment"]["field"], "ltv", "{body}");
    assert_eq!(body["trigger"]["once"], parked["trigger"]["once"], "{body}");
    let (status, _) = s
        .call("DELETE", &format!("/tasks/{}", parked["id"]), &t.key, None)
        .await;
    assert!(status < 300);
    // A saved segment deleted after the task was accepted: the run ends in
    // ERROR naming it (the caller's mistake), not FATAL.
    let (status, body) = s
        .call("POST", "/segments", &t.key, Some(json!({ "name": "gone", "filter": { "all": [{ "field": "ltv", "op": "gte", "value": 1 }] } })))
        .await;
    assert_eq!(status, 201, "{body}");
    let gone = body["id"].as_i64().unwrap();
    let later = s
        .create(&t.key, json!({ "identifier": "segment_count_recipients", "trigger": { "segment_id": gone, "once": "2099-01-01T00:00:00Z" } }))
        .await;
    let (status, _) = s
        .call("DELETE", &format!("/segments/{gone}"), &t.key, None)
        .await;
    assert_eq!(status, 204);
    let id = later["id"].as_i64().unwrap();
    let (status, body) = s
        .call("POST", &format!("/tasks/{id}/execute"), &t.key, None)
        .await;
    assert!(status < 300, "{status} {body}");
    let done = s.wait(&t.key, id, 60).await;
    assert_refused(
        &done,
        json!({ "trigger[segment_id]": [format!("Segment {gone} does not exist")] }),
    );

    // in_list and a boolean attribute, inline.
    let seg = json!({ "any": [{ "field": "user_id", "op": "in_list", "value": "vip" }, { "field": "vip", "op": "eq", "value": true }] });
    let want: Vec<&str> = PEOPLE
        .iter()
        .filter(|p| VIP_LIST.contains(&p.id) || p.vip)
        .map(|p| p.id)
        .collect();
    let done = run(
        &s,
        &t,
        json!({ "identifier": "segment_export_profiles", "trigger": { "segment": seg } }),
    )
    .await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let got = csv_column(&s.download(&t.key, done["id"].as_i64().unwrap()).await, 0);
    assert_eq!(got, want);

    // Devices of the big segment that can take a push.
    let done = run(&s, &t, json!({ "identifier": "segment_export_devices", "trigger": { "segment_id": big }, "target": { "channel": "push" } })).await;
    let got = csv_column(&s.download(&t.key, done["id"].as_i64().unwrap()).await, 0);
    let want: Vec<&str> = DEVICES
        .iter()
        .filter(|(_, u, push)| *push && in_big.iter().any(|p| p.id == *u))
        .map(|(d, _, _)| *d)
        .collect();
    assert_eq!(got, want);

    // list_export: the list's profiles.
    let done = run(
        &s,
        &t,
        json!({ "identifier": "list_export", "target": { "list_id": "vip" } }),
    )
    .await;
    assert_eq!(
        csv_column(&s.download(&t.key, done["id"].as_i64().unwrap()).await, 0),
        VIP_LIST
    );
    // A list with neither a description nor members is a mistake, not an
    // empty export.
    let done = run(
        &s,
        &t,
        json!({ "identifier": "list_export", "target": { "list_id": "nope" } }),
    )
    .await;
    assert_refused(
        &done,
        json!({ "target[list_id]": ["List 'nope' does not exist"] }),
    );

    // Campaigns: segment ∧ channel eligibility.
    let campaigns = format!(
        "campaign_id,name,channel,segment_id,segment\nc1,Big mail,email,{big},\nc2,VIP push,push,,\"{}\"\nc3,All sms,sms,,\n",
        json!({ "field": "user_id", "op": "in_list", "value": "vip" })
            .to_string()
            .replace('"', "\"\"")
    );
    let done = s.import(&t, "campaigns", campaigns.into_bytes()).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let cases = [
        (
            "c1",
            in_big
                .iter()
                .filter(|p| eligible(p, "email"))
                .map(|p| p.id)
                .collect::<Vec<_>>(),
        ),
        (
            "c2",
            PEOPLE
                .iter()
                .filter(|p| VIP_LIST.contains(&p.id) && eligible(p, "push"))
                .map(|p| p.id)
                .collect(),
        ),
        (
            "c3",
            PEOPLE
                .iter()
                .filter(|p| eligible(p, "sms"))
                .map(|p| p.id)
                .collect(),
        ),
    ];
    for (campaign, want) in cases {
        let done = run(&s, &t, json!({ "identifier": "campaign_count_recipients", "target": { "campaign_id": campaign } })).await;
        assert_eq!(done["output"]["count"], want.len(), "{campaign}: {done}");
        let done = run(&s, &t, json!({ "identifier": "campaign_preview_recipients", "target": { "campaign_id": campaign, "limit": 2 } })).await;
        let shown: Vec<&str> = done["output"]["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            shown,
            want.iter().take(2).copied().collect::<Vec<_>>(),
            "{campaign}"
        );
    }
    let done = run(
        &s,
        &t,
        json!({ "identifier": "campaign_count_recipients", "target": { "campaign_id": "nope" } }),
    )
    .await;
    assert_refused(
        &done,
        json!({ "target[campaign_id]": ["Campaign 'nope' does not exist"] }),
    );
    s.stop().await;
}

async fn messages_and_personal_data(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("messages").await;
    load_people(&s, &t).await;
    let done = s
        .import(&t, "campaigns", b"campaign_id,name,channel,status\nc1,One,email,sent\nc2,Two,push,sent\nc3,Three,sms,draft\n".to_vec())
        .await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    // (send, campaign, user, sent day of January, delivered, opened, clicked)
    let sends: [(&str, &str, &str, u32, bool, bool, bool); 7] = [
        ("s1", "c1", "u1", 3, true, true, true),
        ("s2", "c1", "u4", 3, true, false, false),
        ("s3", "c1", "u5", 20, false, false, false),
        ("s4", "c2", "u1", 5, true, true, false),
        ("s5", "c2", "u3", 5, true, false, false),
        ("s6", "c2", "u3", 28, true, true, true),
        ("s7", "c1", "u2", 9, true, true, false),
    ];
    let mut csv = String::from(
        "send_id,campaign_id,user_id,channel,sent_at,delivered_at,opened_at,clicked_at\n",
    );
    for (id, c, u, day, d, o, k) in sends {
        let at = format!("2026-01-{day:02}T10:00:00Z");
        let when = |b: bool| if b { at.clone() } else { String::new() };
        csv.push_str(&format!(
            "{id},{c},{u},email,{at},{},{},{}\n",
            when(d),
            when(o),
            when(k)
        ));
    }
    let done = s.import(&t, "sends", csv.into_bytes()).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");

    // Campaign statistics over 1–15 January.
    let done = run(&s, &t, json!({ "identifier": "message_export_campaign", "target": { "from": "2026-01-01", "to": "2026-01-15", "export_format": "json" } })).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let rows: Vec<Value> =
        serde_json::from_slice(&s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let c = row["campaign_id"].as_str().unwrap();
        let mine: Vec<_> = sends.iter().filter(|x| x.1 == c && x.3 < 15).collect();
        assert_eq!(row["sent"], mine.len(), "{row}");
        assert_eq!(
            row["delivered"],
            mine.iter().filter(|x| x.4).count(),
            "{row}"
        );
        assert_eq!(row["opened"], mine.iter().filter(|x| x.5).count(), "{row}");
        assert_eq!(row["clicked"], mine.iter().filter(|x| x.6).count(), "{row}");
    }
    // Sends of one campaign from 4 January on.
    let done = run(&s, &t, json!({ "identifier": "message_export_send", "target": { "campaign_id": "c1", "from": "2026-01-04" } })).await;
    let got = csv_column(&s.download(&t.key, done["id"].as_i64().unwrap()).await, 0);
    let want: Vec<&str> = sends
        .iter()
        .filter(|x| x.1 == "c1" && x.3 >= 4)
        .map(|x| x.0)
        .collect();
    assert_eq!(got, want);
    let done = run(
        &s,
        &t,
        json!({ "identifier": "message_export_send", "target": { "campaign_id": "c999" } }),
    )
    .await;
    assert_refused(
        &done,
        json!({ "target[campaign_id]": ["Campaign 'c999' does not exist"] }),
    );
    let (status, body) = s
        .call(
            "POST",
            "/tasks",
            &t.key,
            Some(json!({ "identifier": "message_export_send", "target": { "from": "last week" } })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("target.from"), "{body}");

    // An attributed install of u1's device.
    let installs = s
        .import(
            &t,
            "installs",
            b"device_id,user_id,platform,network\nd-u1,u1,ios,Meta\nd-x,u9,ios,Meta\n".to_vec(),
        )
        .await;
    assert_eq!(installs["state"]["code"], "DONE", "{installs}");

    // Everything held about u1.
    let done = run(
        &s,
        &t,
        json!({ "identifier": "profile_export_data", "target": { "email": "a@x.io" } }),
    )
    .await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let doc: Value =
        serde_json::from_slice(&s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert_eq!(doc["user_id"], "u1");
    assert_eq!(doc["profile"]["attributes"]["nickname"], "nicku1");
    assert_eq!(doc["devices"].as_array().unwrap().len(), 1);
    assert_eq!(doc["installs"][0]["device_id"], "d-u1", "{doc}");
    assert_eq!(
        doc["lists"],
        json!([{ "list_id": "vip", "added_at": doc["lists"][0]["added_at"] }])
    );
    assert_eq!(
        doc["sends"].as_array().unwrap().len(),
        sends.iter().filter(|x| x.2 == "u1").count()
    );

    // Erase u1 and u3: PII and PII attributes go, devices and memberships go, sends stay.
    let done = run(&s, &t, json!({ "identifier": "profile_delete_personal_data", "target": { "user_ids": ["u1", "u3", "u404", "u1", "u404"] } })).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(
        done["output"],
        json!({ "profiles": 2, "devices": 3, "installs": 1, "list_memberships": 2, "not_found": ["u404"] })
    );
    let rows = profiles(&s, &t).await;
    let u1 = rows.iter().find(|r| r["user_id"] == "u1").unwrap();
    assert_eq!(u1["email"], Value::Null);
    assert_eq!(u1["email_opt_in"], true, "not personal data");
    assert_eq!(u1["attributes"], json!({ "ltv": 120.0, "vip": true }));
    let done = run(
        &s,
        &t,
        json!({ "identifier": "profile_export_data", "target": { "user_id": "u1" } }),
    )
    .await;
    let doc: Value =
        serde_json::from_slice(&s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert_eq!(doc["devices"], json!([]));
    assert_eq!(doc["lists"], json!([]));
    assert_eq!(doc["sends"].as_array().unwrap().len(), 2, "sends are kept");

    // A retention policy makes one daily cleanup_users task.
    settings(
        &s,
        &t,
        json!({ "retention": { "delete_inactive_after_days": 365 } }),
    )
    .await;
    settings(
        &s,
        &t,
        json!({ "retention": { "delete_inactive_after_days": 365 } }),
    )
    .await;
    let (status, list) = s
        .call("GET", "/tasks?identifier=cleanup_users", &t.key, None)
        .await;
    assert_eq!(status, 200);
    let tasks = list["tasks"].as_array().unwrap_or_else(|| panic!("{list}"));
    assert_eq!(tasks.len(), 1, "{list}");
    assert_eq!(tasks[0]["trigger"]["repeat"], "daily");
    let id = tasks[0]["id"].as_i64().unwrap();
    // It is due now; wait for the run to come back READY for tomorrow.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let task = loop {
        let (_, task) = s.call("GET", &format!("/tasks/{id}"), &t.key, None).await;
        // The run logs what it deleted before it ends: both must be seen.
        let deleted = task["logs"].as_array().is_some_and(|l| {
            l.iter()
                .any(|e| e["msg"].as_str().unwrap_or("").starts_with("deleted"))
        });
        if deleted && task["state"]["code"] == "READY" {
            break task;
        }
        assert!(std::time::Instant::now() < deadline, "{task}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        task["logs"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["msg"] == "DONE -> READY")),
        "{task}"
    );
    let rows = profiles(&s, &t).await;
    let left: Vec<&str> = rows
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        left,
        ["u1", "u2", "u3", "u4"],
        "u5 and u6 were inactive since 2020"
    );
    // While the policy is set, deleting its daily task makes a new one.
    let (status, _) = s
        .call("DELETE", &format!("/tasks/{id}"), &t.key, None)
        .await;
    assert_eq!(status, 204);
    let (_, list) = s
        .call("GET", "/tasks?identifier=cleanup_users", &t.key, None)
        .await;
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{list}");
    assert_ne!(tasks[0]["id"], json!(id));
    assert_eq!(tasks[0]["trigger"]["repeat"], "daily");
    // Clearing the policy stops the clean-ups: its daily task goes (once its
    // first run, which starts at once, is over).
    let new_id = tasks[0]["id"].as_i64().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, t2) = s
            .call("GET", &format!("/tasks/{new_id}"), &t.key, None)
            .await;
        if t2["state"]["code"] == "READY"
            && t2["attempts"] == 0
            && t2["logs"].as_array().unwrap().len() > 1
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{t2}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = s
        .call(
            "PUT",
            "/settings",
            &t.key,
            Some(json!({ "retention": null })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, list) = s
        .call(
            "GET",
            "/tasks?identifier=cleanup_users&state=READY",
            &t.key,
            None,
        )
        .await;
    assert_eq!(list["tasks"], json!([]), "{list}");
    s.stop().await;
}

/// A tenant identifying profiles by email: rows match the profile that
/// holds the email; a new email makes a profile whose user_id is the email.
async fn profiles_identified_by_email(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("by-email").await;
    let done = profile_import(
        &s,
        &t,
        "user_id,email\nu1,a@x.io\nu2,b@x.io\nd1,same@x.io\nd2,same@x.io\nbob,bob@x.io\n",
        json!({}),
    )
    .await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    settings(&s, &t, json!({ "identifier_column": "email" })).await;
    // An email two profiles share cannot say which one a row means, and a
    // new email whose would-be user_id is another profile's must not edit
    // that profile: both rows are rejected, and nobody is changed.
    let done = profile_import(
        &s,
        &t,
        "email,first_name\nsame@x.io,Sam\nbob,Mallory\n",
        json!({}),
    )
    .await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    let reasons: Vec<&str> = done["errors"]["file[rows]"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "Rows match more than one profile in column 'email' (Row 2)",
            "Rows would make a profile whose user_id another profile has in column 'email' (Row 3)"
        ],
        "{done}"
    );
    let failed = String::from_utf8(s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert!(
        failed.contains("2 profiles have email 'same@x.io' (user_id d1, d2)"),
        "{failed}"
    );
    assert!(failed.contains("is another profile's"), "{failed}");
    // A row that names one of the sharing profiles updates that one.
    let done = profile_import(
        &s,
        &t,
        "email,first_name,user_id\nsame@x.io,Dee,d2\n",
        json!({}),
    )
    .await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    // The same for a list built by email.
    let upload = s
        .upload(&t.key, "vip.csv", b"email\nsame@x.io\na@x.io\n".to_vec())
        .await;
    let task = s
        .create(&t.key, json!({ "identifier": "list_import", "target": { "list_id": "vip", "upload_id": upload } }))
        .await;
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": ["Rows match more than one profile in column 'email' (Row 2)"] }),
        "{done}"
    );
    assert_eq!(done["output"]["applied"], 1, "{done}");
    let done = profile_import(
        &s,
        &t,
        "email,first_name\na@x.io,Ann\nnew@x.io,Neo\n,Nobody\nb@x.io,Bea\nb@x.io,Bea again\n",
        json!({}),
    )
    .await;
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": ["Rows must contain identifier (Row 4)", "Rows are duplicates (Row 6)"] })
    );
    // A file without the identifier column cannot be imported at all.
    let done = profile_import(&s, &t, "user_id,first_name\nu1,Ann\n", json!({})).await;
    assert_eq!(
        done["errors"],
        json!({ "file[columns]": ["Column 'email' is required: it identifies profiles"] })
    );
    let rows = profiles(&s, &t).await;
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap(),
                r["first_name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("bob", ""),
            ("d1", ""),
            ("d2", "Dee"),
            ("new@x.io", "Neo"),
            ("u1", "Ann"),
            ("u2", "Bea")
        ]
    );
    s.stop().await;
}

/// Each awkward file either imports correctly or ends in ERROR with a
/// message that says where; none leaves partial state it should not.
async fn bad_files_end_precisely(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("bad-files").await;
    // BOM, CRLF and a quoted newline import correctly.
    let done = profile_import(
        &s,
        &t,
        "\u{feff}user_id,first_name,last_name\r\nu1,\"Ann\r\nMarie\",Smith\r\nu2,Bo,\"O\"\"Neil\"\r\n",
        json!({}),
    )
    .await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    let rows = profiles(&s, &t).await;
    assert_eq!(rows[0]["first_name"], "Ann\r\nMarie");
    assert_eq!(rows[1]["last_name"], "O\"Neil");
    // A ragged row is one rejected row; the others are applied.
    let done = profile_import(
        &s,
        &t,
        "user_id,first_name\nu3,Cy\nu4\nu5,Di,extra\n",
        json!({}),
    )
    .await;
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": ["2 Rows have the wrong number of fields ( Row 3, Row 4)"] })
    );
    assert_eq!(profiles(&s, &t).await.len(), 3);
    // Invalid UTF-8 in a cell names the column and the row.
    let upload = s
        .upload(
            &t.key,
            "bad.csv",
            b"user_id,first_name\nu6,\xff\xfe\nu7,Ok\n".to_vec(),
        )
        .await;
    let task = s
        .create(
            &t.key,
            json!({ "identifier": "profile_import", "target": { "upload_id": upload } }),
        )
        .await;
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": ["Rows are not valid UTF-8 in column 'first_name' (Row 2)"] })
    );
    // An empty file is refused at upload; blank lines only end in ERROR.
    let resp = s
        .http
        .post(format!("{}/uploads?filename=empty.csv", s.url))
        .bearer_auth(&t.key)
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("the upload is empty"));
    let done = profile_import(&s, &t, "\n", json!({})).await;
    assert_eq!(done["state"]["code"], "ERROR");
    assert_eq!(done["errors"], json!({ "file": ["the file is empty"] }));
    let done = profile_import(&s, &t, "user_id,first_name\n", json!({})).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["output"]["rows"], 0);
    assert_eq!(profiles(&s, &t).await.len(), 4);
    s.stop().await;
}

/// `POST /tasks` as multipart/form-data: the task JSON and the file in one
/// request; the file becomes the task's upload.
async fn multipart_task_with_its_file(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("multipart").await;
    let post = |body: String| {
        s.http
            .post(format!("{}/tasks", s.url))
            .bearer_auth(&t.key)
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
    };
    let part = |name: &str, extra: &str, content: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n{content}\r\n"
        )
    };
    let body = part(
        "task",
        "",
        r#"{"identifier": "profile_import", "desc": "one request"}"#,
    ) + &part(
        "file",
        "; filename=\"p.csv\"",
        "user_id,email\nu1,a@x.io\nu2,b@x.io",
    ) + "--XyZ--\r\n";
    let resp = post(body).await.unwrap();
    assert_eq!(resp.status(), 201);
    let task: Value = resp.json().await.unwrap();
    assert!(task["target"]["upload_id"].is_string(), "{task}");
    let done = s.wait(&t.key, task["id"].as_i64().unwrap(), 60).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(profiles(&s, &t).await.len(), 2);

    // Mistakes name the part.
    for (body, needle) in [
        (part("file", "", "x") + "--XyZ--\r\n", "part named task"),
        (
            part("task", "", "{\"identifier\": 3}") + "--XyZ--\r\n",
            "identifier",
        ),
        (part("other", "", "x") + "--XyZ--\r\n", "unknown part"),
        ("garbage".to_string(), "malformed"),
        // The file arrives whole before the task is refused.
        (
            part("file", "; filename=\"p.csv\"", "user_id\nu1")
                + &part("task", "", r#"{"identifier": "profile_imprt"}"#)
                + "--XyZ--\r\n",
            "profile_imprt",
        ),
        (
            part("file", "; filename=\"p.csv\"", "user_id\nu1")
                + &part("file", "; filename=\"q.csv\"", "user_id\nu2")
                + "--XyZ--\r\n",
            "more than once",
        ),
    ] {
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{text}");
    }
    // A refused request keeps none of its file: only the accepted one is held.
    let uploads = s.files_under(&format!("uploads/{}", t.id));
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    s.stop().await;
}

/// `target.atomic`: a file with any problem (a duplicate far apart counts
/// too) writes nothing and says so; a clean file is written whole.
async fn atomic_imports_write_all_or_nothing(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("atomic").await;
    // 12,000 rows: two batches; the last row repeats row 2's key.
    let mut csv = String::from("user_id,email\n");
    for i in 0..12_000 {
        csv.push_str(&format!("u{i},p{i}@x.io\n"));
    }
    csv.push_str("u0,again@x.io\n");
    // A dry run reports what the real run would: the repeat across batches
    // found, nothing applied.
    let dry = profile_import(&s, &t, &csv, json!({ "atomic": true, "dry_run": true })).await;
    assert_eq!(dry["state"]["code"], "ERROR", "{dry}");
    assert_eq!(
        dry["errors"],
        json!({ "file[rows]": ["Rows are duplicates (Row 12002)"] })
    );
    assert_eq!(
        (
            &dry["output"]["applied"],
            &dry["output"]["atomic"],
            &dry["output"]["dry_run"]
        ),
        (&json!(0), &json!(true), &json!(true))
    );
    let done = profile_import(&s, &t, &csv, json!({ "atomic": true })).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": ["Rows are duplicates (Row 12002)"] })
    );
    assert_eq!(done["output"]["applied"], 0);
    assert!(profiles(&s, &t).await.is_empty(), "nothing was written");
    let failed = String::from_utf8(s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert!(
        failed
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("12002,duplicate,"),
        "{failed}"
    );

    // Without the repeat the file is written whole.
    let clean: String = csv.lines().take(12_001).map(|l| format!("{l}\n")).collect();
    let dry = profile_import(&s, &t, &clean, json!({ "atomic": true, "dry_run": true })).await;
    assert_eq!(dry["state"]["code"], "DONE", "{dry}");
    assert_eq!(dry["output"]["applied"], 12_000);
    assert!(
        profiles(&s, &t).await.is_empty(),
        "a dry run writes nothing"
    );
    let done = profile_import(&s, &t, &clean, json!({ "atomic": true })).await;
    assert_eq!(done["state"]["code"], "DONE", "{done}");
    assert_eq!(done["output"]["applied"], 12_000);
    assert_eq!(profiles(&s, &t).await.len(), 12_000);
    s.stop().await;
}

/// The generic `import` into `users` holds attributes to the tenant's
/// schema as profile_import does: a row with an unknown or mistyped
/// attribute is refused, named, and the rest are written; an atomic one
/// writes nothing.
async fn generic_import_into_users_checks_attributes(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("generic").await;
    settings(
        &s,
        &t,
        json!({ "attributes": [{ "name": "ltv", "type": "number" }] }),
    )
    .await;
    let csv = "user_id,email,attributes\n\
        u1,a@x.io,\"{\"\"ltv\"\":12}\"\n\
        u2,b@x.io,\"{\"\"color\"\":\"\"red\"\"}\"\n\
        u3,c@x.io,\"{\"\"ltv\"\":\"\"lots\"\"}\"\n";
    let done = s.import(&t, "users", csv.as_bytes().to_vec()).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(
        done["errors"],
        json!({ "file[rows]": [
            "Rows have an attribute that is not a profile attribute in column 'attributes' (Row 3)",
            "Rows have an invalid value in column 'attributes' (Row 4)"
        ] })
    );
    // The failed-rows file says which attribute, row by row.
    let failed = String::from_utf8(s.download(&t.key, done["id"].as_i64().unwrap()).await).unwrap();
    assert!(
        failed.contains("attribute 'color', which is not a recognized attribute"),
        "{failed}"
    );
    assert!(
        failed.contains("attribute 'ltv' has 'lots', expected a number"),
        "{failed}"
    );
    let stored = profiles(&s, &t).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["user_id"], "u1");
    assert_eq!(stored[0]["attributes"], json!({ "ltv": 12.0 }));
    s.stop().await;
}

/// A saved segment made invalid by a settings change after it was saved is
/// the input's problem: the run ends in ERROR naming it, not FATAL.
async fn segments_that_no_longer_fit_end_in_error(b: Backend) {
    let s = start(b).await;
    let t = s.tenant("refit").await;
    let (status, body) = s
        .call(
            "PUT",
            "/settings",
            &t.key,
            Some(json!({ "attributes": [{ "name": "points", "type": "number" }] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .call("POST", "/segments", &t.key, Some(json!({ "name": "rich", "filter": { "field": "points", "op": "gte", "value": 100 } })))
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().unwrap();
    let (status, body) = s
        .call(
            "PUT",
            "/settings",
            &t.key,
            Some(json!({ "attributes": [] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done = run(
        &s,
        &t,
        json!({ "identifier": "segment_count_recipients", "trigger": { "segment_id": id } }),
    )
    .await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert!(
        done["errors"]["trigger[segment_id]"][0]
            .as_str()
            .unwrap()
            .contains("no longer fits"),
        "{done}"
    );
    // An access request by an email two profiles share says so.
    let shared = s
        .import(
            &t,
            "users",
            b"user_id,email\ndupA,same@x.io\ndupB,same@x.io\n".to_vec(),
        )
        .await;
    assert_eq!(shared["state"]["code"], "DONE", "{shared}");
    let done = run(
        &s,
        &t,
        json!({ "identifier": "profile_export_data", "target": { "email": "same@x.io" } }),
    )
    .await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert!(
        done["errors"]["target[email]"][0]
            .as_str()
            .unwrap()
            .starts_with("2 profiles have email 'same@x.io' (user_id dupA, dupB)"),
        "{done}"
    );
    // A list that is not there is named, not an audience of nobody.
    let done = run(&s, &t, json!({ "identifier": "segment_count_recipients", "trigger": { "segment": { "not": { "field": "user_id", "op": "in_list", "value": "nolist" } } } })).await;
    assert_eq!(done["state"]["code"], "ERROR", "{done}");
    assert_eq!(
        done["errors"]["trigger[segment]"],
        json!(["List 'nolist' does not exist"]),
        "{done}"
    );
    s.stop().await;
}
