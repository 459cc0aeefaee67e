//! The first seed's query dialect: `POST /api/external/list/task` and
//! `POST /api/external/info/task`, authenticated by `apptoken` in the body,
//! answering `{"success", "code", "data"}` envelopes. Times are unix seconds
//! and `status` the numeric status.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use datask_core::query::{Condition, Field, FieldType, Op, Operand, Param, TaskQuery};
use datask_core::{Task, TaskState};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::auth::hash_secret;
use crate::body::{parse_json, unreadable_body};
use crate::error::ApiError;
use crate::render::result_name;

pub const LIMIT_DEFAULT: i64 = 100;
pub const LIMIT_MAX: i64 = 1000;
const OFFSET_MAX: i64 = 1_000_000;
const IN_MAX: usize = 1000;
/// Conditions, values across every `in` list, and order terms per query:
/// well past any real filter, and well inside what the stores' SQL takes
/// (SQLite refuses an expression tree of 1,000 terms and more than 32,766
/// bound values), so that a large query is a 400 that says why, not a 500.
const CONDITIONS_MAX: usize = 200;
const VALUES_MAX: usize = 10_000;
const ORDER_MAX: usize = 16;

/// Fields `select` may name: the filterable ones and a few more.
const SELECT_ONLY: &[&str] = &[
    "errors",
    "logs",
    "progress",
    "output",
    "trigger",
    "target",
    "project_id",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/external/list/task", post(list))
        .route("/api/external/info/task", post(info))
}

/// An `ApiError` in this dialect's envelope.
pub(crate) struct Envelope(ApiError);

impl From<ApiError> for Envelope {
    fn from(e: ApiError) -> Self {
        Envelope(e)
    }
}

impl From<datask_core::StoreError> for Envelope {
    fn from(e: datask_core::StoreError) -> Self {
        Envelope(e.into())
    }
}

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if let ApiError::Internal(detail) = &self.0 {
            tracing::error!(%detail, "internal error");
        }
        (
            status,
            Json(
                json!({ "success": false, "code": status.as_u16(), "message": self.0.shown_message() }),
            ),
        )
            .into_response()
    }
}

fn ok(data: Value) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "success": true, "code": 200, "data": data })),
    )
        .into_response()
}

/// The tenant of the `apptoken` field (an app token or a privileged key).
async fn tenant_of(state: &AppState, body: &Map<String, Value>) -> Result<i64, ApiError> {
    let token = match body.get("apptoken") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => return Err(ApiError::Unauthorized),
    };
    let hash = hash_secret(token);
    let cred = state
        .store
        .credential_by_hash(&hash)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if !bool::from(cred.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) {
        return Err(ApiError::Unauthorized);
    }
    Ok(cred.tenant_id)
}

fn body_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match parse_json::<Value>(bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        )),
    }
}

