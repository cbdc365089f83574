//! [`OpsConfig`]: the limits and timings operations apply.

use std::collections::HashMap;
use std::time::Duration;

use hive_models::{DEFAULT_MAX_PAYLOAD_BYTES, NewTask, RetryPolicy, SubTask, TypeRetry};

/// Limits and timings. The defaults suit a fleet of workers heartbeating every few seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsConfig {
    /// Payloads larger than this are rejected before any database call.
    pub max_payload_bytes: usize,
    /// A handler's output (a task's result) larger than this fails the task for good,
    /// naming it; dependents receive outputs whole, so they are bounded like payloads.
    pub max_output_bytes: usize,
    /// A worker whose heartbeat is older than this is not active, and the reaper marks it offline.
    pub heartbeat_timeout: Duration,
    /// Backoff between retries of a failed task that sets no policy of its own and whose
    /// type has none in `retry_by_type`.
    pub retry: RetryPolicy,
    /// Retry defaults per task type, applied to each new task (and subtask) of the type
    /// that sets none itself, when it is created through these operations.
    pub retry_by_type: HashMap<String, TypeRetry>,
    /// How many times a task may be snoozed (its handler asking to run again later without
    /// using up an attempt) before a further snooze fails it for good.
    pub max_snoozes: u32,
    /// How long `get_execution_plan_status_cached` may serve a status without re-reading it.
    pub plan_cache_ttl: Duration,
    /// How old, at most, the counts of finished tasks `queue_stats` serves may be: they are
    /// reused for 50 times as long as counting them took, up to this.
    pub finished_counts_max_age: Duration,
    /// Tasks deleted per statement by `prune_tasks`.
    pub prune_batch: u32,
    /// Tasks read per page by `retry_tasks`, so a bulk retry never loads every match.
    pub retry_batch: u32,
    /// Expired runs handled per reaper call.
    pub reap_batch: u32,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_output_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            heartbeat_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            retry_by_type: HashMap::new(),
            max_snoozes: 50,
            plan_cache_ttl: Duration::from_secs(5),
            finished_counts_max_age: Duration::from_secs(60),
            prune_batch: 1000,
            retry_batch: 500,
            reap_batch: 500,
        }
    }
}

impl OpsConfig {
    /// `task` with what it leaves unset filled from its type's retry defaults.
    pub fn with_type_retry(&self, task: NewTask) -> NewTask {
        match self.retry_by_type.get(&task.task_type) {
            Some(defaults) => task.with_type_retry(defaults),
            None => task,
        }
    }

    /// [`OpsConfig::with_type_retry`] for a plan's subtask.
    pub fn fill_subtask_retry(&self, subtask: &mut SubTask) {
        if let Some(defaults) = self.retry_by_type.get(&subtask.task_type) {
            subtask.max_retries = subtask.max_retries.or(defaults.max_retries);
            subtask.retry_policy = subtask.retry_policy.or(defaults.policy);
        }
    }

    /// The backoff a failure of a task of `task_type` follows when the task has none of
    /// its own.
    pub fn retry_for(&self, task_type: &str) -> RetryPolicy {
        self.retry_by_type
            .get(task_type)
            .and_then(|t| t.policy)
            .unwrap_or(self.retry)
    }
}
