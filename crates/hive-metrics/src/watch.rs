//! The run counters and the duration histogram, fed from the event bus: a claim opens a
//! run; a finish names its run, which is read once to classify it and time it.

use hive_client::{
    Client, Event,
    models::{Run, RunStatus, TaskStatus},
};

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
                    // Only a give-back requeues a task naming the run, with no wait (a
                    // retry or a snooze is `TaskRetried`): counted from the event alone.
                    Event::TaskStatusChanged {
                        status: TaskStatus::Queued,
                        run_id: Some(_),
                        ..
                    } => {
                        metrics.runs.given_back.inc();
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
        let kind = classify(&run);
        if kind == Closed::Ignored {
            return Ok(());
        }
        let task = match run.completed_at {
            Some(_) => client.get_task(run.task_id).await?,
            None => None,
        };
        let took = run.completed_at.zip(task).map(|(end, task)| {
            let secs = (end - run.started_at)
                .num_microseconds()
                .unwrap_or(0)
                .max(0) as f64
                / 1e6;
            (task.task_type, secs)
        });
        self.count(kind, took);
        Ok(())
    }

    /// Moves a closed run's histogram (when its duration and type are known) and its
    /// counter together: a scrape that sees the one sees the other.
    pub(crate) fn count(&self, kind: Closed, took: Option<(String, f64)>) {
        let counter = match kind {
            Closed::Completed => &self.runs.completed,
            Closed::Failed => &self.runs.failed,
            Closed::TimedOut => &self.runs.timed_out,
            Closed::Stale => &self.runs.stale,
            Closed::Ignored => return,
        };
        let _together = self.counting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((task_type, secs)) = took {
            self.runs
                .duration
                .with_label_values(&[task_type.as_str()])
                .observe(secs);
        }
        counter.inc();
    }
}

#[cfg(test)]
mod tests;
