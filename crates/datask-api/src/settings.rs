//! `GET|PUT /settings`: the calling tenant's settings. `PUT` changes the
//! fields it is given and keeps the others.

use std::collections::HashSet;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use datask_core::index::USERS;
use datask_core::schedule::time_zone;
use datask_core::settings::{
    Attribute, Endpoint, IDENTIFIER_COLUMNS, INTEGRATIONS, Integrations, ProfileSettings, Retention,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Access, Caller};
use crate::body::JsonBody;
use crate::error::ApiError;

const MAX_ATTRIBUTES: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/settings", get(read).put(update))
}

#[derive(Serialize, ToSchema)]
pub struct SettingsView {
    pub id: i64,
    pub name: String,
    pub timezone: String,
    pub concurrency: i64,
    /// user_id, email or mobile_number.
    pub identifier_column: String,
    #[schema(value_type = Option<Object>)]
    pub retention: Option<Retention>,
    #[schema(value_type = Vec<Object>)]
    pub attributes: Vec<Attribute>,
    /// `{"active_directory": {"url", "token_set"}, "kochava": …}`: the
    /// configured endpoints; tokens are never shown.
    #[schema(value_type = Object)]
    pub integrations: Map<String, Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsInput {
    name: Option<String>,
    timezone: Option<String>,
    concurrency: Option<i64>,
    identifier_column: Option<String>,
    /// `{"delete_inactive_after_days": N}`, or null for none.
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<Object>)]
    retention: Option<Option<Retention>>,
    /// `[{"name", "type": "string|number|boolean|date", "enabled", "pii"}]`
    #[schema(value_type = Option<Vec<Object>>)]
    attributes: Option<Vec<Attribute>>,
    /// `{"active_directory": {"url", "token"} | null, "kochava": …}`: each
    /// integration given is replaced (null removes it); others are kept.
    #[schema(value_type = Option<Object>)]
    integrations: Option<Map<String, Value>>,
}

/// Tells "absent" (keep) from `null` (clear).
fn some_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Retention>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

async fn view(state: &AppState, tenant: i64) -> Result<SettingsView, ApiError> {
    let t = state
        .store
        .tenant(tenant)
        .await?
        .ok_or_else(|| ApiError::NotFound("tenant not found".into()))?;
    let p = state.store.profile_settings(tenant).await?;
    Ok(SettingsView {
        id: t.id,
        name: t.name,
        timezone: t.timezone,
        concurrency: t.concurrency,
        identifier_column: p.identifier_column,
        retention: p.retention,
        attributes: p.attributes,
        integrations: shown_integrations(&p.integrations),
    })
}

/// The configured endpoints as GET shows them: the URL, and whether a token
/// is kept (never the token).
fn shown_integrations(i: &Integrations) -> Map<String, Value> {
    INTEGRATIONS
        .iter()
        .filter_map(|name| {
            i.get(name).map(|e| {
                (
                    name.to_string(),
                    json!({ "url": e.url, "token_set": e.token.is_some() }),
                )
            })
        })
        .collect()
}

