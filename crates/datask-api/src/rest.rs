//! The REST task API (second seed): `/tasks` and its actions.

use crate::path::PathArgs;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use datask_core::schedule::time_zone;
use datask_core::store::TaskFilter;
use datask_core::task::{NewTask, Repeat, TaskUpdate};
use datask_core::{TaskState, Trigger};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::AppState;
use crate::auth::{Access, Caller};
use crate::body::{JsonBody, QueryParams};
use crate::error::ApiError;
use crate::openapi::TaskList;
use crate::render::{TaskView, task_json, task_view};

const MAX_ATTEMPTS_DEFAULT: i64 = 3;
const LIST_LIMIT_DEFAULT: i64 = 50;
const LIST_LIMIT_MAX: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tasks", post(create).get(list))
        .route("/tasks/{id}", get(read).put(update).delete(remove))
        .route("/tasks/{id}/execute", post(execute))
        .route("/tasks/{id}/cancel", post(cancel))
}

#[derive(utoipa::ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskInput {
    #[serde(default)]
    identifier: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    trigger: Option<TriggerInput>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    target: Option<Map<String, Value>>,
    #[serde(default)]
    max_attempts: Option<i64>,
    /// `PUT` only: the version the client read.
    #[serde(default)]
    version: Option<i64>,
    /// What `GET /tasks/{id}` shows beside the fields above, so that a task
    /// read can be sent back to `PUT` as it is: ignored there, refused by
    /// `POST`.
    #[serde(default)]
    #[schema(ignore)]
    id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    chain: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    state: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    logs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    errors: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    progress: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    output: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    result: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    attempts: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(ignore)]
    debug: Option<serde::de::IgnoredAny>,
}

impl TaskInput {
    /// The first read-only field given, for `POST`'s refusal.
    fn first_shown(&self) -> Option<&'static str> {
        [
            ("id", self.id.is_some()),
            ("chain", self.chain.is_some()),
            ("state", self.state.is_some()),
            ("logs", self.logs.is_some()),
            ("errors", self.errors.is_some()),
            ("progress", self.progress.is_some()),
            ("output", self.output.is_some()),
            ("result", self.result.is_some()),
            ("attempts", self.attempts.is_some()),
            ("debug", self.debug.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }
}

/// `POST /tasks` as `multipart/form-data`: the task and its input file in
/// one request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct TaskMultipart {
    /// The task as JSON, as in an `application/json` body.
    #[schema(value_type = Object)]
    task: String,
    /// The CSV or JSON-lines file; streamed like `POST /uploads`, its id
    /// becomes `target.upload_id`.
    #[schema(value_type = String, format = Binary)]
    file: Option<String>,
}

/// The task of a `POST /tasks`: a JSON body, or `multipart/form-data` with
/// the task JSON in a part named `task` and the input file in a part named
/// `file`. Also the id of the file it stored, which is the caller's to
/// discard if the task is not created; a refused body leaves no file.
async fn task_input(
    state: &AppState,
    tenant: i64,
    req: axum::extract::Request,
) -> Result<(TaskInput, Option<String>), ApiError> {
    let mut upload = None;
    match read_task_input(state, tenant, req, &mut upload).await {
        Ok(task) => Ok((task, upload)),
        Err(e) => {
            if let Some(id) = upload {
                crate::uploads::discard_upload(state, tenant, &id).await;
            }
            Err(e)
        }
    }
}

