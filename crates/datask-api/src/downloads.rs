//! Signed, expiring download links and the streamed downloads behind them.

use std::sync::Arc;

use crate::path::PathArgs;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use datask_engine::FileStore;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::AppState;
use crate::auth::Caller;
use crate::body::QueryParams;
use crate::error::ApiError;
use crate::rest::not_found;

/// HMAC-SHA256 over tenant, task, file and expiry.
#[derive(Clone)]
pub struct Signer {
    key: Arc<[u8]>,
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Signer { key: key.into() }
    }

    fn mac(&self, tenant: i64, task: i64, file: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("{tenant}\n{task}\n{file}\n{expires}").as_bytes());
        mac
    }

    pub fn sign(&self, tenant: i64, task: i64, file: &str, expires: i64) -> String {
        hex::encode(
            self.mac(tenant, task, file, expires)
                .finalize()
                .into_bytes(),
        )
    }

    /// Constant-time check of a presented signature.
    pub fn verify(
        &self,
        tenant: i64,
        task: i64,
        file: &str,
        expires: i64,
        signature: &str,
    ) -> bool {
        match hex::decode(signature) {
            Ok(sig) => self
                .mac(tenant, task, file, expires)
                .verify_slice(&sig)
                .is_ok(),
            Err(_) => false,
        }
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks/{id}/download_url", get(download_url))
        .route("/downloads/{tenant}/{task}/{fence}/{name}", get(download))
}

