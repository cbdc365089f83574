//! How long this worker's handlers take: what decides how many claims it may hold beyond
//! its free slots (see [`super::slots::Slots`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a claim may wait in the local buffer for a handler, at the handlers' average
/// pace. The buffer is sized so that its last claim waits about this long: quick handlers
/// get a deep buffer (each commit carries more outcomes), handlers slower than this get
/// none, so a buffered task is never held back long from a worker that could run it now.
pub(super) const BUFFER_WAIT: Duration = Duration::from_millis(50);

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

    /// The average handler call, once at least `enough` calls have been timed.
    pub(super) fn average(&self, enough: u64) -> Option<Duration> {
        (self.0.samples.load(Ordering::Relaxed) >= enough)
            .then(|| Duration::from_micros(self.0.average_us.load(Ordering::Relaxed)))
    }

    /// How many claims may wait for one of `handlers` handlers: as many as they finish
    /// in [`BUFFER_WAIT`] at their average pace, in whole rounds of `handlers`. None until
    /// at least `enough` calls have been timed, so a new worker claims only what it can
    /// start at once.
    pub(super) fn buffer(&self, handlers: u64, enough: u64) -> u64 {
        let Some(average) = self.average(enough) else {
            return 0;
        };
        let average_us = (average.as_micros() as u64).max(1);
        let wait_us = BUFFER_WAIT.as_micros() as u64;
        handlers.saturating_mul(wait_us / average_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_holds_what_handlers_finish_in_the_wait_and_nothing_until_known() {
        let pace = Pace::default();
        assert_eq!(pace.buffer(4, 2), 0, "nothing timed yet");
        pace.record(Duration::from_millis(10));
        assert_eq!(pace.buffer(4, 2), 0, "one call is not enough to know");
        pace.record(Duration::from_millis(10));
        assert_eq!(pace.buffer(4, 2), 20, "4 handlers × (50 ms ÷ 10 ms)");
        for _ in 0..8 {
            pace.record(Duration::from_secs(1));
        }
        assert_eq!(pace.buffer(4, 2), 0, "slow calls empty it");
        let instant = Pace::default();
        instant.record(Duration::ZERO);
        assert_eq!(
            instant.buffer(2, 1),
            100_000,
            "a zero average counts as 1 µs"
        );
    }
}
