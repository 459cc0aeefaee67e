//! Counters of what this process's engine did, for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use datask_core::TaskState;

#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub claimed: AtomicU64,
    pub done: AtomicU64,
    pub error: AtomicU64,
    pub fatal: AtomicU64,
    pub cancelled: AtomicU64,
    pub retried: AtomicU64,
    pub released: AtomicU64,
    pub lease_lost: AtomicU64,
    pub running: AtomicI64,
}

impl EngineMetrics {
    pub(crate) fn finished(&self, state: TaskState) {
        let counter = match state {
            TaskState::Done => &self.done,
            TaskState::Error => &self.error,
            TaskState::Fatal => &self.fatal,
            TaskState::Cancelled => &self.cancelled,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP datask_tasks_claimed_total Runs started by this process."
        );
        let _ = writeln!(out, "# TYPE datask_tasks_claimed_total counter");
        let _ = writeln!(out, "datask_tasks_claimed_total {}", get(&self.claimed));
        let _ = writeln!(
            out,
            "# HELP datask_tasks_finished_total Runs this process finished, by final state."
        );
        let _ = writeln!(out, "# TYPE datask_tasks_finished_total counter");
        for (state, c) in [
            ("DONE", &self.done),
            ("ERROR", &self.error),
            ("FATAL", &self.fatal),
            ("CANCELLED", &self.cancelled),
        ] {
            let _ = writeln!(
                out,
                "datask_tasks_finished_total{{state=\"{state}\"}} {}",
                get(c)
            );
        }
        for (name, help, c) in [
            (
                "datask_tasks_retried_total",
                "Runs that failed and were scheduled again.",
                &self.retried,
            ),
            (
                "datask_tasks_released_total",
                "Runs handed back at shutdown.",
                &self.released,
            ),
            (
                "datask_tasks_lease_lost_total",
                "Runs whose lease another worker took; their outcome was dropped.",
                &self.lease_lost,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", get(c));
        }
        let _ = writeln!(
            out,
            "# HELP datask_tasks_running Tasks running in this process now."
        );
        let _ = writeln!(out, "# TYPE datask_tasks_running gauge");
        let _ = writeln!(
            out,
            "datask_tasks_running {}",
            self.running.load(Ordering::Relaxed)
        );
    }
}
