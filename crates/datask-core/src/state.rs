use serde::{Deserialize, Serialize};

/// The life of a task. `Ready → InProgress → Done | Error | Fatal`,
/// `Cancelled` from `Ready` or `InProgress`; a repeating task returns to `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    Ready,
    #[serde(rename = "INPROGRESS")]
    InProgress,
    Done,
    /// It ran and its input had problems, listed in `errors`.
    Error,
    /// It could not run: crash after the last retry, timeout, internal failure.
    Fatal,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Ready,
        TaskState::InProgress,
        TaskState::Done,
        TaskState::Error,
        TaskState::Fatal,
        TaskState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Ready => "READY",
            TaskState::InProgress => "INPROGRESS",
            TaskState::Done => "DONE",
            TaskState::Error => "ERROR",
            TaskState::Fatal => "FATAL",
            TaskState::Cancelled => "CANCELLED",
        }
    }

    /// The numeric status of the query dialect (0 New … 4 Fatal, 5 Cancelled).
    pub fn status_code(self) -> i64 {
        match self {
            TaskState::Ready => 0,
            TaskState::InProgress => 1,
            TaskState::Done => 2,
            TaskState::Error => 3,
            TaskState::Fatal => 4,
            TaskState::Cancelled => 5,
        }
    }

    pub fn from_status_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.status_code() == code)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Error | TaskState::Fatal | TaskState::Cancelled
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::from_status_code(s.status_code()), Some(s));
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskState::InProgress.status_code(), 1);
        assert_eq!(TaskState::Fatal.status_code(), 4);
    }
}
