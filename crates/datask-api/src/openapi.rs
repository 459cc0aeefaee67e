//! `GET /openapi.json`: the OpenAPI 3 description, derived from the route
//! annotations and the types the routes serialize.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::render::TaskView;

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: invalid_field, bad_request, unauthorized, forbidden, not_found, conflict, …
    pub code: String,
    pub message: String,
    /// The field that was wrong, when there is one (e.g. `target.export_index`).
    pub field: Option<String>,
}

/// Every REST error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct UploadAnswer {
    pub upload_id: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Serialize, ToSchema)]
pub struct DownloadUrl {
    /// A link that needs no credentials until `expires_at`: on the local file
    /// store this server's `/downloads/…` link, signed over tenant, task, file
    /// and expiry; on an S3-compatible store (`--files s3://…`) the store's own
    /// presigned GET URL, served by the store.
    pub url: String,
    pub expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct TenantCreated {
    pub id: i64,
    pub name: String,
    pub timezone: String,
    pub concurrency: i64,
    pub apptoken: String,
    pub privileged_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    pub id: i64,
    pub name: String,
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Membership {
    pub tenant_id: i64,
    pub user_id: i64,
    pub level: String,
}

/// The first seed's `list/task` request.
#[derive(Serialize, ToSchema)]
pub struct ListTaskRequest {
    pub apptoken: String,
    /// `[[field, op, value], …]`; ops `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`.
    #[schema(value_type = Option<Vec<Vec<Object>>>)]
    pub condition: Option<Vec<Vec<serde_json::Value>>>,
    /// `["id DESC", …]`
    pub order: Option<Vec<String>>,
    pub select: Option<Vec<String>>,
    /// Default 100, at most 1000.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct InfoTaskRequest {
    pub apptoken: String,
    pub id: i64,
    pub select: Option<Vec<String>>,
}

/// A task in the query dialect (the fields asked for in `select`).
#[derive(Serialize, ToSchema)]
pub struct QueryTask {
    pub id: Option<i64>,
    pub project_id: Option<i64>,
    pub identifier: Option<String>,
    /// 0 New, 1 Executing, 2 Done, 3 Error, 4 Fatal, 5 Cancelled.
    pub status: Option<i64>,
    pub desc: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub errors: Option<serde_json::Value>,
    /// Unix seconds.
    pub create_time: Option<i64>,
    pub start_time: Option<i64>,
    pub finish_time: Option<i64>,
    pub last_modified: Option<i64>,
    pub result: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EnvelopeList {
    pub success: bool,
    pub code: u16,
    pub data: Vec<QueryTask>,
}

#[derive(Serialize, ToSchema)]
pub struct EnvelopeOne {
    pub success: bool,
    pub code: u16,
    pub data: QueryTask,
}

#[derive(Serialize, ToSchema)]
pub struct EnvelopeError {
    pub success: bool,
    pub code: u16,
    pub message: String,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "datask", description = "Asynchronous data tasks: the REST task API and the first seed's query dialect over one engine."),
    paths(
        crate::rest::create, crate::rest::list, crate::rest::read, crate::rest::update, crate::rest::remove,
        crate::rest::execute, crate::rest::cancel, crate::events::events,
        crate::uploads::upload, crate::downloads::download_url, crate::downloads::download,
        crate::external::list, crate::external::info,
        crate::admin::create_tenant, crate::admin::create_user, crate::admin::set_member,
        crate::settings::read, crate::settings::update,
        crate::segments::list, crate::segments::create, crate::segments::read, crate::segments::update, crate::segments::remove,
        crate::healthz, crate::readyz, crate::metrics,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is a snapshot: a change to the API shows in review as a
    /// change to `openapi.json`. Regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p datask-api`.
    #[test]
    fn openapi_snapshot() {
        let doc = serde_json::to_string_pretty(&ApiDoc::openapi()).unwrap() + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        if std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
            std::fs::write(&path, &doc).unwrap();
        }
        let saved = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            saved == doc,
            "openapi.json is out of date: run UPDATE_SNAPSHOTS=1 cargo test -p datask-api and review the diff"
        );
    }

    #[test]
    fn every_route_is_described() {
        let doc = ApiDoc::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/tasks",
            "/tasks/{id}",
            "/tasks/{id}/execute",
            "/tasks/{id}/cancel",
            "/tasks/{id}/events",
            "/tasks/{id}/download_url",
            "/downloads/{tenant}/{task}/{fence}/{name}",
            "/uploads",
            "/api/external/list/task",
            "/api/external/info/task",
            "/admin/tenants",
            "/admin/users",
            "/admin/tenants/{id}/members/{user_id}",
            "/healthz",
            "/readyz",
            "/settings",
            "/metrics",
        ] {
            assert!(
                paths.iter().any(|x| x.as_str() == p),
                "{p} is not in the OpenAPI document"
            );
        }
    }
}
