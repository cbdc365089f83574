//! Hive's models: plain data and pure rules, with no IO, no async and no database.
//!
//! The nine models of the original package live here — [`Task`], [`TaskStatus`],
//! [`Worker`], [`WorkerStatus`], [`Run`], [`RunStatus`], [`ExecutionPlan`],
//! [`PlanStatus`] and [`SubTask`] — together with the rules every backend and
//! operation share: the task transition table ([`TaskStatus::can_transition_to`]),
//! plan validation ([`validate_subtasks`]), input validation ([`NewTask::validate`])
//! and the retry backoff ([`RetryPolicy`]).

mod error;
mod flow;
mod ids;
mod plan;
mod retry;
mod run;
mod schedule;
mod status;
mod storable;
mod task;
mod worker;

pub use error::{Error, PlanError, Result};
pub use flow::{
    Admission, Candidate, FlowEdit, FlowRule, MAX_LIMIT, Rate, Scope, Usage, check_concurrency,
    check_scope_name, is_flow_controlled,
};
pub use ids::{IdMap, IdSet, PlanId, RunId, TaskId, WorkerId};
pub use plan::{
    ExecutionPlan, Growth, NewPlan, PlanCounters, PlanHeader, PlanStatus, SubTask, grow, in_layers,
    tasks_in_layers, unique_dependencies, validate_subtask_fields, validate_subtasks,
};
pub use retry::{AfterFailure, Jitter, RetryPolicy, TypeRetry, after_failure};
pub use run::{Progress, Run, RunStatus};
pub use schedule::{
    Missed, NewSchedule, Overlap, Schedule, Scheduled, ScheduledTask, SlotWork, Timing, manual_key,
    slot_key,
};
pub use task::{
    Blocker, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RETRIES, DependentsLeft, MAX_DELAY_SECS,
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_JSON_DEPTH, MAX_TIMEOUT_SECS, NewTask, Task, TaskStatus,
    check_idempotency_key, check_json_depth, check_json_storable, check_max_retries, check_no_nul,
    check_output_size, delayed_until, merge_metadata,
};
pub use worker::{Worker, WorkerStatus};

/// JSON values carried by tasks, runs and workers (payloads, results, metadata).
pub type Json = serde_json::Value;

/// Timestamps are always UTC; backends store them with microsecond precision.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Builder setters: `setters! { /// doc
/// field: Type, other: Type => Some, name: impl Into<String> => into }` writes
/// `pub fn field(mut self, value: Type) -> Self` assigning the field (wrapped in `Some`,
/// or converted with `into`, as asked). For the builders of this crate and hive-client.
#[doc(hidden)]
#[macro_export]
macro_rules! setters {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty $(=> $wrap:ident)? ),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = $crate::setters!(@wrap value $(, $wrap)?);
                self
            }
        )*
    };
    (@wrap $v:ident) => { $v };
    (@wrap $v:ident, Some) => { Some($v) };
    (@wrap $v:ident, into) => { $v.into() };
    (@wrap $v:ident, some_into) => { Some($v.into()) };
}
