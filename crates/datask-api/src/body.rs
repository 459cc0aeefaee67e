//! JSON bodies parsed so that a mistake names its field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::Json`, but errors say which field was wrong.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.is_empty() && !content_type.starts_with("application/json") {
            return Err(ApiError::UnsupportedMedia(format!(
                "expected Content-Type application/json, got '{content_type}'"
            )));
        }
        let bytes = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state))
            .await
            .map_err(|_| body_timed_out())?
            .map_err(unreadable_body)?;
        parse_json_object(&bytes).map(JsonBody)
    }
}

/// How long a JSON body may take to arrive (a client that declares more
/// than it sends would otherwise hold the connection forever).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long any request body may go without a byte (uploads included).
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn body_timed_out() -> ApiError {
    ApiError::Timeout(format!(
        "the request body did not arrive within {} s",
        BODY_TIMEOUT.as_secs()
    ))
}

/// The body sizes a route group takes (multipart: a file and its task).
#[derive(Clone, Copy)]
pub struct DeclaredLimit {
    pub plain: u64,
    pub multipart: u64,
}

/// Refuses at once a request whose declared `Content-Length` is over the
/// limit, before its body is read.
pub async fn refuse_declared_oversize(
    axum::extract::State(limits): axum::extract::State<DeclaredLimit>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let headers = req.headers();
    let multipart = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/"));
    let limit = if multipart {
        limits.multipart
    } else {
        limits.plain
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > limit
    {
        let mut refused = crate::in_dialect_of(
            req.uri(),
            ApiError::TooLarge(format!(
                "the request body ({declared} bytes) is larger than the limit of {limit} bytes"
            )),
        )
        .into_response();
        // The body is not read, so this connection cannot carry another
        // request: say so, or a client would reuse it and fail.
        refused.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return refused;
    }
    next.run(req).await
}

/// A body that could not be read: too large (413), or cut off (400).
pub fn unreadable_body(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge("the request body is larger than the limit".into())
    } else {
        ApiError::BadRequest(format!("could not read the body: {e}"))
    }
}

/// A whole body as one JSON value of type `T`: anything after it (a second
/// value, stray text) is refused rather than ignored.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        // "missing field `name`" names its field: report it there.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let top = path == "." || path == "?" || path.is_empty();
        match missing {
            Some(field) if top => ApiError::invalid(field, "is required"),
            Some(field) => ApiError::invalid(format!("{path}.{field}"), "is required"),
            None if top => ApiError::BadRequest(message),
            None => ApiError::invalid(path, message),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not valid JSON: {e} (after the end of the first value)"
        ))
    })?;
    Ok(value)
}

/// A body that must be a JSON object (a task, a segment, settings…): serde
/// would otherwise also read a struct from an array of its fields in order.
pub fn parse_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b) if *b != b'{' => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
        // An object, or nothing at all: parse_json says what is wrong.
        _ => parse_json(bytes),
    }
}

/// Query parameters as name → value, with malformed strings and repeated
/// names answered as 400s that name them (axum's own rejection is plain text).
pub struct QueryParams(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| {
                ApiError::BadRequest(format!("the query string is malformed: {}", e.body_text()))
            })?
            .0;
        let mut map = std::collections::HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            if map.contains_key(&name) {
                return Err(ApiError::invalid(name, "appears more than once"));
            }
            map.insert(name, value);
        }
        Ok(QueryParams(map))
    }
}
