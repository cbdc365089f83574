//! The store's rules, written once for every backend: what a change to a task does beyond
//! the task itself.
//!
//! A task reaching `completed` counts down its dependents (a queued dependent left waiting
//! for nothing is announced `TaskReady`); one reaching `failed` or `cancelled` cancels its
//! unfinished transitive dependents (closing their running runs); either way its plan
//! counts it and may change status ([`hive_models::PlanCounters::step`]). A failed attempt
//! is retried with backoff or fails the task for good ([`hive_models::after_failure`]). A
//! task leaving an active status closes its running run
//! ([`hive_models::RunStatus::on_task_leaving_for`]); status changes merge metadata
//! ([`hive_models::merge_metadata`]).
//!
//! Backends are adapters around [`Changes`], which replays a batch of operations — finished
//! runs, expired leases, released runs, status changes, a plan's cancellation — against
//! a [`View`] of the rows they touch and produces [`Patches`]: the runs to close, the
//! tasks and plans to update, the completed tasks whose dependents count down, and the
//! notifications to send after commit. Memory's view is its maps; SQLite and Postgres load
//! the rows the batch can touch (Postgres locking them), then write the patches with a few
//! statements. A batch behaves exactly as its operations applied one after another: an
//! earlier failure may cancel a task whose run a later outcome then finds stale. Spawns
//! are the exception: checked against the plans as the batch found them, so `hive-ops`
//! cuts a batch before a spawn that follows a failure.

// A build with only the memory backend uses part of the rules: what the SQL adapters
// load their rows into, and the patch fields only they read.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_imports)
)]

mod changes;
pub mod growth;
mod rows;
mod state;

pub use changes::{Changes, Patches};
#[cfg(feature = "postgres")]
pub use rows::plan_deltas_json;
#[cfg(feature = "postgres")]
pub use rows::waited_us;
pub use rows::{plans_json, runs_json, tasks_json};
pub use state::{Loaded, TaskState, View};

/// `at + d` at the microsecond precision the databases store, saturating instead of
/// overflowing (about 1000 years at most), so reported times equal the stored ones.
pub fn after(at: hive_models::Timestamp, d: std::time::Duration) -> hive_models::Timestamp {
    use chrono::DurationRound;
    /// Durations are capped so `now() ± d` stays a valid timestamp on every backend.
    const MAX_DAYS: i64 = 365_250;
    let d = chrono::Duration::from_std(d)
        .unwrap_or(chrono::Duration::MAX)
        .min(chrono::Duration::days(MAX_DAYS));
    let t = at.checked_add_signed(d).unwrap_or(at);
    t.duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or(t)
}

/// When a run's handler started: `waited` ([`crate::RunOutcome::waited`]) after its claim
/// at `claimed`, but never after the run ended at `end`. (The SQL backends write the same
/// rule in their run-closing statements.)
pub fn handler_start(
    claimed: hive_models::Timestamp,
    waited: std::time::Duration,
    end: hive_models::Timestamp,
) -> hive_models::Timestamp {
    after(claimed, waited).min(end)
}

#[cfg(test)]
mod tests;