async fn read_task_input(
    state: &AppState,
    tenant: i64,
    req: axum::extract::Request,
    upload: &mut Option<String>,
) -> Result<TaskInput, ApiError> {
    use axum::extract::FromRequest;
    let content_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Ok(JsonBody::<TaskInput>::from_request(req, state).await?.0);
    }
    let boundary = multer::parse_boundary(&content_type).map_err(|e| {
        ApiError::BadRequest(format!("the multipart body has no usable boundary: {e}"))
    })?;
    let malformed =
        |e: multer::Error| ApiError::BadRequest(format!("the multipart body is malformed: {e}"));
    let mut parts = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
    let mut task: Option<TaskInput> = None;
    while let Some(mut field) = parts.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "task" if task.is_none() => {
                let mut json = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(malformed)? {
                    if json.len() + chunk.len() > state.config.max_json_bytes {
                        return Err(ApiError::TooLarge(
                            "the task part is larger than the limit".into(),
                        ));
                    }
                    json.extend_from_slice(&chunk);
                }
                // Named by its part: the task as a whole is what is wrong.
                task = Some(crate::body::parse_json_object(&json).map_err(|e| match e {
                    ApiError::BadRequest(m) => ApiError::invalid("task", m),
                    e => e,
                })?);
            }
            "file" if upload.is_none() => {
                let filename = field.file_name().map(str::to_string);
                let (id, _, _) =
                    crate::uploads::store_upload(state, tenant, filename, field).await?;
                *upload = Some(id);
            }
            "task" | "file" => {
                return Err(ApiError::invalid(name, "appears more than once"));
            }
            _ => {
                return Err(ApiError::invalid(
                    if name.is_empty() {
                        "multipart".to_string()
                    } else {
                        name
                    },
                    "unknown part; expected task and file",
                ));
            }
        }
    }
    let mut task = task.ok_or_else(|| {
        ApiError::invalid(
            "task",
            "the multipart body needs a part named task holding the task JSON",
        )
    })?;
    if let Some(id) = upload.clone() {
        let target = task.target.get_or_insert_with(Map::new);
        if target.get("upload_id").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                "target.upload_id",
                "give the file or an upload_id, not both",
            ));
        }
        target.insert("upload_id".into(), Value::String(id));
    }
    Ok(task)
}

#[derive(utoipa::ToSchema, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerInput {
    #[serde(default)]
    once: Option<String>,
    #[serde(default)]
    repeat: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    /// Absent is None, `null` is `Some(Null)`: a PUT keeps an absent field
    /// and clears a null one.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    segment: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    segment_id: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(Some(Value::deserialize(d)?))
}

impl TriggerInput {
    /// A stored trigger as a request would give it.
    fn from_stored(t: &Trigger) -> Self {
        TriggerInput {
            once: t.once.map(|o| o.to_string()),
            repeat: t.repeat.map(|r| r.as_str().to_string()),
            timezone: t.timezone.clone(),
            segment: t.segment.clone(),
            segment_id: t.segment_id.clone().map(Value::String),
        }
    }
}

/// A validated task request.
struct Resolved {
    identifier: String,
    desc: String,
    trigger: Trigger,
    target: Map<String, Value>,
    run_at: Timestamp,
    priority: i64,
}

pub(crate) fn parse_path_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid("id", format!("'{raw}' is not a task id")))
}

/// Parses an ISO 8601 instant; one without an offset is read in `zone`.
fn parse_instant(field: &str, raw: &str, zone: &jiff::tz::TimeZone) -> Result<Timestamp, ApiError> {
    use jiff::fmt::temporal::{Pieces, PiecesOffset};
    // jiff reads offsets up to ±25:59; no place on Earth is past ±14:00
    // and ISO 8601 stops at ±18:00, so a larger one is a typing mistake.
    if let Ok(pieces) = Pieces::parse(raw)
        && let Some(PiecesOffset::Numeric(offset)) = pieces.offset()
        && offset.offset().seconds().abs() > 18 * 3600
    {
        return Err(ApiError::invalid(
            field,
            format!("'{raw}' has a UTC offset past ±18:00"),
        ));
    }
    match raw.parse::<Timestamp>() {
        Ok(t) => return Ok(t),
        // A well-formed instant past jiff's range (years -9999 to 9999,
        // less a day at either end for offsets) is out of range, not
        // malformed.
        Err(e) if Pieces::parse(raw).is_ok() && e.to_string().contains("range") => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "'{raw}' is out of range: times from -009999-01-02 to 9999-12-30 are accepted"
                ),
            ));
        }
        Err(_) => {}
    }
    if let Ok(dt) = raw.parse::<jiff::civil::DateTime>()
        && let Ok(z) = zone.to_zoned(dt)
    {
        return Ok(z.timestamp());
    }
    if let Ok(d) = raw.parse::<jiff::civil::Date>()
        && let Ok(z) = zone.to_zoned(d.to_datetime(jiff::civil::Time::midnight()))
    {
        return Ok(z.timestamp());
    }
    Err(ApiError::invalid(
        field,
        format!("'{raw}' is not an ISO 8601 date-time (e.g. 2026-01-31T09:00:00Z)"),
    ))
}

