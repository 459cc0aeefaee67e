//! One person's data: `profile_export_data` (everything held about a
//! profile, as one JSON document), `profile_delete_personal_data` (erase
//! personal data, keep pseudonymous transactional rows) and
//! `cleanup_users` (the tenant's retention policy).

use async_trait::async_trait;
use datask_core::index::{
    DEVICES, INSTALLS, IndexDef, LIST_MEMBERS, SENDS, TRANSACTIONS, USERS, VOUCHERS, WALLET_LEDGER,
};
use datask_core::segment::{Bound, Field, Filter};
use datask_core::task::Counts;
use datask_data::{ExportFormat, ExportWriter};
use datask_engine::{FileStore, Handler, Invalid, Outcome, TaskContext, TaskError};
use futures::StreamExt;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use crate::audience::input_error;
use crate::target;

/// Standard profile fields that identify a person and are erased.
pub const PII_FIELDS: [&str; 4] = ["email", "mobile_number", "first_name", "last_name"];

/// At most this many profiles per erasure task.
const MAX_PROFILES: usize = 1000;

fn eq(column: &'static str, value: &str) -> Filter {
    Filter::Compare {
        column: Field::Column(column),
        op: "=",
        value: Bound::Text(value.to_string()),
    }
}

fn user_in(ids: &[String]) -> Filter {
    Filter::In {
        column: Field::Column("user_id"),
        negated: false,
        values: ids.iter().map(|s| Bound::Text(s.clone())).collect(),
    }
}

/// The profile a target names by `user_id`, `email` or `mobile_number`
/// (exactly one of them).
fn profile_key(t: &Map<String, Value>) -> Result<(&'static str, &str), Invalid> {
    let mut given: Vec<(&'static str, &str)> = Vec::new();
    for k in ["user_id", "email", "mobile_number"] {
        match t.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => given.push((k, s.as_str())),
            // A number is not a missing value: say what it is.
            Some(other) => {
                return Err(Invalid::new(k, format!("must be a string, not {other}")));
            }
        }
    }
    match given.as_slice() {
        [(k, v)] if !v.is_empty() => Ok((*k, *v)),
        [] => Err(Invalid::new(
            "user_id",
            "is required (or give email or mobile_number instead)",
        )),
        _ => Err(Invalid::new(
            "user_id",
            "give exactly one of user_id, email, mobile_number, not empty",
        )),
    }
}

/// Rows of `index` matching `filter` as JSON objects.
async fn rows_as_json(
    ctx: &TaskContext,
    index: &'static IndexDef,
    filter: &Filter,
) -> Result<Vec<Value>, TaskError> {
    let mut stream = ctx
        .store
        .export_rows(ctx.task.tenant_id, index, Some(filter))
        .await?;
    let mut w = ExportWriter::new(ExportFormat::JsonLines, index);
    while let Some(batch) = stream.next().await {
        for row in batch? {
            w.write_row(&row);
        }
    }
    let bytes = w.finish();
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(|e| TaskError::Fatal(e.to_string())))
        .collect()
}

/// `profile_export_data`.
pub struct ProfileExportData;