fn check_keys(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(
            k.clone(),
            format!("unknown field; expected {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn field_names() -> String {
    Field::ALL
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_param(field: Field, v: &Value, at: &str) -> Result<Param, ApiError> {
    match (field.ty(), v) {
        (FieldType::Integer, Value::Number(n)) if n.is_i64() => {
            Ok(Param::Int(n.as_i64().unwrap_or_default()))
        }
        (FieldType::Integer, Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
            Ok(Param::Int(s.trim().parse().unwrap_or_default()))
        }
        (FieldType::Integer, other) => Err(ApiError::invalid(
            at,
            format!("'{}' needs an integer, not {other}", field.name()),
        )),
        (FieldType::Text, Value::String(s)) => Ok(Param::Text(s.clone())),
        (FieldType::Text, other) => Err(ApiError::invalid(
            at,
            format!("'{}' needs a string, not {other}", field.name()),
        )),
    }
}

fn parse_condition(i: usize, c: &Value) -> Result<Condition, ApiError> {
    let at = format!("condition[{i}]");
    let Some([field, op, value]) = c.as_array().map(Vec::as_slice) else {
        return Err(ApiError::invalid(at, "expected [field, operator, value]"));
    };
    let field_name = field
        .as_str()
        .ok_or_else(|| ApiError::invalid(format!("{at}[0]"), "the field must be a string"))?;
    let field = Field::parse(field_name).ok_or_else(|| {
        ApiError::invalid(
            format!("{at}[0]"),
            format!(
                "unknown field '{field_name}'; conditions take {}",
                field_names()
            ),
        )
    })?;
    let op_name = op
        .as_str()
        .ok_or_else(|| ApiError::invalid(format!("{at}[1]"), "the operator must be a string"))?;
    let op = Op::parse(op_name).ok_or_else(|| {
        ApiError::invalid(
            format!("{at}[1]"),
            format!(
                "unknown operator '{op_name}'; expected one of {}",
                Op::NAMES.join(", ")
            ),
        )
    })?;
    let value_at = format!("{at}[2]");
    let value = match (op, value) {
        (Op::In | Op::NotIn, Value::Array(items)) => {
            if items.len() > IN_MAX {
                return Err(ApiError::invalid(
                    value_at,
                    format!("at most {IN_MAX} values"),
                ));
            }
            Operand::List(
                items
                    .iter()
                    .map(|v| parse_param(field, v, &value_at))
                    .collect::<Result<_, _>>()?,
            )
        }
        (Op::In | Op::NotIn, _) => {
            return Err(ApiError::invalid(
                value_at,
                format!("'{op_name}' needs a list of values"),
            ));
        }
        (Op::Eq | Op::Ne, Value::Null) => Operand::Null,
        (_, Value::Null) => {
            return Err(ApiError::invalid(
                value_at,
                format!("null only works with = and !=, not '{op_name}'"),
            ));
        }
        (_, v) => Operand::One(parse_param(field, v, &value_at)?),
    };
    Ok(Condition { field, op, value })
}

fn parse_order(i: usize, term: &Value) -> Result<(Field, bool), ApiError> {
    let at = format!("order[{i}]");
    let text = term
        .as_str()
        .ok_or_else(|| ApiError::invalid(&at, "expected \"field ASC\" or \"field DESC\""))?;
    let mut words = text.split_whitespace();
    let (name, dir, rest) = (words.next().unwrap_or(""), words.next(), words.next());
    let field = Field::parse(name).ok_or_else(|| {
        ApiError::invalid(
            &at,
            format!(
                "unknown field '{name}' in '{text}'; order takes {}",
                field_names()
            ),
        )
    })?;
    let desc = match dir.map(|d| d.to_ascii_uppercase()) {
        None => false,
        Some(d) if d == "ASC" && rest.is_none() => false,
        Some(d) if d == "DESC" && rest.is_none() => true,
        _ => {
            return Err(ApiError::invalid(
                &at,
                format!("'{text}' is not \"field ASC\" or \"field DESC\""),
            ));
        }
    };
    Ok((field, desc))
}

fn parse_select(body: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(select) = body.get("select") else {
        return Ok(None);
    };
    if select.is_null() {
        return Ok(None);
    }
    let items = select
        .as_array()
        .ok_or_else(|| ApiError::invalid("select", "expected a list of field names"))?;
    if items.is_empty() {
        return Err(ApiError::invalid(
            "select",
            "names no field; give at least one, or leave select out for the default fields",
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = item
            .as_str()
            .ok_or_else(|| ApiError::invalid(format!("select[{i}]"), "expected a field name"))?;
        if Field::parse(name).is_none() && !SELECT_ONLY.contains(&name) {
            return Err(ApiError::invalid(
                format!("select[{i}]"),
                format!(
                    "unknown field '{name}'; select takes {}, {}",
                    field_names(),
                    SELECT_ONLY.join(", ")
                ),
            ));
        }
        out.push(name.to_string());
    }
    Ok(Some(out))
}

fn int_field(
    body: &Map<String, Value>,
    name: &str,
    default: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_i64().filter(|n| (0..=max).contains(n)).ok_or_else(|| {
            ApiError::invalid(name, format!("must be an integer from 0 to {max}, not {v}"))
        }),
    }
}

fn secs(t: Option<Timestamp>) -> Value {
    t.map(|t| json!(t.as_second())).unwrap_or(Value::Null)
}

/// The task as this dialect shows it, all fields or the selected ones in
/// the order asked.
fn task_view(task: &Task, select: Option<&[String]>, now: Timestamp) -> Value {
    let get = |name: &str| -> Value {
        match name {
            "id" => json!(task.id),
            "project_id" => json!(task.tenant_id),
            "identifier" => json!(task.identifier),
            "status" => json!(task.state.status_code()),
            "desc" => json!(task.desc),
            "errors" => Value::Object(task.errors.clone()),
            "logs" => json!(task.logs),
            "create_time" => json!(task.created_at.as_second()),
            "start_time" => secs(task.started_at),
            "finish_time" => secs(task.finished_at),
            "last_modified" => json!(task.modified_at.as_second()),
            "result" => task
                .result
                .as_deref()
                .map(|r| json!(result_name(r)))
                .unwrap_or(Value::Null),
            "attempts" => json!(task.attempts),
            "version" => json!(task.version),
            "output" => task.output.clone().unwrap_or(Value::Null),
            "trigger" => json!(task.trigger),
            "target" => Value::Object(task.target.clone()),
            // As the REST view: only while the task runs.
            "progress" if task.state == TaskState::InProgress => {
                json!({ "done": task.progress_done, "total": task.progress_total, "percent": task.percent(), "eta_seconds": task.eta_seconds(now) })
            }
            _ => Value::Null,
        }
    };
    let default: Vec<String> = [
        "id",
        "project_id",
        "identifier",
        "status",
        "desc",
        "errors",
        "create_time",
        "start_time",
        "finish_time",
        "last_modified",
        "result",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let names = select.unwrap_or(&default);
    Value::Object(names.iter().map(|n| (n.clone(), get(n))).collect())
}

#[utoipa::path(post, path = "/api/external/list/task", tag = "query dialect", request_body = crate::openapi::ListTaskRequest,
    responses((status = 200, body = crate::openapi::EnvelopeList),
        (status = 400, description = "a field, operator, value or order term is wrong; the message names it", body = crate::openapi::EnvelopeError),
        (status = 401, description = "missing or invalid apptoken", body = crate::openapi::EnvelopeError),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Envelope> {
    let body = body_object(&bytes.map_err(unreadable_body)?)?;
    let tenant = tenant_of(&state, &body).await?;
    check_keys(
        &body,
        &[
            "apptoken",
            "condition",
            "order",
            "select",
            "limit",
            "offset",
        ],
    )?;
    let conditions = match body.get("condition") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => {
            if items.len() > CONDITIONS_MAX {
                return Err(ApiError::invalid(
                    "condition",
                    format!("at most {CONDITIONS_MAX} conditions, got {}", items.len()),
                )
                .into());
            }
            let values: usize = items
                .iter()
                .filter_map(|c| c.get(2).and_then(Value::as_array).map(Vec::len))
                .sum();
            if values > VALUES_MAX {
                return Err(ApiError::invalid(
                    "condition",
                    format!("at most {VALUES_MAX} values in all the lists together, got {values}"),
                )
                .into());
            }
            items
                .iter()
                .enumerate()
                .map(|(i, c)| parse_condition(i, c))
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "condition",
                "expected a list of [field, operator, value]",
            )
            .into());
        }
    };
    let order = match body.get("order") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) if items.len() > ORDER_MAX => {
            return Err(ApiError::invalid(
                "order",
                format!("at most {ORDER_MAX} order terms, got {}", items.len()),
            )
            .into());
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, o)| parse_order(i, o))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid("order", "expected a list like [\"id DESC\"]").into());
        }
    };
    let select = parse_select(&body)?;
    let limit = int_field(&body, "limit", LIMIT_DEFAULT, LIMIT_MAX)?;
    let offset = int_field(&body, "offset", 0, OFFSET_MAX)?;
    let query = TaskQuery {
        conditions,
        order,
        limit,
        offset,
    };
    let tasks = state.store.query_tasks(tenant, &query).await?;
    let now = Timestamp::now();
    Ok(ok(Value::Array(
        tasks
            .iter()
            .map(|t| task_view(t, select.as_deref(), now))
            .collect(),
    )))
}

