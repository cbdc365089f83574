//! The queue's statistics for operators and the metrics gauges: unfinished tasks counted
//! at every call (by the status index, so at the cost of the work in flight), finished ones
//! from a count reused for a while, since counting them reads the whole history (230 ms
//! for 2,000,000 finished tasks on Postgres, on every scrape of every worker's `/metrics`
//! and every live refresh of an open dashboard).

use std::time::Duration;

use hive_store::{QueueStats, StatusCounts, Store, TypeStatusCount};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{Ops, Result};

/// A count of finished tasks is reused for this many times as long as it took to read,
/// within `OpsConfig::finished_counts_max_age`: counting then takes a fiftieth of the
/// database's time at most per process, and a small store (a count of a millisecond) is
/// counted again after 50 ms, so its overview looks live.
const REUSE_FOR_TIMES_ITS_COST: u32 = 50;

/// The last count of finished tasks per type and status, and until when it is reused.
#[derive(Debug)]
pub(crate) struct FinishedCounts {
    max_age: Duration,
    last: Mutex<Option<(Instant, Vec<TypeStatusCount>)>>,
}

impl FinishedCounts {
    pub(crate) fn new(max_age: Duration) -> Self {
        FinishedCounts {
            max_age,
            last: Mutex::new(None),
        }
    }

    /// The counts, read again once the last read is due; callers at the same moment wait
    /// for one read instead of each starting its own.
    async fn get<S: Store + ?Sized>(&self, store: &S) -> Result<Vec<TypeStatusCount>> {
        let mut last = self.last.lock().await;
        if let Some((until, counts)) = &*last
            && Instant::now() < *until
        {
            return Ok(counts.clone());
        }
        let started = Instant::now();
        let counts = store.count_finished_tasks().await?;
        let reuse = (started.elapsed() * REUSE_FOR_TIMES_ITS_COST).min(self.max_age);
        *last = Some((Instant::now() + reuse, counts.clone()));
        Ok(counts)
    }

    /// Drops the counts kept: this process just moved tasks into or out of a finished
    /// status, or deleted some, and its next overview must not count them twice or count
    /// what is gone. (Other processes' changes wait for the counts' age, as documented.)
    pub(crate) async fn forget(&self) {
        *self.last.lock().await = None;
    }
}

impl<S: Store + ?Sized> Ops<S> {
    /// The store's task counts per status as an overview shows them (`/api/status`): the
    /// unfinished counted now, the finished as [`Ops::queue_stats`] reuses them, so a
    /// poller does not read the whole history each time. [`Ops::count_tasks`] counts all
    /// now.
    pub async fn status_counts(&self) -> Result<StatusCounts> {
        let unfinished = self.store.count_unfinished_tasks().await?;
        let finished = self.finished_counts.get(&*self.store).await?;
        let mut counts = StatusCounts::new();
        for c in unfinished.iter().chain(&finished) {
            *counts.entry(c.status).or_default() += c.count;
        }
        Ok(counts)
    }

    /// Tasks per type and status (the finished ones as counted up to
    /// `OpsConfig::finished_counts_max_age` ago: a count is reused for 50 times as long
    /// as it took), the oldest ready task per type, and, with `since`, runs closed per
    /// minute since then.
    pub async fn queue_stats(&self, since: Option<hive_models::Timestamp>) -> Result<QueueStats> {
        let mut stats = self.store.queue_stats(since).await?;
        stats
            .counts
            .extend(self.finished_counts.get(&*self.store).await?);
        stats.counts.sort_by(|a, b| {
            (&a.task_type, a.status.as_str()).cmp(&(&b.task_type, b.status.as_str()))
        });
        Ok(stats)
    }
}
