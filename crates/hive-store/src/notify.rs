//! Change notifications: small typed messages, sent after commit, that wake workers and
//! feed hive-ops' event bus — this process's changes and (on Postgres) other processes'.

use hive_models::{
    PlanId, PlanStatus, RunId, TaskId, TaskStatus, Timestamp, WorkerId, WorkerStatus,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// A failed task's error is carried at most this long (in bytes) in a notification, so a
/// batch of them fits Postgres's NOTIFY payload; the full text is on the task and its run.
pub const NOTE_ERROR_LIMIT: usize = 1000;

/// One committed change. Statuses are the model enums; each change names what a consumer
/// needs without reading rows (the run that moved a task, the plan it belongs to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Tasks were inserted: one (`task_id` set) or a batch of `count`.
    TaskCreated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<TaskId>,
        #[serde(default)]
        count: u64,
    },
    /// A worker claimed a task, opening the run `run_id`.
    TaskClaimed {
        task_id: TaskId,
        run_id: RunId,
        worker_id: WorkerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan_id: Option<PlanId>,
    },
    /// A task moved to a status (in progress is [`Change::TaskClaimed`]).
    TaskStatus(TaskStatusChange),
    /// A task that waited on dependencies became claimable, and the transaction that freed
    /// it did not claim it itself ([`crate::Store::finish_and_claim`]).
    TaskReady { task_id: TaskId },
    /// A plan changed status.
    PlanStatus { plan_id: PlanId, status: PlanStatus },
    /// A running handler said how far it has got.
    Progress {
        task_id: TaskId,
        run_id: RunId,
        fraction: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Another process wrote to the store, in a way this process is not told the details
    /// of (SQLite): re-read what you need. Workers claim on it.
    StoreChanged,
    /// A worker registered (active) or went offline.
    Worker {
        worker_id: WorkerId,
        status: WorkerStatus,
    },
}

/// A task's move to `status`, with what a consumer needs to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusChange {
    pub task_id: TaskId,
    pub status: TaskStatus,
    /// The run whose outcome moved it, when a worker's did; for a cancellation, the
    /// running run it closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<PlanId>,
    /// The error of a failed attempt, or the reason a caller gave for the change (at most
    /// [`NOTE_ERROR_LIMIT`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a task requeued after a failure may be claimed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
}

impl TaskStatusChange {
    /// A move with nothing else to say.
    pub fn new(task_id: TaskId, status: TaskStatus) -> TaskStatusChange {
        TaskStatusChange {
            task_id,
            status,
            run_id: None,
            plan_id: None,
            error: None,
            run_at: None,
        }
    }
}

/// A change and the store instance that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The [`crate::Store::origin`] of the store instance that made the change.
    pub origin: uuid::Uuid,
    #[serde(flatten)]
    pub change: Change,
}

impl Notification {
    /// Whether this notification may mean a task is claimable now: new tasks, tasks back in
    /// the queue, dependents freed. Workers wake on these only; a completion alone frees no
    /// slot elsewhere, so waking every worker on it would only cost empty claims.
    pub fn may_be_claimable(&self) -> bool {
        match &self.change {
            Change::TaskCreated { .. } | Change::TaskReady { .. } | Change::StoreChanged => true,
            Change::TaskStatus(c) => c.status == TaskStatus::Queued,
            Change::TaskClaimed { .. }
            | Change::PlanStatus { .. }
            | Change::Worker { .. }
            | Change::Progress { .. } => false,
        }
    }
}

/// `error`, cut to at most [`NOTE_ERROR_LIMIT`] bytes at a character boundary.
pub fn note_error(error: &str) -> String {
    if error.len() <= NOTE_ERROR_LIMIT {
        return error.to_owned();
    }
    let mut end = NOTE_ERROR_LIMIT - '…'.len_utf8();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}

