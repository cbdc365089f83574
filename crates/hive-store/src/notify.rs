//! Change notifications: small, id-only messages that wake workers and feed the event bus.

use hive_models::{PlanId, TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What kind of change a [`Notification`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Tasks were inserted (`task_id` set for a single insert, absent for a batch).
    TaskCreated,
    /// A task changed status (`status` holds the new one).
    TaskStatus,
    /// A task that waited on dependencies became claimable, and the transaction that freed
    /// it did not claim it itself ([`crate::Store::finish_and_claim`]).
    TaskReady,
    /// A plan changed status.
    PlanStatus,
    /// A worker registered, went offline or unregistered.
    Worker,
}

/// One change, carrying ids only (Postgres NOTIFY payloads are capped at 8000 bytes);
/// readers fetch rows they need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The [`crate::Store::origin`] of the store instance that made the change.
    pub origin: uuid::Uuid,
    pub kind: ChangeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<PlanId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Notification {
    /// Whether this notification may mean a task is claimable now: new tasks, tasks back in the
    /// queue, dependents freed. Workers wake on these only; a completion alone frees no slot
    /// elsewhere, so waking every worker on it would only cost empty claims.
    pub fn may_be_claimable(&self) -> bool {
        match self.kind {
            ChangeKind::TaskCreated | ChangeKind::TaskReady => true,
            ChangeKind::TaskStatus => self.status.as_deref() == Some("queued"),
            ChangeKind::PlanStatus | ChangeKind::Worker => false,
        }
    }
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
    /// Receivers that fall this far behind skip ahead; notifications are wake-ups only.
    const CAPACITY: usize = 4096;

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

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }

    /// Delivers a notification received from elsewhere (another process) as it is.
    pub fn forward(&self, n: Notification) {
        // No receivers is not an error: nobody is listening yet.
        let _ = self.sender.send(n);
    }

    /// A notification of this store's own, stamped with its origin.
    pub fn make(&self, kind: ChangeKind) -> Notification {
        Notification {
            origin: self.origin,
            kind,
            task_id: None,
            plan_id: None,
            worker_id: None,
            status: None,
        }
    }

    pub fn task_created(&self, task_id: Option<TaskId>) -> Notification {
        Notification {
            task_id,
            ..self.make(ChangeKind::TaskCreated)
        }
    }

    pub fn task_status(&self, task_id: TaskId, status: impl ToString) -> Notification {
        Notification {
            task_id: Some(task_id),
            status: Some(status.to_string()),
            ..self.make(ChangeKind::TaskStatus)
        }
    }

    pub fn task_ready(&self, task_id: TaskId) -> Notification {
        Notification {
            task_id: Some(task_id),
            ..self.make(ChangeKind::TaskReady)
        }
    }

    pub fn plan_status(&self, plan_id: PlanId, status: impl ToString) -> Notification {
        Notification {
            plan_id: Some(plan_id),
            status: Some(status.to_string()),
            ..self.make(ChangeKind::PlanStatus)
        }
    }

    pub fn worker(&self, worker_id: WorkerId, status: impl ToString) -> Notification {
        Notification {
            worker_id: Some(worker_id),
            status: Some(status.to_string()),
            ..self.make(ChangeKind::Worker)
        }
    }

    /// Drops the ready notes of tasks the same transaction went on to claim.
    pub fn drop_claimed_ready(notes: &mut Vec<Notification>, claimed: &[crate::Claim]) {
        if claimed.is_empty() {
            return;
        }
        let claimed: std::collections::HashSet<TaskId> =
            claimed.iter().map(|c| c.task.id).collect();
        notes.retain(|n| {
            !(n.kind == ChangeKind::TaskReady && n.task_id.is_some_and(|t| claimed.contains(&t)))
        });
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
