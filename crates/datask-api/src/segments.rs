//! Saved segments at `/segments` and `/segments/{id}`: named filters over
//! profiles, used by tasks through `trigger.segment_id` and by campaigns.
//! A filter is checked against the tenant's attribute schema when saved,
//! so a mistake is a 400 naming its place (`filter.all[0].field`).

use crate::path::PathArgs;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use datask_core::index::USERS;
use datask_core::store::SavedSegment;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Access, Caller};
use crate::body::JsonBody;
use crate::error::ApiError;

const MAX_NAME: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/segments", get(list).post(create))
        .route("/segments/{id}", get(read).put(update).delete(remove))
}

#[derive(Serialize, ToSchema)]
pub struct SegmentView {
    pub id: i64,
    pub name: String,
    /// `{"all": [...]}`, `{"any": [...]}`, `{"not": ...}` or a leaf
    /// `{"field", "op", "value"}` over profile fields and custom attributes.
    #[schema(value_type = Object)]
    pub filter: Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<SavedSegment> for SegmentView {
    fn from(s: SavedSegment) -> Self {
        SegmentView {
            id: s.id,
            name: s.name,
            filter: s.filter,
            created_at: s.created_at.to_string(),
            updated_at: s.updated_at.to_string(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentInput {
    name: String,
    #[schema(value_type = Object)]
    filter: Value,
}

/// Checks a segment input against the tenant's attributes.
async fn checked(state: &AppState, tenant: i64, input: &SegmentInput) -> Result<(), ApiError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(ApiError::invalid(
            "name",
            format!("must be 1 to {MAX_NAME} characters"),
        ));
    }
    let settings = state.store.profile_settings(tenant).await?;
    datask_core::segment::parse_with(
        &USERS,
        &settings.attributes,
        &input.filter,
        "filter",
        Timestamp::now(),
    )
    .map_err(|e| ApiError::invalid(e.path, e.message))?;
    Ok(())
}

fn segment_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid("id", format!("'{raw}' is not a segment id")))
}

fn not_found() -> ApiError {
    ApiError::NotFound("segment not found".into())
}

/// The store's NotFound is a missing segment here, not a missing task.
fn missing_segment(e: datask_core::store::StoreError) -> ApiError {
    match e {
        datask_core::store::StoreError::NotFound => not_found(),
        e => e.into(),
    }
}

#[utoipa::path(get, path = "/segments", tag = "segments",
    responses((status = 200, body = Vec<SegmentView>), (status = 401, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<SegmentView>>, ApiError> {
    caller.require(Access::Viewer)?;
    let all = state.store.list_segments(caller.tenant_id).await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

#[utoipa::path(post, path = "/segments", tag = "segments", request_body = SegmentInput,
    responses((status = 201, body = SegmentView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, description = "needs manager access", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(input): JsonBody<SegmentInput>,
) -> Result<(StatusCode, Json<SegmentView>), ApiError> {
    caller.require(Access::Manager)?;
    checked(&state, caller.tenant_id, &input).await?;
    let saved = state
        .store
        .create_segment(
            caller.tenant_id,
            input.name.trim().to_string(),
            input.filter,
            Timestamp::now(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(saved.into())))
}

#[utoipa::path(get, path = "/segments/{id}", tag = "segments", params(("id" = i64, Path)),
    responses((status = 200, body = SegmentView),
        (status = 400, description = "the id is not a segment id", body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn read(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<SegmentView>, ApiError> {
    caller.require(Access::Viewer)?;
    let id = segment_id(&id)?;
    let saved = state
        .store
        .get_segment(caller.tenant_id, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(saved.into()))
}

#[utoipa::path(put, path = "/segments/{id}", tag = "segments", params(("id" = i64, Path)), request_body = SegmentInput,
    responses((status = 200, body = SegmentView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(input): JsonBody<SegmentInput>,
) -> Result<Json<SegmentView>, ApiError> {
    caller.require(Access::Manager)?;
    let id = segment_id(&id)?;
    checked(&state, caller.tenant_id, &input).await?;
    let saved = state
        .store
        .update_segment(
            caller.tenant_id,
            id,
            input.name.trim().to_string(),
            input.filter,
            Timestamp::now(),
        )
        .await
        .map_err(missing_segment)?;
    Ok(Json(saved.into()))
}

#[utoipa::path(delete, path = "/segments/{id}", tag = "segments", params(("id" = i64, Path)),
    responses((status = 204),
        (status = 400, description = "the id is not a segment id", body = crate::openapi::ErrorBody),
        (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Access::Manager)?;
    let id = segment_id(&id)?;
    state
        .store
        .delete_segment(caller.tenant_id, id)
        .await
        .map_err(missing_segment)?;
    Ok(StatusCode::NO_CONTENT)
}