async fn resolve(
    state: &AppState,
    tenant_id: i64,
    input: TaskInput,
    existing_identifier: Option<&str>,
) -> Result<Resolved, ApiError> {
    let mut target = input.target.unwrap_or_default();
    let action = match target.get("action") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("target.action", "must be a string")),
    };
    let identifier = match (input.identifier, action.clone(), existing_identifier) {
        (Some(i), Some(a), _) if i != a => {
            return Err(ApiError::invalid(
                "identifier",
                format!("'{i}' does not match target.action '{a}'"),
            ));
        }
        (Some(i), _, Some(e)) | (None, Some(i), Some(e)) if i != e => {
            return Err(ApiError::invalid(
                "identifier",
                format!("a task's identifier cannot change (it is '{e}')"),
            ));
        }
        (Some(i), _, _) | (None, Some(i), _) => i,
        (None, None, Some(e)) => e.to_string(),
        (None, None, None) => {
            return Err(ApiError::invalid(
                "identifier",
                "required (or give target.action)",
            ));
        }
    };
    let handler = match state.registry.get(&identifier) {
        Some(h) => h.clone(),
        None => {
            let known: Vec<&str> = state.registry.identifiers().collect();
            return Err(ApiError::invalid(
                "identifier",
                format!(
                    "unknown identifier '{identifier}'; available: {}",
                    known.join(", ")
                ),
            ));
        }
    };
    if action.is_none() && matches!(identifier.as_str(), "export" | "import") {
        target.insert("action".into(), Value::String(identifier.clone()));
    }
    handler
        .validate(&mut target)
        .map_err(|e| ApiError::invalid(format!("target.{}", e.field), e.message))?;
    // An input file must exist in the caller's tenant when the task is accepted.
    if let Some(Value::String(upload_id)) = target.get("upload_id")
        && state
            .store
            .get_upload(tenant_id, upload_id)
            .await?
            .is_none()
    {
        return Err(ApiError::invalid(
            "target.upload_id",
            format!(
                "no upload '{upload_id}' in this tenant; upload the file with POST /uploads first"
            ),
        ));
    }

    let desc = input.desc.unwrap_or_default();
    if desc.chars().count() > 1000 {
        return Err(ApiError::invalid("desc", "must be at most 1000 characters"));
    }
    let trigger_in = input.trigger.unwrap_or_default();
    let once_raw = trigger_in.once.as_deref().filter(|s| !s.is_empty());
    // A wall-clock `once` (no offset) is read in the trigger's zone, else in
    // the tenant's; an instant needs neither, so the tenant is read only
    // for a wall-clock time (on PostgreSQL it is a round trip).
    let zone_name = match (&trigger_in.timezone, once_raw) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(raw)) if raw.parse::<Timestamp>().is_err() => Some(
            state
                .store
                .tenant(tenant_id)
                .await?
                .ok_or(ApiError::Unauthorized)?
                .timezone,
        ),
        (None, _) => None,
    };
    let zone = zone_name
        .map(|name| time_zone(&name))
        .transpose()
        .map_err(|e| ApiError::invalid("trigger.timezone", e.to_string()))?
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let once = once_raw
        .map(|s| parse_instant("trigger.once", s, &zone))
        .transpose()?;
    let repeat = match trigger_in.repeat.as_deref() {
        None | Some("") => None,
        Some(r) => Some(Repeat::parse(r).ok_or_else(|| {
            ApiError::invalid(
                "trigger.repeat",
                format!("'{r}' is not one of daily, weekly, monthly (or empty)"),
            )
        })?),
    };
    let segment = trigger_in.segment.filter(|s| !s.is_null());
    let segment_index = handler.segment_index(&target);
    let needs_index = |field: &str| {
        segment_index.ok_or_else(|| {
            ApiError::invalid(field, format!("'{identifier}' tasks do not take a segment"))
        })
    };
    if let Some(seg) = &segment {
        // Checked now so a mistake is a 400 naming its place, not a failed run.
        let index = needs_index("trigger.segment")?;
        let settings = state.store.profile_settings(tenant_id).await?;
        datask_core::segment::parse_with(
            index,
            &settings.attributes,
            seg,
            "trigger.segment",
            Timestamp::now(),
        )
        .map_err(|e| ApiError::invalid(e.path, e.message))?;
    }
    let segment_id = match trigger_in.segment_id.filter(|s| !s.is_null()) {
        None => None,
        Some(raw) => {
            let index = needs_index("trigger.segment_id")?;
            let id = match &raw {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .filter(|id| *id > 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "trigger.segment_id",
                    format!("{raw} is not a saved segment id (GET /segments lists them)"),
                )
            })?;
            // A saved segment selects profiles: other indexes follow their owner.
            if !std::ptr::eq(index, &datask_core::index::USERS) && index.column("user_id").is_none()
            {
                return Err(ApiError::invalid(
                    "trigger.segment_id",
                    format!(
                        "a saved segment selects profiles; index '{}' has no user_id to follow",
                        index.name
                    ),
                ));
            }
            if state.store.get_segment(tenant_id, id).await?.is_none() {
                return Err(ApiError::invalid(
                    "trigger.segment_id",
                    format!("no saved segment {id} in this tenant (GET /segments lists them)"),
                ));
            }
            Some(id.to_string())
        }
    };
    // The export API's contract: "either trigger.segment, trigger.segment_id,
    // or neither". Both at once would leave which one applies to a guess.
    if segment.is_some() && segment_id.is_some() {
        return Err(ApiError::invalid(
            "trigger.segment_id",
            "give trigger.segment or trigger.segment_id, not both",
        ));
    }
    let now = Timestamp::now();
    // A repeating task needs an anchor: without `once` it is now.
    let once = if repeat.is_some() {
        Some(once.unwrap_or(now))
    } else {
        once
    };
    Ok(Resolved {
        identifier,
        desc,
        trigger: Trigger {
            once,
            repeat,
            timezone: trigger_in.timezone,
            segment,
            segment_id,
        },
        target,
        run_at: once.unwrap_or(now),
        priority: if handler.interactive() { 0 } else { 10 },
    })
}

