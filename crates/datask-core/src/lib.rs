//! The vocabulary of datask: tasks, their states and triggers, the data
//! indexes, and the store interface every backend implements.
//!
//! Nothing here knows about HTTP, SQL or files.

pub mod index;
pub mod query;
pub mod schedule;
pub mod segment;
pub mod settings;
pub mod state;
pub mod store;
pub mod task;

pub use state::TaskState;
pub use store::{Store, StoreError};
pub use task::{LogEntry, Task, Trigger};

/// Tenant ids are the "chain" of the REST dialect and the "project" of the query dialect.
pub type TenantId = i64;
/// Task ids are unique across the service.
pub type TaskId = i64;
