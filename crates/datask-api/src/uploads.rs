//! `POST /uploads`: the body is streamed to the file store while it is
//! hashed and measured; it is registered only once complete.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use datask_core::store::Upload;
use datask_engine::FileStore;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::AppState;
use crate::auth::{Access, Caller};
use crate::body::QueryParams;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    // The size limit is enforced while streaming, so the default one is off.
    Router::new()
        .route("/uploads", post(upload))
        .layer(DefaultBodyLimit::disable())
}

const ACCEPTED_TYPES: &[&str] = &[
    "text/csv",
    "text/plain",
    "application/csv",
    "application/json",
    "application/jsonl",
    "application/x-ndjson",
    "application/x-jsonlines",
    "application/octet-stream",
];

#[utoipa::path(post, path = "/uploads", tag = "files",
    params(("filename" = Option<String>, Query), ("chain" = Option<i64>, Query, description = "the tenant, for an admin user")),
    request_body(content = String, content_type = "text/csv", description = "the CSV or JSON-lines file, streamed"),
    responses((status = 201, body = crate::openapi::UploadAnswer),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "the credential may not upload", body = crate::openapi::ErrorBody),
        (status = 413, description = "larger than the limit", body = crate::openapi::ErrorBody),
        (status = 415, description = "not CSV or JSON lines", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn upload(
    caller: Caller,
    State(state): State<AppState>,
    QueryParams(params): QueryParams,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Access::Operator)?;
    if let Some(other) = params.keys().find(|k| *k != "filename" && *k != "chain") {
        return Err(ApiError::invalid(
            other.clone(),
            "unknown query parameter; expected filename",
        ));
    }
    let filename = params.get("filename").cloned();
    if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !ct.is_empty() && !ACCEPTED_TYPES.contains(&ct.as_str()) {
            return Err(ApiError::UnsupportedMedia(format!(
                "Content-Type '{ct}' is not accepted: send the CSV or JSON-lines file as the raw body (text/csv or application/x-ndjson)"
            )));
        }
    }
    if let Some(name) = &filename
        && (name.is_empty() || name.len() > 255 || name.contains(['/', '\\', '\0']))
    {
        return Err(ApiError::invalid(
            "filename",
            "must be 1 to 255 characters without slashes",
        ));
    }
    let (id, size, sha256) =
        store_upload(&state, caller.tenant_id, filename, body.into_data_stream()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "upload_id": id, "size": size, "sha256": sha256 })),
    ))
}

/// Streams a file to the file store while hashing and measuring it, and
/// registers it once complete: (upload id, size, sha256). Refuses an empty
/// file, binary data and anything over the configured limit; a refused or
/// interrupted file leaves nothing behind.
pub(crate) async fn store_upload<E: std::fmt::Display>(
    state: &AppState,
    tenant_id: i64,
    filename: Option<String>,
    stream: impl futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<(String, u64, String), ApiError> {
    let mut stream = stream;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let key = FileStore::upload_key(tenant_id, &id);
    let mut writer = state.files.writer(&key);
    let limit = state.config.max_upload_bytes;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let failure: Option<ApiError> = loop {
        let chunk = match stream.next().await {
            None => break None,
            Some(Err(e)) => {
                break Some(ApiError::BadRequest(format!(
                    "the upload was interrupted: {e}"
                )));
            }
            Some(Ok(c)) => c,
        };
        if size == 0
            && let Some(pos) = chunk.iter().take(8192).position(|b| *b == 0)
        {
            break Some(ApiError::UnsupportedMedia(format!(
                "the upload is not CSV or JSON lines: it holds binary data (a NUL byte at offset {pos})"
            )));
        }
        size += chunk.len() as u64;
        if size > limit {
            break Some(ApiError::TooLarge(format!(
                "the upload is larger than the limit of {limit} bytes"
            )));
        }
        hasher.update(&chunk);
        if let Err(e) = writer.write_all(&chunk).await {
            break Some(ApiError::Internal(format!("writing the upload: {e}")));
        }
    };
    let failure =
        failure.or_else(|| (size == 0).then(|| ApiError::BadRequest("the upload is empty".into())));
    if let Some(e) = failure {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer
        .shutdown()
        .await
        .map_err(|e| ApiError::Internal(format!("finishing the upload: {e}")))?;
    let sha256 = hex::encode(hasher.finalize());
    let upload = Upload {
        id: id.clone(),
        tenant_id,
        size: size as i64,
        sha256: sha256.clone(),
        object_key: key.clone(),
        filename,
        created_at: jiff::Timestamp::now(),
    };
    if let Err(e) = state.store.insert_upload(upload).await {
        // Registration failed: the staged file must not linger.
        let _ = state.files.delete(&key).await;
        return Err(e.into());
    }
    Ok((id, size, sha256))
}

/// Deletes an upload's bytes and its registration. Best effort: it runs on
/// the way out of a refused request, whose own error is what the client
/// must see.
pub(crate) async fn discard_upload(state: &AppState, tenant_id: i64, id: &str) {
    if let Err(e) = state
        .files
        .delete(&FileStore::upload_key(tenant_id, id))
        .await
    {
        tracing::warn!(upload = id, error = %e, "could not delete a discarded upload");
    }
    if let Err(e) = state.store.delete_upload(tenant_id, id).await {
        tracing::warn!(upload = id, error = %e, "could not forget a discarded upload");
    }
}