#[utoipa::path(post, path = "/tasks", tag = "tasks",
    request_body(content((TaskInput = "application/json"), (TaskMultipart = "multipart/form-data"))),
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key returns the first task (200)")),
    responses(
        (status = 201, description = "created", body = TaskView),
        (status = 200, description = "the first task of this Idempotency-Key", body = TaskView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "the credential may not create", body = crate::openapi::ErrorBody),
        (status = 413, description = "the body is too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "not application/json", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn create(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Access::Operator)?;
    let (input, upload) = task_input(&state, caller.tenant_id, req).await?;
    let created = create_task(&state, &caller, &headers, input).await;
    // The file sent with a task that was refused, or that repeated an
    // Idempotency-Key (the first task keeps its own file), serves nothing.
    if let Some(id) = upload
        && !matches!(&created, Ok((StatusCode::CREATED, _)))
    {
        crate::uploads::discard_upload(&state, caller.tenant_id, &id).await;
    }
    created
}

async fn create_task(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    input: TaskInput,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if input.version.is_some() {
        return Err(ApiError::invalid("version", "is only accepted by PUT"));
    }
    if let Some(field) = input.first_shown() {
        return Err(ApiError::invalid(
            field,
            "is set by datask, not accepted when creating a task",
        ));
    }
    let max_attempts = input.max_attempts.unwrap_or(MAX_ATTEMPTS_DEFAULT);
    if !(1..=20).contains(&max_attempts) {
        return Err(ApiError::invalid(
            "max_attempts",
            "must be between 1 and 20",
        ));
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Idempotency-Key",
                        "must be 1 to 255 visible ASCII characters",
                    )
                })?;
            Some(key.to_string())
        }
    };
    let r = resolve(state, caller.tenant_id, input, None).await?;
    let now = Timestamp::now();
    let inserted = state
        .store
        .insert_task(
            NewTask {
                tenant_id: caller.tenant_id,
                identifier: r.identifier,
                desc: r.desc,
                trigger: r.trigger,
                target: r.target,
                max_attempts,
                priority: r.priority,
                run_at: r.run_at,
                idempotency_key,
            },
            now,
        )
        .await?;
    let status = if inserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(task_json(&inserted.task, now))))
}

