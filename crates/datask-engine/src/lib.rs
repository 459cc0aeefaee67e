//! The task engine: workers that claim tasks under a lease, run their
//! handler, heartbeat, and record the outcome; the rescuer that reclaims
//! expired leases; schedules; and the file store results and uploads live in.
//!
//! It knows nothing of HTTP or of the tenant's data: handlers bring that.

mod completer;
pub mod files;
pub mod handler;
pub mod metrics;
pub mod worker;

pub use files::FileStore;
pub use handler::{Handler, Invalid, Outcome, Registry, TaskContext, TaskError};
pub use metrics::EngineMetrics;
pub use worker::{Engine, EngineConfig};
