//! HTTP: the REST task API of the second seed, uploads, signed downloads,
//! administration and health. Handlers here write no SQL: they speak to the
//! store trait and the engine's registry.

mod admin;
mod auth;
mod body;
mod console;
mod downloads;
mod error;
mod events;
mod external;
pub mod openapi;
mod path;
mod render;
mod rest;
mod segments;
mod settings;
mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use datask_core::Store;
use datask_engine::{FileStore, Registry};

pub use auth::{CredentialCache, hash_secret, new_secret, sha256_hex};
pub use downloads::Signer;
pub use error::ApiError;

/// Limits and addresses the API needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Base of absolute links (download URLs), e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// SHA-256 (hex) of the root key; `None` turns the admin routes off.
    pub root_key_sha256: Option<String>,
    pub max_json_bytes: usize,
    pub max_upload_bytes: u64,
    /// Lifetime of a signed download URL.
    pub download_ttl: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            public_url: "http://127.0.0.1:8080".into(),
            root_key_sha256: None,
            max_json_bytes: 1 << 20,
            max_upload_bytes: 4 << 30,
            download_ttl: std::time::Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub files: FileStore,
    pub registry: Arc<Registry>,
    pub signer: Signer,
    pub config: Arc<ApiConfig>,
    /// The engine of this process, when it runs one (for `/metrics`).
    pub metrics: Option<Arc<datask_engine::EngineMetrics>>,
    /// Keys seen lately (`auth::CredentialCache`).
    pub credentials: Arc<CredentialCache>,
    /// Fired at shutdown: streams with no end of their own (server-sent
    /// events of a task not yet finished) end then, so that the graceful
    /// shutdown, which waits for every connection, is not held up by them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let json_limit = state.config.max_json_bytes;
    let upload_limit = state.config.max_upload_bytes;
    // A declared length over the limit is refused before the body is read.
    let json_declared = axum::middleware::from_fn_with_state(
        body::DeclaredLimit {
            plain: json_limit as u64,
            multipart: upload_limit.saturating_add(json_limit as u64),
        },
        body::refuse_declared_oversize,
    );
    let upload_declared = axum::middleware::from_fn_with_state(
        body::DeclaredLimit {
            plain: upload_limit,
            multipart: upload_limit,
        },
        body::refuse_declared_oversize,
    );
    Router::new()
        .merge(rest::router())
        .merge(admin::router())
        .merge(downloads::router())
        .merge(events::router())
        .merge(external::router())
        .merge(settings::router())
        .merge(segments::router())
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(json_declared)
        // Uploads stream with their own, larger limit.
        .merge(uploads::router().layer(upload_declared))
        .merge(console::router())
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                in_dialect_of(
                    &uri,
                    ApiError::NotFound(format!("no route for {method} {}", uri.path())),
                )
            },
        )
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                in_dialect_of(
                    &uri,
                    ApiError::MethodNotAllowed(format!(
                        "{method} is not allowed on {}",
                        uri.path()
                    )),
                )
            },
        )
        .with_state(state)
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body::BODY_IDLE_TIMEOUT,
        ))
}

/// An error in the shape of the API its path belongs to: the query
/// dialect's envelope under `/api/external/`, the REST shape elsewhere.
fn in_dialect_of(uri: &axum::http::Uri, e: ApiError) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/external/") {
        external::Envelope::from(e).into_response()
    } else {
        e.into_response()
    }
}

/// The process answers HTTP (liveness; `/readyz` also checks the store).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = String), (status = 500, body = crate::openapi::ErrorBody)))]
pub(crate) async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, ApiError> {
    state.store.ping().await?;
    Ok("ready")
}

/// Prometheus text: this process's engine counters and the store's backlog.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<([(axum::http::header::HeaderName, &'static str); 1], String), ApiError> {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(m) = &state.metrics {
        m.render(&mut out);
    }
    let due = state.store.next_due().await?;
    let _ = writeln!(
        out,
        "# HELP datask_next_due_seconds Seconds until the next READY task is due (negative: overdue)."
    );
    let _ = writeln!(out, "# TYPE datask_next_due_seconds gauge");
    if let Some(due) = due {
        let _ = writeln!(
            out,
            "datask_next_due_seconds {}",
            due.as_second() - jiff::Timestamp::now().as_second()
        );
    }
    let _ = writeln!(out, "# HELP datask_up 1 when the store answers.");
    let _ = writeln!(out, "# TYPE datask_up gauge");
    let _ = writeln!(out, "datask_up 1");
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    ))
}
