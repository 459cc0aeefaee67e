//! Administration with the root key.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use datask_core::schedule::time_zone;
use datask_core::store::{Credential, CredentialKind, NewTenant};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Root, hash_secret, new_secret};
use crate::body::JsonBody;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/tenants", post(create_tenant))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    concurrency: Option<i64>,
}

async fn create_tenant(
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
