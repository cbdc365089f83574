//! How the worker's loops ride out store faults: transient ones (the database unreachable,
//! a lock race lost, the disk full) are retried under capped exponential backoff and
//! logged at most once per interval with a count, not once per attempt; anything else
//! ends the worker with the error (see [`Fatal`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A retried loop's backoff and log throttle.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// What is being retried, for the log ("claim", "commit of finished runs", …).
    what: &'static str,
    delay: Duration,
    /// Failures since the last success.
    failures: u64,
    /// When a failure was last logged, and failures since then not logged.
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);
    /// At most one warning per loop in this long, however often it fails.
    const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn new(what: &'static str) -> Backoff {
        Backoff {
            what,
            delay: Self::FIRST,
            failures: 0,
            logged_at: None,
            unlogged: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self, worker: &str, error: &dyn std::fmt::Display) -> Duration {
        self.failures += 1;
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY)
        {
            tracing::warn!(
                worker,
                error = %error,
                failures = self.unlogged + 1,
                retry_in = ?delay,
                "{} failed (transient); retrying",
                self.what
            );
            self.logged_at = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        delay
    }

    /// Records a success: the next failure starts from the first delay again.
    pub fn succeeded(&mut self, worker: &str) {
        if self.failures > 0 {
            tracing::info!(
                worker,
                failures = self.failures,
                "{} works again",
                self.what
            );
        }
        *self = Backoff::new(self.what);
    }
}

/// The error that ends a worker, set by whichever of its loops met it first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fatal(Arc<Mutex<Option<crate::Error>>>);

impl Fatal {
    /// Keeps the first error; later ones are consequences of it.
    pub fn set(&self, error: crate::Error) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
    }

    pub fn take(&self) -> Option<crate::Error> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_to_a_cap_and_reset_on_success() {
        let mut b = Backoff::new("claim");
        let delays: Vec<Duration> = (0..10).map(|_| b.failed("w", &"boom")).collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[9], Backoff::MAX);
        // Only the first of these ten failures was logged; the rest are counted.
        assert_eq!(b.unlogged, 9);
        tokio::time::advance(Backoff::LOG_EVERY).await;
        b.failed("w", &"boom");
        assert_eq!(b.unlogged, 0, "a failure after the interval is logged");
        b.succeeded("w");
        assert_eq!(b.failed("w", &"boom"), Duration::from_millis(50));
    }
}
