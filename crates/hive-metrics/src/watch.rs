//! The run counters and the duration histogram, fed from the event bus: a claim opens a
//! run; a finish names its run, which is read once to classify it and time it.

use hive_client::{Client, Event, models::Run, models::RunStatus};

use crate::{Metrics, Result};

/// How a closed run is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    Completed,
    Failed,
    TimedOut,
    Stale,
    /// Cancelled runs (the task was cancelled) are not an outcome of the work.
    Ignored,
}

/// The one rule that names a closed run's kind.
pub(crate) fn classify(run: &Run) -> Closed {
    let error = run.error_message.as_deref().unwrap_or_default();
    match run.status {
        RunStatus::Success => Closed::Completed,
        RunStatus::Timeout if error == Run::LEASE_EXPIRED => Closed::Stale,
        RunStatus::Timeout => Closed::TimedOut,
        RunStatus::Failure if error.starts_with("timed out") => Closed::TimedOut,
        RunStatus::Failure => Closed::Failed,
        _ => Closed::Ignored,
    }
}

impl Metrics {
    /// Subscribes to `client`'s event bus and counts runs until the client is dropped.
    /// Counting starts now: runs before it are in the gauges, not in the counters.
    pub async fn watch(&self, client: Client) -> Result<()> {
        let mut events = client.subscribe().await?;
        let metrics = self.clone();
        tokio::spawn(async move {
            while let Some(p) = events.recv().await {
                let run_id = match p.event {
                    Event::TaskClaimed { .. } => {
                        metrics.runs.started.inc();
                        continue;
                    }
                    Event::TaskCompleted { run_id, .. }
                    | Event::TaskFailed { run_id, .. }
                    | Event::TaskRetried { run_id, .. } => run_id,
                    _ => None,
                };
                let Some(run_id) = run_id else { continue };
                if let Err(e) = metrics.count_closed(&client, run_id).await {
                    tracing::debug!("metrics: reading run {run_id}: {e}");
                }
            }
        });
        Ok(())
    }

    async fn count_closed(&self, client: &Client, run_id: hive_client::RunId) -> Result<()> {
        let Some(run) = client.get_run(run_id).await? else {
            return Ok(());
        };
        let counter = match classify(&run) {
            Closed::Completed => &self.runs.completed,
            Closed::Failed => &self.runs.failed,
            Closed::TimedOut => &self.runs.timed_out,
            Closed::Stale => &self.runs.stale,
            Closed::Ignored => return Ok(()),
        };
        // Both reads come before either number moves, and the histogram moves first, so a
        // scrape that sees the counter sees the run's duration too.
        let task = match run.completed_at {
            Some(_) => client.get_task(run.task_id).await?,
            None => None,
        };
        if let (Some(end), Some(task)) = (run.completed_at, task) {
            let secs = (end - run.started_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            self.runs
                .duration
                .with_label_values(&[task.task_type.as_str()])
                .observe(secs);
        }
        counter.inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
