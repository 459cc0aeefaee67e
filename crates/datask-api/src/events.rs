//! `GET /tasks/{id}/events`: server-sent events of a task's state and
//! progress. Each change of `version` is one `task` event carrying the task
//! as `GET /tasks/{id}` shows it; the stream ends after a finished state.
//! A repeating task never finishes (each run ends back in READY, often
//! between two polls), so each run's end is also a `run` event: how it
//! ended (`state`), when, and the task; its stream goes on. It polls the
//! store, so it sees changes made by any node. Every stream ends when the
//! server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use crate::path::PathArgs;
use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use datask_core::Task;
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
    responses((status = 200, description = "server-sent events: `task` events carrying the task, ending after a finished state; for a repeating task also a `run` event at each run's end (`state`, `finished_at`, `task`)", content_type = "text/event-stream", body = String),
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
    let seen = Seen {
        version: -1,
        finished_at: first.finished_at,
    };
    let stream = futures::stream::unfold(
        (Some(first), seen, VecDeque::new(), false),
        move |(pending, mut seen, mut queued, ended)| {
            let store = state.store.clone();
            let shutdown = state.shutdown.clone();
            async move {
                if let Some(event) = queued.pop_front() {
                    return Some((Ok(event), (pending, seen, queued, ended)));
                }
                if ended {
                    return None;
                }
                let mut current = pending;
                loop {
                    let task = match current.take() {
                        Some(t) => t,
                        None => {
                            // At shutdown the stream ends; a client reconnects
                            // (with `Last-Event-ID`) to the next node.
                            tokio::select! {
                                () = tokio::time::sleep(POLL) => {}
                                () = shutdown.cancelled() => return None,
                            }
                            match store.get_task(tenant, id).await {
                                Ok(Some(t)) => t,
                                // Deleted, or the store failed: end the stream with a last word.
                                Ok(None) => {
                                    return Some((
                                        Ok(Event::default().event("deleted").data(id.to_string())),
                                        (None, seen, queued, true),
                                    ));
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "events: reading the task failed");
                                    continue;
                                }
                            }
                        }
                    };
                    if task.version == seen.version {
                        continue;
                    }
                    let now = Timestamp::now();
                    let done = task.state.is_terminal();
                    // A run ended since the last event and the task went on
                    // (a repeating one): say how, before the task itself.
                    if !done && task.finished_at.is_some() && task.finished_at != seen.finished_at {
                        queued.push_back(run_event(&task, now));
                    }
                    queued.push_back(encoded(
                        Event::default()
                            .event("task")
                            .id(task.version.to_string())
                            .json_data(task_json(&task, now)),
                    ));
                    seen = Seen {
                        version: task.version,
                        finished_at: task.finished_at,
                    };
                    let first = queued.pop_front().expect("an event was queued");
                    return Some((Ok(first), (None, seen, queued, done)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What the stream has told of the task so far.
struct Seen {
    version: i64,
    finished_at: Option<Timestamp>,
}

/// A repeating task's run that ended: the state it ended in, from the
/// task's log (`INPROGRESS -> DONE`), its end time, and the task.
fn run_event(task: &Task, now: Timestamp) -> Event {
    let ended = task
        .logs
        .iter()
        .rev()
        .find_map(|l| l.msg.strip_prefix("INPROGRESS -> "))
        .unwrap_or("DONE");
    encoded(Event::default().event("run").json_data(serde_json::json!({
        "state": ended,
        "finished_at": task.finished_at,
        "task": task_json(task, now),
    })))
}

fn encoded(event: Result<Event, axum::Error>) -> Event {
    event.unwrap_or_else(|_| {
        Event::default()
            .event("error")
            .data("could not encode the task")
    })
}
