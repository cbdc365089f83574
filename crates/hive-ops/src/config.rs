//! [`OpsConfig`]: the limits and timings operations apply.

use std::time::Duration;

use hive_models::{DEFAULT_MAX_PAYLOAD_BYTES, RetryPolicy};

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
    /// Backoff between retries of a failed task.
    pub retry: RetryPolicy,
    /// How long `get_execution_plan_status_cached` may serve a status without re-reading it.
    pub plan_cache_ttl: Duration,
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
            plan_cache_ttl: Duration::from_secs(5),
            prune_batch: 1000,
            retry_batch: 500,
            reap_batch: 500,
        }
    }
}
