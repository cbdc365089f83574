//! Exponential retry backoff.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a failed task waits before it may be claimed again: `base × 2^(attempt−1)`,
/// capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// No delay between attempts (tests and benchmarks).
    pub const IMMEDIATE: RetryPolicy = RetryPolicy {
        base: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The delay after the `attempt`-th failed attempt (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What becomes of a task whose attempt failed (or whose lease expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to the queue, claimable again after `delay`.
    Retry { delay: Duration },
    /// Failed for good.
    Fail,
}

/// The retry rule: with a policy, a task whose `attempts` (this one included) have not
/// used up `max_retries` retries is retried after the policy's backoff for this attempt;
/// without a policy (a permanent failure) or out of retries, it fails.
pub fn after_failure(retry: Option<RetryPolicy>, attempts: u32, max_retries: u32) -> AfterFailure {
    match retry {
        Some(policy) if attempts <= max_retries => AfterFailure::Retry {
            delay: policy.backoff(attempts),
        },
        _ => AfterFailure::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(5), Duration::from_secs(1));
        assert_eq!(p.backoff(64), Duration::from_secs(1));
    }

    #[test]
    fn retries_until_max_retries_then_fails() {
        let p = Some(RetryPolicy::default());
        assert_eq!(
            after_failure(p, 1, 2),
            AfterFailure::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert!(matches!(after_failure(p, 2, 2), AfterFailure::Retry { .. }));
        assert_eq!(after_failure(p, 3, 2), AfterFailure::Fail);
        assert_eq!(after_failure(None, 1, 5), AfterFailure::Fail);
    }
}
