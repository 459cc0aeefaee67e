//! Administration with the root key.

use crate::path::PathArgs;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use datask_core::schedule::time_zone;
use datask_core::store::{Credential, CredentialKind, Level, NewTenant};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Root, hash_secret, new_secret};
use crate::body::JsonBody;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/tenants", post(create_tenant))
        .route("/admin/users", post(create_user))
        .route("/admin/tenants/{id}/members/{user_id}", put(set_member))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    name: String,
}

#[utoipa::path(post, path = "/admin/users", tag = "admin", request_body = CreateUser,
    responses((status = 201, body = crate::openapi::UserCreated),
        (status = 400, body = crate::openapi::ErrorBody),
        (status = 401, description = "not the root key", body = crate::openapi::ErrorBody),
        (status = 404, description = "admin routes are off (no root key configured)", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn create_user(
    _root: Root,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let token = new_secret("dtk_user_");
    let user = state.store.create_user(&name, &hash_secret(&token)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": user.id, "name": user.name, "token": token })),
    ))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetMember {
    level: String,
}

#[utoipa::path(put, path = "/admin/tenants/{id}/members/{user_id}", tag = "admin", request_body = SetMember,
    params(("id" = i64, Path), ("user_id" = i64, Path)),
    responses((status = 200, body = crate::openapi::Membership),
        (status = 400, body = crate::openapi::ErrorBody),
        (status = 401, description = "not the root key", body = crate::openapi::ErrorBody),
        (status = 404, description = "admin routes are off (no root key configured)", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn set_member(
    _root: Root,
    State(state): State<AppState>,
    PathArgs((tenant, user)): PathArgs<(String, String)>,
    JsonBody(body): JsonBody<SetMember>,
) -> Result<Json<Value>, ApiError> {
    let tenant: i64 = tenant
        .parse()
        .map_err(|_| ApiError::invalid("id", format!("'{tenant}' is not a tenant id")))?;
    let user: i64 = user
        .parse()
        .map_err(|_| ApiError::invalid("user_id", format!("'{user}' is not a user id")))?;
    let level = Level::parse(&body.level).ok_or_else(|| {
        ApiError::invalid(
            "level",
            format!("'{}' is not one of {}", body.level, Level::NAMES.join(", ")),
        )
    })?;
    state
        .store
        .set_membership(tenant, user, level)
        .await
        .map_err(|e| match e {
            datask_core::StoreError::NotFound => {
                ApiError::NotFound(format!("no tenant {tenant} or no user {user}"))
            }
            e => e.into(),
        })?;
    Ok(Json(
        json!({ "tenant_id": tenant, "user_id": user, "level": level.as_str() }),
    ))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTenant {
    name: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    concurrency: Option<i64>,
}

#[utoipa::path(post, path = "/admin/tenants", tag = "admin", request_body = CreateTenant,
    responses((status = 201, body = crate::openapi::TenantCreated),
        (status = 400, body = crate::openapi::ErrorBody),
        (status = 401, description = "not the root key", body = crate::openapi::ErrorBody),
        (status = 404, description = "admin routes are off (no root key configured)", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn create_tenant(
    _root: Root,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    let timezone = body.timezone.unwrap_or_else(|| "UTC".into());
    time_zone(&timezone).map_err(|e| ApiError::invalid("timezone", e.to_string()))?;
    let concurrency = body.concurrency.unwrap_or(4);
    if !(1..=1000).contains(&concurrency) {
        return Err(ApiError::invalid(
            "concurrency",
            "must be between 1 and 1000",
        ));
    }
    let tenant = state
        .store
        .create_tenant(NewTenant {
            name,
            timezone,
            concurrency,
        })
        .await?;
    let (tenant, apptoken, privileged_key) = add_keys(&state, tenant).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": tenant.id,
            "name": tenant.name,
            "timezone": tenant.timezone,
            "concurrency": tenant.concurrency,
            "apptoken": apptoken,
            "privileged_key": privileged_key,
        })),
    ))
}

/// Gives a tenant its app token and a privileged key; only hashes are kept.
pub async fn add_keys(
    state: &AppState,
    tenant: datask_core::store::Tenant,
) -> Result<(datask_core::store::Tenant, String, String), ApiError> {
    let apptoken = new_secret("dtk_app_");
    let privileged_key = new_secret("dtk_priv_");
    for (secret, kind) in [
        (&apptoken, CredentialKind::AppToken),
        (&privileged_key, CredentialKind::PrivilegedKey),
    ] {
        state
            .store
            .add_credential(Credential {
                tenant_id: tenant.id,
                kind,
                secret_sha256: hash_secret(secret),
            })
            .await?;
    }
    Ok((tenant, apptoken, privileged_key))
}