/// Applies `PUT /settings`'s `integrations` to `current`, naming the field
/// of the first mistake.
fn apply_integrations(
    current: &mut Integrations,
    input: Map<String, Value>,
) -> Result<(), ApiError> {
    for (name, value) in input {
        let field = format!("integrations.{name}");
        if !INTEGRATIONS.contains(&name.as_str()) {
            return Err(ApiError::invalid(
                field,
                format!(
                    "unknown integration; expected one of {}",
                    INTEGRATIONS.join(", ")
                ),
            ));
        }
        let endpoint = match value {
            Value::Null => None,
            Value::Object(o) => {
                for key in o.keys() {
                    if !matches!(key.as_str(), "url" | "token") {
                        return Err(ApiError::invalid(
                            format!("{field}.{key}"),
                            "unknown field; expected url, token",
                        ));
                    }
                }
                let url = match o.get("url") {
                    Some(Value::String(u)) => u.clone(),
                    None | Some(Value::Null) => {
                        return Err(ApiError::invalid(format!("{field}.url"), "is required"));
                    }
                    Some(other) => {
                        return Err(ApiError::invalid(
                            format!("{field}.url"),
                            format!("must be a string, not {other}"),
                        ));
                    }
                };
                datask_tasks::check_endpoint_url(&url)
                    .map_err(|m| ApiError::invalid(format!("{field}.url"), m))?;
                let token = match o.get("token") {
                    // Left out: the token set before stays, if the URL still
                    // points at the same server (tokens are never shown, so
                    // a client cannot send it back).
                    None => match current.get(&name) {
                        Some(before @ Endpoint { token: Some(_), .. })
                            if !datask_tasks::same_origin(&url, &before.url) =>
                        {
                            return Err(ApiError::invalid(
                                format!("{field}.token"),
                                "give the token again (or null for none): the URL points at another server than the token was given for",
                            ));
                        }
                        before => before.and_then(|e| e.token.clone()),
                    },
                    Some(Value::Null) => None,
                    Some(Value::String(t))
                        if !t.is_empty() && t.len() <= 4096 && !t.chars().any(char::is_control) =>
                    {
                        Some(t.clone())
                    }
                    Some(Value::String(_)) => {
                        return Err(ApiError::invalid(
                            format!("{field}.token"),
                            "must be 1 to 4096 characters without control characters",
                        ));
                    }
                    Some(other) => {
                        return Err(ApiError::invalid(
                            format!("{field}.token"),
                            format!("must be a string, not {other}"),
                        ));
                    }
                };
                Some(Endpoint { url, token })
            }
            other => {
                return Err(ApiError::invalid(
                    field,
                    format!("must be an object with url (and token), or null; not {other}"),
                ));
            }
        };
        current.set(&name, endpoint);
    }
    Ok(())
}

