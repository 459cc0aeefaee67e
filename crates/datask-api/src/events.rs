//! `GET /tasks/{id}/events`: server-sent events of a task's state and
//! progress. Each change of `version` is one `task` event carrying the task
//! as `GET /tasks/{id}` shows it; the stream ends after a finished state.
//! It polls the store, so it sees changes made by any node.

use std::convert::Infallible;
use std::time::Duration;

use crate::path::PathArgs;
use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use jiff::Timestamp;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::render::task_json;
use crate::rest::not_found;

const POLL: Duration = Duration::from_millis(250);

pub fn router() -> Router<AppState> {
    Router::new().route("/tasks/{id}/events", get(events))
}

#[utoipa::path(get, path = "/tasks/{id}/events", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, description = "server-sent events: `task` events carrying the task, ending after a finished state", content_type = "text/event-stream", body = String),
        (status = 400, description = "a field is wrong; the message names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "missing or invalid credentials", body = crate::openapi::ErrorBody),
        (status = 404, description = "no such task in this tenant", body = crate::openapi::ErrorBody),
    ), security(("bearer" = [])))]
pub(crate) async fn events(
    caller: Caller,
    State(state): State<AppState>,
    PathArgs(id): PathArgs<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = crate::rest::parse_path_id(&id)?;
    let first = state
        .store
        .get_task(caller.tenant_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let tenant = caller.tenant_id;
    let stream = futures::stream::unfold(
        (Some(first), -1i64, false),
        move |(pending, last_version, ended)| {
            let store = state.store.clone();
            async move {
                if ended {
                    return None;
                }
                let mut current = pending;
                loop {
                    let task = match current.take() {
                        Some(t) => t,
                        None => {
                            tokio::time::sleep(POLL).await;
                            match store.get_task(tenant, id).await {
                                Ok(Some(t)) => t,
                                // Deleted, or the store failed: end the stream with a last word.
                                Ok(None) => {
                                    return Some((
                                        Ok(Event::default().event("deleted").data(id.to_string())),
                                        (None, last_version, true),
                                    ));
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "events: reading the task failed");
                                    continue;
                                }
                            }
                        }
                    };
                    if task.version != last_version {
                        let done = task.state.is_terminal();
                        let event = Event::default()
                            .event("task")
                            .id(task.version.to_string())
                            .json_data(task_json(&task, Timestamp::now()));
                        let event = event.unwrap_or_else(|_| {
                            Event::default()
                                .event("error")
                                .data("could not encode the task")
                        });
                        return Some((Ok(event), (None, task.version, done)));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
