//! How long this worker's handlers take: what decides how many claims it may hold beyond
//! its free slots (see [`super::slots::Slots`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a claim may wait in the local buffer for a handler, at the handlers' average
/// pace. The buffer is sized so that its last claim waits about this long: quick handlers
/// get a deep buffer (each commit carries more outcomes), handlers slower than this get
/// none, so a buffered task is never held back long from a worker that could run it now.
pub(super) const BUFFER_WAIT: Duration = Duration::from_millis(50);

/// A moving average of handler durations, shared by the handlers that record it and the
/// slots that read it.
#[derive(Debug, Clone, Default)]
pub(super) struct Pace(Arc<Mutex<Inner>>);

/// The count and the average change together. Kept apart (two atomics), two calls of 20 ms
/// ending at once could count both before the first wrote its average: the second averaged
/// itself with 0 (2.5 ms), a read in between took that as the pace, and a new worker of 2
/// handlers held 40 claims where 6 were due.
#[derive(Debug, Default)]
struct Inner {
    /// Exponentially weighted, in microseconds.
    average_us: u64,
    samples: u64,
}

impl Pace {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one handler call's duration.
    pub(super) fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut inner = self.inner();
        inner.average_us = if inner.samples == 0 {
            us
        } else {
            // A weight of 1/8: a few slow calls turn a quick worker slow quickly.
            inner.average_us - inner.average_us / 8 + us / 8
        };
        inner.samples = inner.samples.saturating_add(1);
    }

    /// The average handler call, once at least `enough` calls have been timed.
    pub(super) fn average(&self, enough: u64) -> Option<Duration> {
        let inner = self.inner();
        (inner.samples >= enough).then(|| Duration::from_micros(inner.average_us))
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