#[utoipa::path(get, path = "/settings", tag = "settings",
    params(("chain" = Option<i64>, Query, description = "the tenant, for an admin user")),
    responses((status = 200, body = SettingsView),
        (status = 400, body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn read(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<SettingsView>, ApiError> {
    caller.require(Access::Viewer)?;
    Ok(Json(view(&state, caller.tenant_id).await?))
}

#[utoipa::path(put, path = "/settings", tag = "settings", request_body = SettingsInput,
    params(("chain" = Option<i64>, Query, description = "the tenant, for an admin user")),
    responses((status = 200, body = SettingsView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, description = "needs manager access", body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn update(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(input): JsonBody<SettingsInput>,
) -> Result<Json<SettingsView>, ApiError> {
    caller.require(Access::Manager)?;
    let mut tenant = state
        .store
        .tenant(caller.tenant_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("tenant not found".into()))?;
    let mut profile: ProfileSettings = state.store.profile_settings(caller.tenant_id).await?;
    let had_policy_before = profile.retention.is_some();
    if let Some(name) = input.name {
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
        }
        tenant.name = name;
    }
    if let Some(tz) = input.timezone {
        time_zone(&tz).map_err(|e| ApiError::invalid("timezone", e.to_string()))?;
        tenant.timezone = tz;
    }
    if let Some(c) = input.concurrency {
        if !(1..=1000).contains(&c) {
            return Err(ApiError::invalid(
                "concurrency",
                format!("{c} is not between 1 and 1000"),
            ));
        }
        tenant.concurrency = c;
    }
    if let Some(col) = input.identifier_column {
        if !IDENTIFIER_COLUMNS.contains(&col.as_str()) {
            return Err(ApiError::invalid(
                "identifier_column",
                format!("'{col}' is not one of {}", IDENTIFIER_COLUMNS.join(", ")),
            ));
        }
        profile.identifier_column = col;
    }
    if let Some(retention) = input.retention {
        if let Some(r) = &retention
            && !(1..=36_500).contains(&r.delete_inactive_after_days)
        {
            return Err(ApiError::invalid(
                "retention.delete_inactive_after_days",
                "must be between 1 and 36500",
            ));
        }
        profile.retention = retention;
    }
    if let Some(attributes) = input.attributes {
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(ApiError::invalid(
                "attributes",
                format!("at most {MAX_ATTRIBUTES} attributes"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, a) in attributes.iter().enumerate() {
            let field = format!("attributes[{i}].name");
            let valid = a.name.len() <= 63
                && a.name.starts_with(|c: char| c.is_ascii_lowercase())
                && a.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "'{}' must start with a-z and hold only a-z, 0-9 and _ (at most 63)",
                        a.name
                    ),
                ));
            }
            if USERS.column(&a.name).is_some() {
                return Err(ApiError::invalid(
                    field,
                    format!("'{}' is a standard profile field", a.name),
                ));
            }
            if !seen.insert(a.name.as_str()) {
                return Err(ApiError::invalid(
                    field,
                    format!("'{}' appears more than once", a.name),
                ));
            }
        }
        profile.attributes = attributes;
    }
    if let Some(integrations) = input.integrations {
        apply_integrations(&mut profile.integrations, integrations)?;
    }
    let has_policy = profile.retention.is_some();
    let had_policy = had_policy_before;
    state.store.update_tenant(tenant, profile).await?;
    if has_policy {
        schedule_cleanup(&state, caller.tenant_id).await?;
    } else if had_policy {
        unschedule_cleanup(&state, caller.tenant_id).await?;
    }
    Ok(Json(view(&state, caller.tenant_id).await?))
}

/// Clearing the policy stops the clean-ups: the daily task made for it goes
/// (a run in progress finishes, finds no policy and deletes nothing).
async fn unschedule_cleanup(state: &AppState, tenant: i64) -> Result<(), ApiError> {
    let filter = datask_core::store::TaskFilter {
        identifier: Some("cleanup_users".into()),
        state: Some(datask_core::TaskState::Ready),
        limit: 100,
        ..Default::default()
    };
    // One running now finishes; its next run finds no policy and stops
    // (see `CleanupUsers`).
    for task in state.store.list_tasks(tenant, &filter).await? {
        if task.desc == CLEANUP_DESC && task.trigger.repeat.is_some() {
            match state.store.delete_task(tenant, task.id).await {
                Ok(()) | Err(datask_core::StoreError::NotFound) => {}
                // Claimed meanwhile: it runs once more, without a policy.
                Err(datask_core::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

use datask_core::settings::RETENTION_TASK_DESC as CLEANUP_DESC;

/// The key of a tenant's daily `cleanup_users` task: one per tenant.
pub const CLEANUP_KEY: &str = "datask:cleanup_users:daily";

/// A tenant with a retention policy gets one repeating daily
/// `cleanup_users` task (in its time zone, from now); setting a policy again
/// finds the same task. Removing the policy leaves the task, which then
/// deletes nothing.
pub(crate) async fn schedule_cleanup(state: &AppState, tenant: i64) -> Result<(), ApiError> {
    let now = jiff::Timestamp::now();
    state
        .store
        .insert_task(
            datask_core::task::NewTask {
                tenant_id: tenant,
                identifier: "cleanup_users".into(),
                desc: CLEANUP_DESC.into(),
                trigger: datask_core::task::Trigger {
                    once: Some(now),
                    repeat: Some(datask_core::task::Repeat::Daily),
                    timezone: None,
                    segment: None,
                    segment_id: None,
                },
                target: serde_json::Map::new(),
                max_attempts: 3,
                priority: 10,
                run_at: now,
                idempotency_key: Some(CLEANUP_KEY.into()),
            },
            now,
        )
        .await?;
    Ok(())
}