#[utoipa::path(get, path = "/tasks/{id}/download_url", tag = "files", params(("id" = i64, Path)),
    responses((status = 200, body = crate::openapi::DownloadUrl),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),
        (status = 409, description = "the task has no result file", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn download_url(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<Value>, ApiError> {
    let id = crate::rest::parse_path_id(&id)?;
    let task = state
        .store
        .get_task(caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let Some(key) = task.result else {
        return Err(ApiError::Conflict(format!(
            "task {id} has no result file (state {})",
            task.state
        )));
    };
    let ttl = state.config.download_ttl;
    let expires = Timestamp::now().as_second() + ttl.as_secs() as i64;
    let expires_at =
        Timestamp::from_second(expires).map_err(|e| ApiError::Internal(e.to_string()))?;
    // An object store that signs its own URLs serves the file itself: the
    // bytes never pass through this server.
    if let Some(url) = state.files.presigned_get(&key, ttl).await? {
        return Ok(Json(json!({ "url": url, "expires_at": expires_at })));
    }
    // key = results/<tenant>/<task>/<fence>/<name>
    let rest = key
        .strip_prefix(&format!("results/{}/{}/", task.tenant_id, task.id))
        .ok_or_else(|| ApiError::Internal(format!("unexpected result key {key}")))?;
    let signature = state.signer.sign(task.tenant_id, task.id, &key, expires);
    let url = format!(
        "{}/downloads/{}/{}/{rest}?expires={expires}&signature={signature}",
        state.config.public_url.trim_end_matches('/'),
        task.tenant_id,
        task.id
    );
    Ok(Json(json!({ "url": url, "expires_at": expires_at })))
}

fn forbidden() -> ApiError {
    ApiError::Forbidden(
        "the download link is invalid or has expired; ask for a new one with download_url".into(),
    )
}

#[utoipa::path(get, path = "/downloads/{tenant}/{task}/{fence}/{name}", tag = "files",
    params(("tenant" = i64, Path), ("task" = i64, Path), ("fence" = i64, Path), ("name" = String, Path),
        ("expires" = i64, Query), ("signature" = String, Query), ("Range" = Option<String>, Header)),
    responses((status = 200, description = "the file", content_type = "application/octet-stream", body = String),
        (status = 206, description = "the requested range", content_type = "application/octet-stream", body = String),
        (status = 403, description = "tampered or expired link", body = crate::openapi::ErrorBody),
        (status = 404, description = "the result no longer exists", body = crate::openapi::ErrorBody),
        (status = 416, description = "range not satisfiable", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn download(
    State(state): State<AppState>,
    PathArgs((tenant, task, fence, name)): PathArgs<(String, String, String, String)>,
    query: Result<QueryParams, ApiError>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (Ok(tenant), Ok(task), Ok(fence)) = (
        tenant.parse::<i64>(),
        task.parse::<i64>(),
        fence.parse::<i64>(),
    ) else {
        return Err(forbidden());
    };
    // Any malformed link is simply not a valid one.
    let QueryParams(params) = query.map_err(|_| forbidden())?;
    let (Some(expires), Some(signature)) = (params.get("expires"), params.get("signature")) else {
        return Err(forbidden());
    };
    let expires: i64 = expires.parse().map_err(|_| forbidden())?;
    let key = FileStore::result_key(tenant, task, fence, &name);
    if !state.signer.verify(tenant, task, &key, expires, signature)
        || Timestamp::now().as_second() > expires
    {
        return Err(forbidden());
    }
    // The link is genuine; the task may still have been deleted or re-run.
    let current = state.store.get_task(tenant, task).await?;
    if current.and_then(|t| t.result).as_deref() != Some(key.as_str()) {
        return Err(ApiError::NotFound("this result no longer exists".into()));
    }
    let size = state.files.size(&key).await?;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            RangeSpec::Ignore => None,
            RangeSpec::Unsatisfiable => {
                let mut r = ApiError::RangeNotSatisfiable(format!("the file has {size} bytes"))
                    .into_response();
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return Ok(r);
            }
            RangeSpec::Bytes(start, end) => Some(start..end + 1),
        },
    };
    let stream = state.files.read(&key, range.clone()).await?;
    let content_type = match name.rsplit('.').next() {
        Some("csv") => "text/csv; charset=utf-8",
        Some("json") => "application/json",
        Some("jsonl") => "application/x-ndjson",
        Some("gz") => "application/gzip",
        _ => "application/octet-stream",
    };
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    match range {
        Some(r) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
                    .expect("ascii"),
            );
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        None => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    Ok(response)
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// Malformed or multi-range: serve the whole file (RFC 9110 allows it).
    Ignore,
    Unsatisfiable,
    /// Inclusive byte positions.
    Bytes(u64, u64),
}

fn parse_range(spec: &str, size: u64) -> RangeSpec {
    let Some(ranges) = spec.trim().strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if ranges.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = ranges.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), end) => {
            if !b.is_empty() && end.is_none() {
                return RangeSpec::Ignore;
            }
            if start >= size {
                return RangeSpec::Unsatisfiable;
            }
            let end = end.unwrap_or(size - 1).min(size - 1);
            if end < start {
                RangeSpec::Ignore
            } else {
                RangeSpec::Bytes(start, end)
            }
        }
        (None, Some(suffix)) if a.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeSpec::Unsatisfiable
            } else {
                RangeSpec::Bytes(size.saturating_sub(suffix), size - 1)
            }
        }
        _ => RangeSpec::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeSpec::Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), RangeSpec::Bytes(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), RangeSpec::Bytes(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeSpec::Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), RangeSpec::Ignore);
    }

    #[test]
    fn signatures_cover_every_part() {
        let s = Signer::new(b"k");
        let sig = s.sign(1, 2, "results/1/2/3/a.csv", 100);
        assert!(s.verify(1, 2, "results/1/2/3/a.csv", 100, &sig));
        assert!(!s.verify(9, 2, "results/1/2/3/a.csv", 100, &sig));
        assert!(!s.verify(1, 9, "results/1/2/3/a.csv", 100, &sig));
        assert!(!s.verify(1, 2, "results/1/2/3/b.csv", 100, &sig));
        assert!(!s.verify(1, 2, "results/1/2/3/a.csv", 101, &sig));
        assert!(!s.verify(1, 2, "results/1/2/3/a.csv", 100, "zz"));
    }
}
