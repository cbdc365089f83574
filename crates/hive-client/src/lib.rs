//! Hive's SDK: one [`Client`] (alias [`OrchestrationClient`]) that apps use to create and
//! inspect tasks, workers and execution plans on any backend.
//!
//! ```no_run
//! use hive_client::{Client, NewTask};
//!
//! # async fn demo() -> Result<(), hive_client::Error> {
//! // `sqlite:hive.db` unless HIVE_DATABASE_URL says otherwise; created and migrated on first use.
//! let client = Client::from_env().await?;
//! let id = client
//!     .create_task(NewTask::new("Deploy", "deployment").payload(serde_json::json!({"env": "prod"})))
//!     .await?;
//! let pending = client.get_pending_tasks(Some("deployment")).await?;
//! assert!(pending.iter().any(|t| t.id == id));
//! # Ok(())
//! # }
//! ```
//!
//! Every operation of [`hive_ops::Ops`] is available on the client (it dereferences to
//! its `Ops`), plus the original SDK's convenience names ([`compat`]). With feature
//! `blocking`, `blocking::Client` offers every one of them without an async runtime.
// Not a link: without the feature the module does not exist, and the link would be broken.

#![warn(missing_docs)]

mod backoff;
#[cfg(feature = "blocking")]
pub mod blocking;
mod client;
pub mod compat;
mod error;
mod worker;

pub use client::{Client, ConnectRetry, DATABASE_URL_ENV, DEFAULT_DATABASE_URL};
pub use compat::{OrchestrationClient, get_client};
pub use error::{Error, Result};
pub use hive_models::{
    ExecutionPlan, FlowRule, Jitter, Missed, NewPlan, NewSchedule, NewTask, Overlap, PlanHeader,
    PlanId, PlanStatus, Progress, Rate, RetryPolicy, Run, RunId, RunStatus, Schedule, Scheduled,
    ScheduledTask, Scope, SubTask, Task, TaskId, TaskStatus, TypeRetry, Worker, WorkerId,
    WorkerStatus,
};
pub use hive_ops::{
    Event, EventOrigin, Limits, Ops, OpsConfig, Published, QueueInfo, SchedulePut, Subscription,
};
pub use hive_store::{ConnectOptions, Inputs, Store};
pub use worker::{
    DEFAULT_LEASE, DEFAULT_PREFETCH, DEFAULT_REAP_INTERVAL, Handler, HealthHandle, ShutdownHandle,
    TaskContext, TaskError, TaskOutput, WorkerBuilder, WorkerHealth, WorkerPhase, WorkerReport,
    unique_worker_id,
};
pub use {hive_models as models, hive_ops as ops, hive_store as store};