#[utoipa::path(get, path = "/tasks", tag = "tasks",
    params(
        ("state" = Option<String>, Query, description = "READY, INPROGRESS, DONE, ERROR, FATAL or CANCELLED"),
        ("identifier" = Option<String>, Query),
        ("created_after" = Option<String>, Query, description = "ISO 8601"),
        ("created_before" = Option<String>, Query, description = "ISO 8601"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 500, default 50"),
        ("chain" = Option<i64>, Query, description = "the tenant, for an admin user"),
    ),
    responses((status = 200, description = "newest first", body = TaskList),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<AppState>,
    QueryParams(params): QueryParams,
) -> Result<Json<TaskList>, ApiError> {
    let utc = jiff::tz::TimeZone::UTC;
    let mut filter = TaskFilter {
        limit: LIST_LIMIT_DEFAULT,
        ..Default::default()
    };
    for (name, value) in &params {
        match name.as_str() {
            "state" => {
                filter.state = Some(TaskState::parse(&value.to_ascii_uppercase()).ok_or_else(|| {
                    ApiError::invalid("state", format!("'{value}' is not one of READY, INPROGRESS, DONE, ERROR, FATAL, CANCELLED"))
                })?)
            }
            "identifier" => {
                if state.registry.get(value).is_none() {
                    let known: Vec<&str> = state.registry.identifiers().collect();
                    return Err(ApiError::invalid(
                        "identifier",
                        format!("unknown identifier '{value}'; available: {}", known.join(", ")),
                    ));
                }
                filter.identifier = Some(value.clone())
            }
            "created_after" => filter.created_after = Some(parse_instant("created_after", value, &utc)?),
            "created_before" => filter.created_before = Some(parse_instant("created_before", value, &utc)?),
            "cursor" => filter.before_id = Some(value.parse().map_err(|_| ApiError::invalid("cursor", format!("'{value}' is not a cursor from next_cursor")))?),
            // Names the tenant for an admin user (see auth.rs).
            "chain" => {}
            "limit" => {
                filter.limit = value.parse().ok().filter(|l| (1..=LIST_LIMIT_MAX).contains(l)).ok_or_else(|| {
                    ApiError::invalid("limit", format!("'{value}' is not a number from 1 to {LIST_LIMIT_MAX}"))
                })?
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; expected state, identifier, created_after, created_before, cursor, limit",
                ));
            }
        }
    }
    let tasks = state.store.list_tasks(caller.tenant_id, &filter).await?;
    let now = Timestamp::now();
    let next_cursor = (tasks.len() as i64 == filter.limit)
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(TaskList {
        tasks: tasks.iter().map(|t| task_view(t, now)).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = TaskView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "the credential may not do this", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),

    ), security(("bearer" = [])))]
pub(crate) async fn read(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_path_id(&id)?;
    let task = state
        .store
        .get_task(caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(task_json(&task, Timestamp::now())))
}

