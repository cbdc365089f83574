//! The run counters and the duration histogram, fed from the event bus: a claim opens a
//! run; a finish names its run, which is read back (with the runs finished in the same
//! round, in one read) to classify it and time it.

use std::collections::HashMap;

use hive_client::{
    Client, Event, EventOrigin, Published, RunId, TaskId,
    models::{Run, RunStatus, TaskStatus},
};

use crate::{Metrics, Result};

/// The most closed runs read back in one batch.
const CLOSED_PER_READ: usize = 256;

/// Whose runs the run counters and durations count (the gauges, read from the store, are
/// the whole database's either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Counting {
    /// Every run the event bus carries: on Postgres, every process's. For the one process
    /// that watches a whole database (the dashboard, `hive serve`).
    #[default]
    Everywhere,
    /// The runs claimed, finished, given back or reaped through this client's store (the
    /// clients of one `connect` share it; two `connect`s are two stores): for one process
    /// of many (`hive worker run --metrics-bind`). Each run is then counted, and read, by
    /// one process only, so Prometheus adds the instances up (`sum(rate(…))`), and the
    /// store is read once per run, not once per run and process. A stale run counts where
    /// it was reaped, not where it was claimed.
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

/// The one rule that names a closed run's kind: by status (a handler's own error text,
/// "timed out connecting to S3" say, is a failure like any other).
pub(crate) fn classify(run: &Run) -> Closed {
    let error = run.error_message.as_deref().unwrap_or_default();
    match run.status {
        RunStatus::Success => Closed::Completed,
        RunStatus::Timeout if error == Run::LEASE_EXPIRED || error == Run::WORKER_RESTARTED => {
            Closed::Stale
        }
        RunStatus::Timeout => Closed::TimedOut,
        RunStatus::Failure => Closed::Failed,
        _ => Closed::Ignored,
    }
}

impl Metrics {
    /// Subscribes to `client`'s event bus and counts every run it carries
    /// ([`Counting::Everywhere`]) for the life of the process (the count holds a clone of
    /// the client). Counting starts now: runs before it are in the gauges, not in the
    /// counters.
    pub async fn watch(&self, client: Client) -> Result<()> {
        self.watch_with(client, Counting::Everywhere).await
    }

    /// [`Metrics::watch`], counting the runs `counting` says.
    pub async fn watch_with(&self, client: Client, counting: Counting) -> Result<()> {
        let mut events = client.subscribe().await?;
        let metrics = self.clone();
        tokio::spawn(async move {
            let (mut closed, mut missed) = (Vec::new(), 0);
            while let Some(first) = events.recv().await {
                // What is waiting already is taken in the same round, and the runs it
                // closed are read back in one batch: reads follow rounds, not runs.
                let mut next = Some(first);
                while let Some(p) = next {
                    metrics.note(p, counting, &mut closed);
                    next = if closed.len() < CLOSED_PER_READ {
                        events.try_recv()
                    } else {
                        None
                    };
                }
                let skipped = events.skipped();
                metrics.runs.missed.inc_by(skipped.saturating_sub(missed));
                missed = skipped;
                if closed.is_empty() {
                    continue;
                }
                if let Err(e) = metrics.count_closed(&client, &closed).await {
                    // Their counts are lost: said so where a scrape shows it.
                    tracing::warn!("metrics: reading {} closed runs: {e}", closed.len());
                    metrics.runs.missed.inc_by(closed.len() as u64);
                }
                closed.clear();
            }
        });
        Ok(())
    }

    /// Counts what an event says by itself, and keeps the run it closed for the read.
    fn note(&self, p: Published, counting: Counting, closed: &mut Vec<RunId>) {
        if counting == Counting::ThisProcess && p.origin != EventOrigin::Local {
            return;
        }
        match p.event {
            Event::TaskClaimed { .. } => self.runs.started.inc(),
            // Only a give-back requeues a task naming the run, with no wait (a retry or a
            // snooze is `TaskRetried`): counted from the event alone.
            Event::TaskStatusChanged {
                status: TaskStatus::Queued,
                run_id: Some(_),
                ..
            } => self.runs.given_back.inc(),
            Event::TaskCompleted {
                run_id: Some(run), ..
            }
            | Event::TaskFailed {
                run_id: Some(run), ..
            }
            | Event::TaskRetried {
                run_id: Some(run), ..
            } => closed.push(run),
            _ => {}
        }
    }

    /// Reads closed runs and their tasks' types (two reads however many), then counts and
    /// times each. A failed read of the runs is tried again, briefly, before the batch is
    /// given up; without the types the runs are counted, untimed.
    async fn count_closed(&self, client: &Client, ids: &[RunId]) -> Result<()> {
        let mut read = client.get_runs(ids).await;
        for wait_ms in [100, 400] {
            if read.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            read = client.get_runs(ids).await;
        }
        let runs: Vec<(Run, Closed)> = read?
            .into_iter()
            .map(|run| {
                let kind = classify(&run);
                (run, kind)
            })
            .filter(|(_, kind)| *kind != Closed::Ignored)
            .collect();
        let timed: Vec<TaskId> = runs
            .iter()
            .filter(|(run, _)| run.completed_at.is_some())
            .map(|(run, _)| run.task_id)
            .collect();
        let read = match timed.is_empty() {
            true => Ok(Vec::new()),
            false => client.get_tasks(&timed).await,
        };
        let types: HashMap<TaskId, String> = match read {
            Ok(tasks) => tasks.into_iter().map(|t| (t.id, t.task_type)).collect(),
            Err(e) => {
                tracing::debug!("metrics: reading the types of {} tasks: {e}", timed.len());
                HashMap::new()
            }
        };
        for (run, kind) in runs {
            let took = run
                .completed_at
                .zip(types.get(&run.task_id))
                .map(|(end, task_type)| {
                    let secs = (end - run.started_at)
                        .num_microseconds()
                        .unwrap_or(0)
                        .max(0) as f64
                        / 1e6;
                    (task_type.clone(), secs)
                });
            self.count(kind, took);
        }
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