#[async_trait]
impl Handler for ProfileExportData {
    fn identifier(&self) -> &'static str {
        "profile_export_data"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "user_id", "email", "mobile_number"])?;
        profile_key(t)?;
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let (column, value) =
            profile_key(&ctx.task.target).map_err(|e| TaskError::Fatal(e.to_string()))?;
        let profiles = rows_as_json(ctx, &USERS, &eq(column, value)).await?;
        // An access request is about one person: an email or number that
        // several profiles share cannot say which (all of them, silently
        // one of them, would both answer a question not asked).
        if profiles.len() > 1 {
            let ids: Vec<&str> = profiles
                .iter()
                .filter_map(|p| p["user_id"].as_str())
                .take(10)
                .collect();
            return Ok(input_error(
                &format!("target[{column}]"),
                format!(
                    "{} profiles have {column} '{value}' (user_id {}{}): export each by user_id",
                    profiles.len(),
                    ids.join(", "),
                    if profiles.len() > ids.len() {
                        ", …"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let Some(profile) = profiles.into_iter().next() else {
            return Ok(input_error(
                &format!("target[{column}]"),
                format!("No profile has {column} '{value}'"),
            ));
        };
        let user_id = profile["user_id"].as_str().unwrap_or_default().to_string();
        let mine = eq("user_id", &user_id);
        let mut doc = Map::new();
        doc.insert("user_id".into(), json!(user_id));
        doc.insert("exported_at".into(), json!(Timestamp::now().to_string()));
        doc.insert("profile".into(), profile);
        let lists: Vec<Value> = rows_as_json(ctx, &LIST_MEMBERS, &mine)
            .await?
            .into_iter()
            .map(|m| json!({ "list_id": m["list_id"], "added_at": m["added_at"] }))
            .collect();
        let mut held = 1 + lists.len() as i64;
        doc.insert("lists".into(), Value::Array(lists));
        for (key, index) in [
            ("devices", &DEVICES),
            ("installs", &INSTALLS),
            ("sends", &SENDS),
            ("transactions", &TRANSACTIONS),
            ("vouchers", &VOUCHERS),
            ("wallet_ledger", &WALLET_LEDGER),
        ] {
            let rows = rows_as_json(ctx, index, &mine).await?;
            held += rows.len() as i64;
            doc.insert(key.into(), Value::Array(rows));
        }
        let name = format!("profile-{}.json", ctx.task.id);
        let key = FileStore::result_key(ctx.task.tenant_id, ctx.task.id, ctx.fence, &name);
        let mut file = ctx.files.writer(&key);
        let bytes = serde_json::to_vec_pretty(&Value::Object(doc)).expect("JSON values");
        let written = async {
            file.write_all(&bytes).await?;
            file.shutdown().await
        }
        .await;
        if let Err(e) = written {
            let _ = file.abort().await;
            return Err(TaskError::Retryable(format!("writing the result: {e}")));
        }
        Ok(Outcome {
            output: Some(json!({ "user_id": user_id, "records": held })),
            result: Some(key),
            counts: Some(Counts {
                total: held,
                errors: 0,
                skips: 0,
                success: held,
            }),
            ..Default::default()
        })
    }
}

/// `profile_delete_personal_data`: for each of `target.user_ids` (or one
/// `target.user_id`): PII fields and PII-marked attributes set to nothing,
/// devices and list memberships deleted. Transactions, vouchers, the
/// wallet ledger and sends stay, keyed by the now anonymous user_id.
/// Every step is idempotent, so a retried run ends the same.
pub struct ProfileDeletePersonalData;

fn user_ids(t: &Map<String, Value>) -> Result<Vec<String>, Invalid> {
    let given = |k| t.get(k).filter(|v| !v.is_null());
    let mut ids: Vec<String> = match (given("user_ids"), given("user_id")) {
        (Some(Value::Array(items)), None) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Invalid::new(format!("user_ids[{i}]"), "must be a user id (a string)")
                    })
            })
            .collect::<Result<_, _>>()?,
        (None, Some(Value::String(s))) if !s.is_empty() => vec![s.clone()],
        (None, Some(other)) => {
            return Err(Invalid::new(
                "user_id",
                format!("must be a user id (a non-empty string), not {other}"),
            ));
        }
        (Some(other), None) => {
            return Err(Invalid::new(
                "user_ids",
                format!("must be a list of user ids, not {other}"),
            ));
        }
        (None, None) => {
            return Err(Invalid::new(
                "user_ids",
                "is required: the profiles to erase",
            ));
        }
        _ => {
            return Err(Invalid::new(
                "user_ids",
                "give user_ids (a list of strings) or user_id (a string), not both",
            ));
        }
    };
    if ids.is_empty() || ids.len() > MAX_PROFILES {
        return Err(Invalid::new(
            "user_ids",
            format!("must hold 1 to {MAX_PROFILES} user ids"),
        ));
    }
    // A repeated id is one profile: counted and reported once.
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.retain(|id| seen.insert(id.clone()));
    Ok(ids)
}

