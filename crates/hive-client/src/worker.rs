//! The worker runtime: turns an async handler into a worker that registers, heartbeats,
//! claims tasks, runs them with bounded concurrency, reports outcomes in batches, reaps
//! expired leases, and shuts down gracefully.
//!
//! One file per concern: `builder` configures a worker, `runtime` runs its lifecycle,
//! `slots` owns its slots and claims, `handler` runs one task, `completer` commits outcomes
//! in batches, `held` keeps what the worker holds equal to what the store says it holds,
//! `stops` carries stop signals to running handlers, `health` answers liveness and readiness
//! probes, and `report` counts what happened.

mod bounds;
mod builder;
mod completer;
mod gate;
mod handler;
mod health;
mod held;
mod instance;
mod naming;
mod pace;
mod progress;
mod report;
mod runtime;
mod signals;
mod slots;
mod stops;

pub use builder::{
    DEFAULT_LEASE, DEFAULT_PREFETCH, DEFAULT_REAP_INTERVAL, ShutdownHandle, WorkerBuilder,
};
pub use handler::{Handler, TaskContext, TaskError, TaskOutput};
pub use health::{HealthHandle, WorkerHealth, WorkerPhase};
pub use naming::unique_worker_id;
pub use report::WorkerReport;
