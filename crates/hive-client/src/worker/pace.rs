//! How long this worker's handlers and commits take: what decides how many claims it may
//! hold beyond its free slots (see [`super::slots::Slots`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a claim may wait in the local buffer for a handler, at the handlers' average
/// pace. The buffer is sized so that its last claim waits about this long: quick handlers
/// get a deep buffer (each commit carries more outcomes), handlers slower than this get
/// none, so a buffered task is never held back long from a worker that could run it now.
pub(super) const BUFFER_WAIT: Duration = Duration::from_millis(50);

/// The most of a commit's time the buffer is sized for: a commit slower than this is a
/// stall (a restart, a full disk being retried), not the distance to the database, and
/// should not leave the worker holding a deep buffer once commits are quick again.
const COMMIT_AT_MOST: Duration = Duration::from_secs(1);

/// Moving averages of handler durations and of commit durations, shared by the handlers
/// and the completer that record them and the slots that read them.
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
    /// The completer's commits, the same way.
    commit_us: u64,
    commits: u64,
}

/// Adds `took` to an exponentially weighted average over `samples` samples so far.
fn weigh(average_us: &mut u64, samples: &mut u64, took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    *average_us = if *samples == 0 {
        us
    } else {
        // A weight of 1/8: a few slow calls turn a quick worker slow quickly.
        *average_us - *average_us / 8 + us / 8
    };
    *samples = samples.saturating_add(1);
}

impl Pace {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one handler call's duration.
    pub(super) fn record(&self, took: Duration) {
        let inner = &mut *self.inner();
        weigh(&mut inner.average_us, &mut inner.samples, took);
    }

    /// Records one commit of outcomes (and the claims made with it): the time the runs it
    /// carried held their slots after their handlers returned.
    pub(super) fn record_commit(&self, took: Duration) {
        let inner = &mut *self.inner();
        weigh(
            &mut inner.commit_us,
            &mut inner.commits,
            took.min(COMMIT_AT_MOST),
        );
    }

    /// The average handler call, once at least `enough` calls have been timed.
    pub(super) fn average(&self, enough: u64) -> Option<Duration> {
        let inner = self.inner();
        (inner.samples >= enough).then(|| Duration::from_micros(inner.average_us))
    }

    /// How many slots beyond `handlers` the worker may hold: as many claims as the
    /// handlers finish in [`BUFFER_WAIT`] at their average pace, plus as many as they
    /// finish during an average commit — a run keeps its slot until its outcome is
    /// committed, so far from the database (a commit of five round trips at 20 ms is
    /// 100 ms) the slots of outcomes being committed would otherwise eat the buffer and
    /// leave handlers waiting for the commit that refills them. In whole rounds of
    /// `handlers`. None until at least `enough` calls have been timed, so a new worker
    /// claims only what it can start at once.
    pub(super) fn buffer(&self, handlers: u64, enough: u64) -> u64 {
        let inner = self.inner();
        if inner.samples < enough {
            return 0;
        }
        let average_us = inner.average_us.max(1);
        let wait_us = BUFFER_WAIT.as_micros() as u64 + inner.commit_us;
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

    #[test]
    fn slots_of_outcomes_being_committed_come_on_top_of_the_buffer() {
        let pace = Pace::default();
        for _ in 0..2 {
            pace.record(Duration::from_millis(10));
        }
        pace.record_commit(Duration::from_millis(100));
        assert_eq!(
            pace.buffer(4, 2),
            60,
            "4 handlers × ((50 ms + 100 ms) ÷ 10 ms)"
        );
        for _ in 0..40 {
            pace.record_commit(Duration::from_millis(2));
        }
        assert_eq!(
            pace.buffer(4, 2),
            20,
            "quick commits again: (50 + 2) ÷ 10 rounds"
        );
        let stalled = Pace::default();
        stalled.record(Duration::from_millis(100));
        stalled.record_commit(Duration::from_secs(30));
        assert_eq!(
            stalled.buffer(1, 1),
            10,
            "a stall counts as a 1 s commit: (50 ms + 1 s) ÷ 100 ms"
        );
    }
}
