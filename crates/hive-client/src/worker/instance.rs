//! One process per worker id. Worker ids are names an app or operator picks, so two
//! processes may be started with the same one (two replicas of an app that hard-codes it).
//! Each would then give back, as claims it never heard of, the runs the other holds, and
//! stop the other's handlers. Each runtime registers with an instance mark of its own in
//! the worker's metadata (`"instance"`); one that finds another mark stored stops with
//! [`crate::Error::WorkerIdTaken`], leaving the worker's row to the newer process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hive_models::{IdMap, TaskId, Worker, WorkerId, WorkerStatus};
use hive_store::{Finished, Outcome, RunOutcome};

use crate::Client;

/// The metadata key of a runtime's instance mark.
pub(super) const KEY: &str = "instance";

/// This runtime's mark, and whether another process has taken its worker id since.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    mark: String,
    replaced: Arc<AtomicBool>,
}

impl Instance {
    pub(super) fn new() -> Instance {
        Instance {
            mark: uuid::Uuid::new_v4().to_string(),
            replaced: Arc::default(),
        }
    }

    pub(super) fn mark(&self) -> &str {
        &self.mark
    }

    /// The pid of the process that registered the worker id with another mark since this
    /// one did; None while the row is this runtime's, names no mark (registered by other
    /// code) or is gone (the heartbeat registers it again).
    pub(super) async fn taken_by(
        &self,
        client: &Client,
        id: &WorkerId,
    ) -> hive_ops::Result<Option<String>> {
        let Some(stored) = client.get_worker(id.as_str()).await? else {
            return Ok(None);
        };
        Ok(other_process(&stored, &self.mark))
    }

    /// Before registering: says so when the id belongs to a process that beat recently,
    /// which this registration will stop (a restart after a crash finds a silent one).
    pub(super) async fn warn_if_taken(
        &self,
        client: &Client,
        id: &WorkerId,
    ) -> hive_ops::Result<()> {
        let Some(stored) = client.get_worker(id.as_str()).await? else {
            return Ok(());
        };
        let Some(pid) = other_process(&stored, &self.mark) else {
            return Ok(());
        };
        let silent = (client.store().now().await? - stored.last_heartbeat)
            .to_std()
            .unwrap_or_default();
        if stored.status != WorkerStatus::Offline && silent < client.config().heartbeat_timeout {
            tracing::warn!(
                worker = %id,
                "worker id `{id}` belongs to another process (pid {pid}) that beat {:.1}s ago: \
                 if it still runs, it stops now; two processes must not share a worker id",
                silent.as_secs_f64()
            );
        }
        Ok(())
    }

    /// Ends the runs the store has this worker id holding as this runtime registers: an
    /// earlier process under the id claimed them, one that died (a restart under a fixed
    /// id, such as pid 1 in a container) or that this registration replaces. Each ends
    /// `timeout`, its attempt counted, as the reaper would end it once its lease lapsed:
    /// given back uncounted (as a claim whose reply was lost is), a task that kills its
    /// worker's process would crash it again on every restart and never reach
    /// `max_retries`. Returns how many runs ended here.
    pub(super) async fn end_inherited_runs(
        &self,
        client: &Client,
        id: &WorkerId,
    ) -> hive_ops::Result<usize> {
        let runs = client.running_runs(id).await?;
        if runs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<TaskId> = runs.iter().map(|r| r.task_id).collect();
        let types: IdMap<TaskId, String> = client
            .get_tasks(&ids)
            .await?
            .into_iter()
            .map(|t| (t.id, t.task_type))
            .collect();
        let outcomes = runs
            .iter()
            .map(|run| RunOutcome {
                run_id: run.id,
                outcome: Outcome::TimedOut {
                    error: hive_models::Run::WORKER_RESTARTED.to_owned(),
                    retry: types
                        .get(&run.task_id)
                        .map(|t| client.config().retry_for(t)),
                },
                output_log: None,
                waited: std::time::Duration::ZERO,
            })
            .collect();
        let ended = client
            .finish_runs(outcomes)
            .await?
            .iter()
            .filter(|r| r.finished != Finished::Stale)
            .count();
        if ended > 0 {
            tracing::warn!(
                worker = %id,
                ended,
                "runs an earlier process under this worker id held ended as timed out \
                 (their attempts count; the tasks retry while they have retries left)"
            );
        }
        Ok(ended)
    }

    pub(super) fn set_replaced(&self) {
        self.replaced.store(true, Ordering::SeqCst);
    }

    /// Whether another process took the worker id: the row is its, not to unregister.
    pub(super) fn replaced(&self) -> bool {
        self.replaced.load(Ordering::SeqCst)
    }
}

/// The pid (or "unknown") of the runtime whose mark `stored` holds, when that is not `mine`.
fn other_process(stored: &Worker, mine: &str) -> Option<String> {
    let theirs = stored.metadata.get(KEY)?.as_str()?;
    if theirs == mine {
        return None;
    }
    let pid = stored.metadata.get("pid");
    Some(pid.map_or_else(|| "unknown".to_owned(), ToString::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_mark_names_the_other_process() {
        let mut w = Worker {
            id: WorkerId::parse("w").unwrap(),
            role: "r".into(),
            status: WorkerStatus::Active,
            last_heartbeat: chrono::Utc::now(),
            capabilities: vec![],
            current_task_id: None,
            registered_at: chrono::Utc::now(),
            metadata: serde_json::json!({"pid": 42, "instance": "theirs"}),
            status_reason: None,
        };
        assert_eq!(other_process(&w, "mine"), Some("42".into()));
        assert_eq!(other_process(&w, "theirs"), None);
        w.metadata = serde_json::json!({"pid": 42});
        assert_eq!(other_process(&w, "mine"), None, "registered by other code");
    }
}
