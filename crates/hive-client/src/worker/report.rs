//! What a worker did: the counters its loops bump as outcomes commit and runs are released,
//! and the [`WorkerReport`] they add up to when it stops.

use std::sync::atomic::{AtomicU64, Ordering};

use hive_ops::store::{FinishReport, Finished};

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Failed attempts that were requeued with backoff.
    pub retried: u64,
    /// Outcomes rejected because the task was taken back (lease expired) or cancelled.
    pub stale: u64,
    /// Tasks given back to the queue at shutdown.
    pub released: u64,
    /// Runs whose handler asked to run again later (snoozed), without using an attempt.
    pub snoozed: u64,
}

/// Sums reports, e.g. of several workers.
impl std::ops::AddAssign<&WorkerReport> for WorkerReport {
    fn add_assign(&mut self, r: &WorkerReport) {
        let WorkerReport {
            completed,
            failed,
            retried,
            stale,
            released,
            snoozed,
        } = r;
        self.completed += completed;
        self.failed += failed;
        self.retried += retried;
        self.stale += stale;
        self.released += released;
        self.snoozed += snoozed;
    }
}

/// The live counts behind [`WorkerReport`]; shared because the completer and the shutdown
/// sequence count from different tasks.
#[derive(Debug, Default)]
pub(super) struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    stale: AtomicU64,
    released: AtomicU64,
    snoozed: AtomicU64,
}

impl Counters {
    pub(super) fn report(&self) -> WorkerReport {
        WorkerReport {
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            snoozed: self.snoozed.load(Ordering::Relaxed),
        }
    }

    /// Counts a committed batch by what became of each task.
    pub(super) fn add_finished(&self, reports: &[FinishReport]) {
        for r in reports {
            let c = match r.finished {
                Finished::Completed => &self.completed,
                Finished::Failed => &self.failed,
                Finished::Retrying { .. } => &self.retried,
                Finished::Snoozed { .. } => &self.snoozed,
                Finished::Stale => &self.stale,
                Finished::GivenBack => &self.released,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts runs given back to the queue at shutdown.
    pub(super) fn add_released(&self, runs: usize) {
        self.released.fetch_add(runs as u64, Ordering::Relaxed);
    }
}