#[async_trait]
impl Handler for ProfileDeletePersonalData {
    fn identifier(&self) -> &'static str {
        "profile_delete_personal_data"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action", "user_ids", "user_id"])?;
        user_ids(t)?;
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let ids = user_ids(&ctx.task.target).map_err(|e| TaskError::Fatal(e.to_string()))?;
        let tenant = ctx.task.tenant_id;
        let settings = ctx.store.profile_settings(tenant).await?;
        let pii_attributes: Vec<String> = settings
            .attributes
            .iter()
            .filter(|a| a.pii)
            .map(|a| a.name.clone())
            .collect();
        let found: std::collections::HashSet<String> = ctx
            .store
            .lookup_profiles(tenant, "user_id", ids.clone())
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let missing: Vec<&String> = ids.iter().filter(|i| !found.contains(*i)).collect();
        ctx.checkpoint()?;
        let mine = user_in(&ids);
        let devices = ctx.store.delete_rows(tenant, &DEVICES, &mine).await?;
        // An attributed install ties a device to the person, as a device does.
        let installs = ctx.store.delete_rows(tenant, &INSTALLS, &mine).await?;
        let memberships = ctx.store.delete_rows(tenant, &LIST_MEMBERS, &mine).await?;
        let profiles = ctx
            .store
            .clear_fields(tenant, &USERS, &mine, &PII_FIELDS, &pii_attributes)
            .await?;
        ctx.log(format!(
            "erased the personal data of {profiles} profiles ({} fields, {} attributes each); deleted {devices} devices, {installs} installs and {memberships} list memberships",
            PII_FIELDS.len(),
            pii_attributes.len()
        ))
        .await?;
        Ok(Outcome {
            output: Some(json!({
                "profiles": profiles,
                "devices": devices,
                "installs": installs,
                "list_memberships": memberships,
                "not_found": missing,
            })),
            counts: Some(Counts {
                total: ids.len() as i64,
                errors: 0,
                skips: missing.len() as i64,
                success: profiles,
            }),
            ..Default::default()
        })
    }
}

/// `cleanup_users`: profiles inactive for longer than the retention policy
/// allows (last active, or created when never active, before the cutoff)
/// are deleted with their devices and list memberships. Without a policy
/// it deletes nothing. Repeating daily tasks are made for every tenant
/// that sets a policy (see `PUT /settings`).
pub struct CleanupUsers;

#[async_trait]
impl Handler for CleanupUsers {
    fn identifier(&self) -> &'static str {
        "cleanup_users"
    }

    fn validate(&self, t: &mut Map<String, Value>) -> Result<(), Invalid> {
        target::only_fields(t, &["action"])?;
        Ok(())
    }

    async fn run(&self, ctx: &TaskContext) -> Result<Outcome, TaskError> {
        let tenant = ctx.task.tenant_id;
        let settings = ctx.store.profile_settings(tenant).await?;
        let Some(retention) = settings.retention else {
            // The policy's own daily task stops with the policy (it is
            // deleted when the policy is cleared, unless it was running).
            if ctx.task.desc == datask_core::settings::RETENTION_TASK_DESC
                && ctx.task.trigger.repeat.is_some()
            {
                ctx.log("no retention policy any more: the daily clean-up stops")
                    .await?;
                return Err(TaskError::Cancelled);
            }
            ctx.log("no retention policy: nothing to delete").await?;
            return Ok(Outcome {
                output: Some(json!({ "profiles": 0, "policy": Value::Null })),
                counts: Some(Counts::default()),
                ..Default::default()
            });
        };
        let cutoff = Timestamp::now().as_microsecond()
            - retention.delete_inactive_after_days * 86_400_000_000;
        let before = |column: &'static str| Filter::Compare {
            column: Field::Column(column),
            op: "<",
            value: Bound::Time(cutoff),
        };
        let inactive = Filter::Any(vec![
            before("last_active_at"),
            Filter::All(vec![
                Filter::Null {
                    column: Field::Column("last_active_at"),
                    negated: false,
                },
                before("created_at"),
            ]),
        ]);
        let owned = Filter::OwnedBy(Box::new(inactive.clone()));
        // Dependent rows first: they are found through the profiles.
        let devices = ctx.store.delete_rows(tenant, &DEVICES, &owned).await?;
        let installs = ctx.store.delete_rows(tenant, &INSTALLS, &owned).await?;
        let memberships = ctx.store.delete_rows(tenant, &LIST_MEMBERS, &owned).await?;
        ctx.checkpoint()?;
        let profiles = ctx.store.delete_rows(tenant, &USERS, &inactive).await?;
        let cutoff_text = Timestamp::from_microsecond(cutoff)
            .map(|t| t.to_string())
            .unwrap_or_default();
        ctx.log(format!(
            "deleted {profiles} profiles inactive since before {cutoff_text}, {devices} devices, {installs} installs and {memberships} list memberships"
        ))
        .await?;
        Ok(Outcome {
            output: Some(json!({
                "profiles": profiles,
                "devices": devices,
                "installs": installs,
                "list_memberships": memberships,
                "cutoff": cutoff_text,
                "policy": { "delete_inactive_after_days": retention.delete_inactive_after_days },
            })),
            counts: Some(Counts {
                total: profiles,
                errors: 0,
                skips: 0,
                success: profiles,
            }),
            ..Default::default()
        })
    }
}
