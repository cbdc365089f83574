//! The run counters and the duration histogram, fed from the event bus: a claim opens a
//! run; a finish names its run, which is read once to classify it and time it.

use hive_client::{
    Client, Event, EventOrigin,
    models::{Run, RunStatus, TaskStatus},
};

use crate::{Metrics, Result};

/// Whose runs the run counters and durations count (the gauges, read from the store, are
/// the whole database's either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counting {
    /// Every run the event bus carries: on Postgres, every process's. For the one process
    /// that watches a whole database (the dashboard, `hive serve`).
    #[default]
    Everywhere,
    /// The runs this process claimed, finished, gave back or reaped: for one process of
    /// many (`hive worker run --metrics-bind`). Each run is then counted, and read, by one
    /// process only, so Prometheus adds the instances up (`sum(rate(…))`), and the store
    /// is read once per run, not once per run and process.
    ThisProcess,
}

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
    /// Subscribes to `client`'s event bus and counts every run it carries
    /// ([`Counting::Everywhere`]) until the client is dropped. Counting starts now: runs
    /// before it are in the gauges, not in the counters.
    pub async fn watch(&self, client: Client) -> Result<()> {
        self.watch_with(client, Counting::Everywhere).await
    }

    /// [`Metrics::watch`], counting the runs `counting` says.
    pub async fn watch_with(&self, client: Client, counting: Counting) -> Result<()> {
        let mut events = client.subscribe().await?;
        let metrics = self.clone();
        tokio::spawn(async move {
            while let Some(p) = events.recv().await {
                if counting == Counting::ThisProcess && p.origin != EventOrigin::Local {
                    continue;
                }
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
