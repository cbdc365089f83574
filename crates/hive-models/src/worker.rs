//! [`Worker`], a process that claims and runs tasks, and its four statuses.

use serde::{Deserialize, Serialize};

use crate::status::status_enum;
use crate::{Json, TaskId, Timestamp, WorkerId};

status_enum!(
    /// Whether a worker is taking work.
    WorkerStatus, "worker" {
        Active => "active",
        Idle => "idle",
        Offline => "offline",
        Error => "error",
    }
);

/// A registered worker. Liveness comes from `last_heartbeat`, compared on the database clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: WorkerId,
    pub role: String,
    pub status: WorkerStatus,
    pub last_heartbeat: Timestamp,
    pub capabilities: Vec<String>,
    pub current_task_id: Option<TaskId>,
    pub registered_at: Timestamp,
    pub metadata: Json,
    /// Why the worker is in its status, when whoever set the status said: the reason given
    /// when it was marked `error` (`Ops::set_worker_status`), or why the reaper marked it
    /// `offline` ([`Worker::silent_reason`]). Any later status change replaces it.
    #[serde(default)]
    pub status_reason: Option<String>,
}

impl Worker {
    /// The reason the reaper gives a worker it marks `offline`: no heartbeat within the
    /// timeout.
    pub fn silent_reason(heartbeat_timeout: std::time::Duration) -> String {
        let secs = heartbeat_timeout.as_secs_f64();
        format!("no heartbeat for over {secs} s")
    }
}

impl Worker {
    /// Active or idle: the worker says it is taking work (liveness is checked separately).
    pub fn is_active(&self) -> bool {
        matches!(self.status, WorkerStatus::Active | WorkerStatus::Idle)
    }

    /// Taking work and not busy with a task.
    pub fn is_available(&self) -> bool {
        self.is_active() && self.current_task_id.is_none()
    }

    /// Whether the worker's heartbeat is within `timeout` of `now`.
    pub fn is_alive_at(&self, now: Timestamp, timeout: chrono::Duration) -> bool {
        self.is_active() && now - self.last_heartbeat <= timeout
    }

    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    pub fn update_heartbeat(&mut self, now: Timestamp) {
        self.last_heartbeat = now;
    }

    pub fn assign_task(&mut self, task: TaskId) {
        self.current_task_id = Some(task);
        self.status = WorkerStatus::Active;
    }

    pub fn complete_task(&mut self) {
        self.current_task_id = None;
        self.status = WorkerStatus::Idle;
    }

    /// Moves the worker to `status`; `reason` says why (`None` clears an earlier one).
    pub fn set_status(&mut self, status: WorkerStatus, reason: Option<String>) {
        self.status = status;
        self.status_reason = reason;
    }

    /// Marked offline by the reaper, with the reason it gives.
    pub fn mark_offline(&mut self, reason: Option<String>) {
        self.set_status(WorkerStatus::Offline, reason);
        self.current_task_id = None;
    }

    pub fn mark_error(&mut self, reason: Option<String>) {
        self.set_status(WorkerStatus::Error, reason);
    }
}

#[cfg(test)]
mod tests;
