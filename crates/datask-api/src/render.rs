//! The task as the REST dialect shows it (SPEC §3).

use datask_core::{Task, TaskState};
use jiff::Timestamp;
use serde_json::{Value, json};

pub fn task_json(task: &Task, now: Timestamp) -> Value {
    let progress = (task.state == TaskState::InProgress).then(|| {
        json!({
            "done": task.progress_done,
            "total": task.progress_total,
            "percent": task.percent(),
            "eta_seconds": task.eta_seconds(now),
        })
    });
    json!({
        "id": task.id,
        "chain": task.tenant_id,
        "identifier": task.identifier,
        "desc": task.desc,
        "state": {
            "code": task.state.as_str(),
            "last_run_date": task.started_at,
            "last_modified": task.modified_at,
            "created_date": task.created_at,
        },
        "trigger": {
            "once": task.trigger.once,
            "repeat": task.trigger.repeat,
            "timezone": task.trigger.timezone,
            "segment": task.trigger.segment,
            "segment_id": task.trigger.segment_id,
        },
        "target": task.target,
        "logs": task.logs,
        "errors": task.errors,
        "progress": progress,
        "output": task.output,
        "result": task.result.as_deref().map(result_name),
        "version": task.version,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "debug": task.debug,
    })
}

/// The file name of a result key (`results/<tenant>/<task>/<fence>/<name>`).
pub fn result_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