/// The in-process side of notifications: a broadcast channel plus this store's origin.
#[derive(Debug, Clone)]
pub struct Notifier {
    origin: uuid::Uuid,
    sender: broadcast::Sender<Notification>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Notifier {
    /// Receivers that fall this far behind skip ahead. As deep as hive-ops' event bus, so
    /// its forwarder, which only converts, does not lose what the bus would have kept.
    const CAPACITY: usize = 16_384;

    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(Self::CAPACITY);
        Notifier {
            origin: uuid::Uuid::new_v4(),
            sender,
        }
    }

    pub fn origin(&self) -> uuid::Uuid {
        self.origin
    }

    /// How many receivers listen now.
    pub fn receivers(&self) -> usize {
        self.sender.receiver_count()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }

    /// Delivers a notification received from elsewhere (another process) as it is.
    pub fn forward(&self, n: Notification) {
        // No receivers is not an error: nobody is listening yet.
        let _ = self.sender.send(n);
    }

    /// A change of this store's own, stamped with its origin.
    pub fn note(&self, change: Change) -> Notification {
        Notification {
            origin: self.origin,
            change,
        }
    }

    pub fn task_created(&self, task_id: Option<TaskId>, count: u64) -> Notification {
        self.note(Change::TaskCreated { task_id, count })
    }

    /// What an insert announces: the tasks it created, naming the one when it was given
    /// one task; nothing when every task's idempotency key named a stored task.
    pub fn tasks_inserted(&self, done: &crate::TasksInserted) -> Option<Notification> {
        let single = match done.ids.as_slice() {
            [id] => Some(*id),
            _ => None,
        };
        (done.new_tasks > 0).then(|| self.task_created(single, done.new_tasks))
    }

    pub fn task_status(&self, task_id: TaskId, status: TaskStatus) -> Notification {
        self.note(Change::TaskStatus(TaskStatusChange::new(task_id, status)))
    }

    pub fn task_ready(&self, task_id: TaskId) -> Notification {
        self.note(Change::TaskReady { task_id })
    }

    pub fn plan_status(&self, plan_id: PlanId, status: PlanStatus) -> Notification {
        self.note(Change::PlanStatus { plan_id, status })
    }

    pub fn worker(&self, worker_id: WorkerId, status: WorkerStatus) -> Notification {
        self.note(Change::Worker { worker_id, status })
    }

    /// One claim's notification.
    pub fn task_claimed(&self, claim: &crate::Claim) -> Notification {
        self.note(Change::TaskClaimed {
            task_id: claim.task.id,
            run_id: claim.run.id,
            worker_id: claim.run.worker_id.clone(),
            plan_id: claim.task.plan_id,
        })
    }

    /// Drops the ready notes of tasks the same transaction went on to claim.
    pub fn drop_claimed_ready(notes: &mut Vec<Notification>, claimed: &[crate::Claim]) {
        if claimed.is_empty() {
            return;
        }
        let claimed: std::collections::HashSet<TaskId> =
            claimed.iter().map(|c| c.task.id).collect();
        notes.retain(
            |n| !matches!(&n.change, Change::TaskReady { task_id } if claimed.contains(task_id)),
        );
    }

    /// Sends this store's own notifications in-process.
    pub fn send_all(&self, notes: impl IntoIterator<Item = Notification>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for n in notes {
            let _ = self.sender.send(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_typed_statuses() {
        let n = Notifier::new();
        let notes = [
            n.task_created(Some(TaskId::new()), 1),
            n.note(Change::TaskStatus(TaskStatusChange {
                run_id: Some(RunId::new()),
                plan_id: Some(PlanId::new()),
                error: Some(note_error("boom")),
                ..TaskStatusChange::new(TaskId::new(), TaskStatus::Failed)
            })),
            n.plan_status(PlanId::new(), PlanStatus::Completed),
            n.worker(WorkerId("w".into()), WorkerStatus::Offline),
        ];
        for note in notes {
            let text = serde_json::to_string(&note).unwrap_or_default();
            let back: Notification =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(back, note);
        }
    }

    #[test]
    fn long_errors_are_cut_at_a_character() {
        let long = "é".repeat(NOTE_ERROR_LIMIT);
        let cut = note_error(&long);
        assert!(
            cut.len() <= NOTE_ERROR_LIMIT && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert_eq!(note_error("short"), "short");
    }
}
