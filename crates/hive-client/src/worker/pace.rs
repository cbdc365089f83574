//! How long this worker's handlers take: what decides whether it may hold claims beyond
//! its free slots (see [`super::slots::Slots`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Handlers shorter than this on average may have claims waiting for them: a buffered
/// task then waits about one such handler, and the worker saves a commit per round. Longer
/// handlers would keep a buffered task from a worker that could run it now.
pub(super) const QUICK: Duration = Duration::from_millis(50);

/// A moving average of handler durations, shared by the handlers that record it and the
/// slots that read it.
#[derive(Debug, Clone, Default)]
pub(super) struct Pace(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Exponentially weighted, in microseconds.
    average_us: AtomicU64,
    samples: AtomicU64,
}

impl Pace {
    /// Records one handler call's duration.
    pub(super) fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let first = self.0.samples.fetch_add(1, Ordering::Relaxed) == 0;
        let _ = self
            .0
            .average_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if first {
                    us
                } else {
                    // A weight of 1/8: a few slow calls turn a quick worker slow quickly.
                    avg - avg / 8 + us / 8
                })
            });
    }

    /// Whether handlers are known to be quick: at least `enough` calls, averaging under
    /// [`QUICK`]. Unknown counts as slow, so a new worker claims only what it can run.
    pub(super) fn quick(&self, enough: u64) -> bool {
        self.0.samples.load(Ordering::Relaxed) >= enough
            && self.0.average_us.load(Ordering::Relaxed) < QUICK.as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_slow_then_the_average_decides() {
        let pace = Pace::default();
        assert!(!pace.quick(2));
        pace.record(Duration::from_millis(1));
        assert!(!pace.quick(2), "one call is not enough to know");
        pace.record(Duration::from_millis(1));
        assert!(pace.quick(2));
        for _ in 0..8 {
            pace.record(Duration::from_secs(1));
        }
        assert!(!pace.quick(2), "slow calls turn it slow");
    }
}
