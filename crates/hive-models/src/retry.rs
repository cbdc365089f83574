//! Exponential retry backoff.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a failed task waits before it may be claimed again: up to `base × 2^(attempt−1)`,
/// capped at `max`, spread by `jitter`. A field it does not know is refused, naming it: a
/// misspelt `jitter` in a plan file must not leave the default in silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(with = "millis")]
    pub base: Duration,
    #[serde(with = "millis")]
    pub max: Duration,
    #[serde(default)]
    pub jitter: Jitter,
}

/// How a retry's delay is spread, so that a burst of failures does not come back in
/// lock-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Exactly the capped exponential backoff.
    None,
    /// Uniformly anywhere between zero and the capped exponential backoff ("full jitter").
    #[default]
    Full,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// No delay between attempts (tests and benchmarks).
    pub const IMMEDIATE: RetryPolicy = RetryPolicy {
        base: Duration::ZERO,
        max: Duration::ZERO,
        jitter: Jitter::None,
    };

    /// The longest policy a task may carry: a retry must stay schedulable.
    pub const MAX_DELAY: Duration = Duration::from_secs(crate::task::MAX_DELAY_SECS);

    /// Exponential backoff from `base`, capped at `max`, with full jitter.
    pub fn exponential(base: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy {
            base,
            max,
            jitter: Jitter::Full,
        }
    }

    /// The same policy without jitter.
    pub fn without_jitter(self) -> RetryPolicy {
        RetryPolicy {
            jitter: Jitter::None,
            ..self
        }
    }

    /// The capped backoff after the `attempt`-th failed attempt (1-based): the longest
    /// delay jitter may pick.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay after the `attempt`-th failed attempt, `unit` (in `[0, 1)`, drawn at
    /// random by the caller) placing it within the jitter's range.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let cap = self.backoff(attempt);
        match self.jitter {
            Jitter::None => cap,
            Jitter::Full => cap.mul_f64(unit.clamp(0.0, 1.0)),
        }
    }

    /// Rejects a policy that could not be followed: a cap below the base, or delays past
    /// the longest a task may wait.
    pub fn validate(&self, field: &str) -> crate::Result<()> {
        let invalid = |reason: String| {
            Err(crate::Error::InvalidField {
                field: field.into(),
                reason,
            })
        };
        if self.max < self.base {
            return invalid(format!(
                "the cap {:?} is below the base {:?}",
                self.max, self.base
            ));
        }
        if self.max > Self::MAX_DELAY {
            return invalid(format!(
                "the cap {:?} is over the longest delay of {} days",
                self.max,
                Self::MAX_DELAY.as_secs() / 86_400
            ));
        }
        Ok(())
    }
}

/// Durations as whole milliseconds in JSON (`{"base": 1000, "max": 300000}`), as stored.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A task type's retry defaults, applied to a new task of that type that sets none itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeRetry {
    /// Retries a task of this type gets (`None`: the default of 3).
    pub max_retries: Option<u32>,
    /// Its backoff (`None`: the client's).
    pub policy: Option<RetryPolicy>,
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
/// used up `max_retries` retries is retried after the policy's delay for this attempt
/// (`unit`, in `[0, 1)`, places it within the jitter); without a policy (a permanent
/// failure) or out of retries, it fails.
pub fn after_failure(
    retry: Option<RetryPolicy>,
    attempts: u32,
    max_retries: u32,
    unit: f64,
) -> AfterFailure {
    match retry {
        Some(policy) if attempts <= max_retries => AfterFailure::Retry {
            delay: policy.delay(attempts, unit),
        },
        _ => AfterFailure::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_is_refused_naming_it() {
        let json = r#"{"base": 1000, "max": 300000, "jiter": "none"}"#;
        let e = serde_json::from_str::<RetryPolicy>(json).unwrap_err();
        assert!(e.to_string().contains("unknown field `jiter`"), "{e}");
        let ok = r#"{"base": 1000, "max": 300000, "jitter": "none"}"#;
        let p: RetryPolicy = serde_json::from_str(ok).unwrap();
        assert_eq!(p.jitter, Jitter::None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(5), Duration::from_secs(1));
        assert_eq!(p.backoff(64), Duration::from_secs(1));
    }

    #[test]
    fn retries_until_max_retries_then_fails() {
        let p = Some(RetryPolicy::default().without_jitter());
        assert_eq!(
            after_failure(p, 1, 2, 0.5),
            AfterFailure::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert!(matches!(
            after_failure(p, 2, 2, 0.5),
            AfterFailure::Retry { .. }
        ));
        assert_eq!(after_failure(p, 3, 2, 0.5), AfterFailure::Fail);
        assert_eq!(after_failure(None, 1, 5, 0.5), AfterFailure::Fail);
    }

    #[test]
    fn full_jitter_spreads_the_delay_over_the_backoff_window() {
        let p = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(p.delay(3, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(p.delay(3, 0.999), Duration::from_secs(4).mul_f64(0.999));
        assert_eq!(p.without_jitter().delay(3, 0.1), Duration::from_secs(4));
    }

    #[test]
    fn policies_round_trip_as_milliseconds_and_refuse_a_cap_below_the_base() {
        let p = RetryPolicy::exponential(Duration::from_millis(250), Duration::from_secs(10));
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"base": 250, "max": 10000, "jitter": "full"})
        );
        let back: RetryPolicy =
            serde_json::from_value(serde_json::json!({"base": 250, "max": 10000})).unwrap();
        assert_eq!(back, p, "jitter defaults to full");
        let bad = RetryPolicy::exponential(Duration::from_secs(5), Duration::from_secs(1));
        assert!(
            bad.validate("retry_policy")
                .unwrap_err()
                .to_string()
                .contains("below the base")
        );
    }
}