#[utoipa::path(post, path = "/api/external/info/task", tag = "query dialect", request_body = crate::openapi::InfoTaskRequest,
    responses((status = 200, body = crate::openapi::EnvelopeOne),
        (status = 400, description = "a field, operator, value or order term is wrong; the message names it", body = crate::openapi::EnvelopeError),
        (status = 401, description = "missing or invalid apptoken", body = crate::openapi::EnvelopeError),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::EnvelopeError),
    ))]
pub(crate) async fn info(
    State(state): State<AppState>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Envelope> {
    let body = body_object(&bytes.map_err(unreadable_body)?)?;
    let tenant = tenant_of(&state, &body).await?;
    check_keys(&body, &["apptoken", "id", "select"])?;
    let id = match body.get("id") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|i| i > 0) => {
            n.as_i64().unwrap_or_default()
        }
        Some(Value::String(s)) if s.parse::<i64>().is_ok_and(|i| i > 0) => {
            s.parse().unwrap_or_default()
        }
        Some(other) => {
            return Err(ApiError::invalid("id", format!("'{other}' is not a task id")).into());
        }
        None => return Err(ApiError::invalid("id", "is required").into()),
    };
    let select = parse_select(&body)?;
    let task = state
        .store
        .get_task(tenant, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
    Ok(ok(task_view(&task, select.as_deref(), Timestamp::now())))
}