#[utoipa::path(put, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path)), request_body = TaskInput,
    responses((status = 200, body = TaskView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "the credential may not update", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),
        (status = 409, description = "stale version, or the task is running", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn update(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(input): JsonBody<TaskInput>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Access::Operator)?;
    let id = parse_path_id(&id)?;
    let task = state
        .store
        .get_task(caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if input.max_attempts.is_some_and(|m| m != task.max_attempts) {
        return Err(ApiError::invalid(
            "max_attempts",
            "cannot be changed after creation",
        ));
    }
    // What the body leaves out is kept, as `PUT /settings` does: a PUT
    // that only renames a task must not drop its schedule.
    let mut input = input;
    if input.desc.is_none() {
        input.desc = Some(task.desc.clone());
    }
    if input.target.is_none() {
        input.target = Some(task.target.clone());
    }
    // Within the trigger too: `{"repeat": "weekly"}` keeps `once`, the
    // time zone and the segment (send "" or null to clear one).
    let stored = TriggerInput::from_stored(&task.trigger);
    input.trigger = Some(match input.trigger.take() {
        None => stored,
        Some(given) => {
            // The two segment fields are one choice: setting one replaces
            // the other, so switching a task from a saved segment to an
            // inline one needs no explicit null. A null clears only itself.
            let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
            let (segment, segment_id) = match (set(&given.segment), set(&given.segment_id)) {
                (false, false) => (
                    given.segment.or(stored.segment),
                    given.segment_id.or(stored.segment_id),
                ),
                _ => (given.segment, given.segment_id),
            };
            TriggerInput {
                once: given.once.or(stored.once),
                repeat: given.repeat.or(stored.repeat),
                timezone: given.timezone.or(stored.timezone),
                segment,
                segment_id,
            }
        }
    });
    let expected_version = input.version;
    let r = resolve(&state, caller.tenant_id, input, Some(&task.identifier)).await?;
    let now = Timestamp::now();
    // Nothing to change (a task read and sent back as it was): no write, so
    // `version` and `modified_at` stay what they are. Without `once`, the
    // resolved run_at is "now", which says nothing new. The stores keep
    // run_at to the microsecond.
    let unchanged = r.desc == task.desc
        && r.target == task.target
        && r.trigger == task.trigger
        && (task.trigger.once.is_none()
            || r.run_at.as_microsecond() == task.run_at.as_microsecond());
    if unchanged {
        if let Some(v) = expected_version
            && v != task.version
        {
            return Err(datask_core::StoreError::VersionConflict {
                current: task.version,
            }
            .into());
        }
        return Ok(Json(task_json(&task, now)));
    }
    let update = TaskUpdate {
        desc: r.desc,
        trigger: r.trigger,
        target: r.target,
        run_at: r.run_at,
        expected_version,
    };
    let task = state
        .store
        .update_task(caller.tenant_id, id, update, now)
        .await
        .map_err(|e| map_missing(e, id))?;
    Ok(Json(task_json(&task, now)))
}

#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 204, description = "deleted"),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "needs manager access", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),
        (status = 409, description = "the task is running", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Access::Manager)?;
    let id = parse_path_id(&id)?;
    let task = state
        .store
        .get_task(caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    state
        .store
        .delete_task(caller.tenant_id, id)
        .await
        .map_err(|e| map_missing(e, id))?;
    // The retention policy runs every day while it is set (SPEC): deleting
    // its daily task makes a new one; removing the policy is how to stop it.
    if task.identifier == "cleanup_users"
        && state
            .store
            .profile_settings(caller.tenant_id)
            .await?
            .retention
            .is_some()
    {
        crate::settings::schedule_cleanup(&state, caller.tenant_id).await?;
    }
    // Its files go with it (a profile_export_data result is personal data).
    // The task is gone either way; a file left behind is only logged.
    if let Err(e) = state.files.delete_task_files(caller.tenant_id, id).await {
        tracing::warn!(task = id, error = %e, "could not delete the files of a deleted task");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/tasks/{id}/execute", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = TaskView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "the credential may not do this", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),
        (status = 409, description = "the task is running", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn execute(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Access::Operator)?;
    let id = parse_path_id(&id)?;
    let now = Timestamp::now();
    let task = state
        .store
        .execute_now(caller.tenant_id, id, now)
        .await
        .map_err(|e| map_missing(e, id))?;
    Ok(Json(task_json(&task, now)))
}

#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = TaskView),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 403, description = "the credential may not do this", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),
        (status = 409, description = "the task has finished", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn cancel(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Access::Operator)?;
    let id = parse_path_id(&id)?;
    let now = Timestamp::now();
    let task = state
        .store
        .request_cancel(caller.tenant_id, id, now)
        .await
        .map_err(|e| map_missing(e, id))?;
    Ok(Json(task_json(&task, now)))
}

pub fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("task {id} not found"))
}

fn map_missing(e: datask_core::StoreError, id: i64) -> ApiError {
    match e {
        datask_core::StoreError::NotFound => not_found(id),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every identifier of SPEC §5.
    const SPEC_IDENTIFIERS: &[&str] = &[
        "profile_import",
        "profile_export_data",
        "profile_delete_personal_data",
        "cleanup_users",
        "list_import",
        "list_export",
        "message_export_campaign",
        "message_export_send",
        "campaign_count_recipients",
        "campaign_preview_recipients",
        "segment_count_recipients",
        "segment_export_devices",
        "segment_export_profiles",
        "active_directory_lists_sync",
        "active_directory_profiles_sync",
        "kochava_sync_installs",
        "export",
        "import",
    ];

    #[test]
    fn every_spec_identifier_has_a_handler() {
        let registry = datask_tasks::registry();
        let missing: Vec<_> = SPEC_IDENTIFIERS
            .iter()
            .filter(|i| registry.get(i).is_none())
            .collect();
        assert!(missing.is_empty(), "no handler for {missing:?}");
    }

    fn refusal(raw: &str) -> String {
        match parse_instant("trigger.once", raw, &jiff::tz::TimeZone::UTC) {
            Err(ApiError::Invalid { message, .. }) => message,
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn instants_are_refused_for_what_is_wrong_with_them() {
        let utc = jiff::tz::TimeZone::UTC;
        for ok in [
            "2026-01-31T09:00:00Z",
            "2026-01-31T09:00:00+14:00",
            "2026-01-31T09:00:00-18:00",
            "2026-01-31",
            "2026-01-31T09:00",
        ] {
            assert!(parse_instant("f", ok, &utc).is_ok(), "{ok}");
        }
        assert!(refusal("2026-01-31T09:00:00+25:00").contains("offset past ±18:00"));
        assert!(refusal("2026-01-31T09:00:00+18:30").contains("offset past ±18:00"));
        assert!(refusal("9999-12-31T23:59:59Z").contains("out of range"));
        assert!(refusal("tomorrow").contains("not an ISO 8601 date-time"));
        assert!(refusal("2026-02-30T00:00:00Z").contains("not an ISO 8601"));
    }
}
