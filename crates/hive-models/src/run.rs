//! [`Run`], one execution attempt of a task, and its six statuses.

use serde::{Deserialize, Serialize};

use crate::status::status_enum;
use crate::{Json, RunId, TaskId, Timestamp, WorkerId};

status_enum!(
    /// The outcome of one attempt.
    RunStatus, "run" {
        Pending => "pending",
        Running => "running",
        Success => "success",
        Failure => "failure",
        /// The lease expired or the worker stopped heartbeating; the reaper closed the run.
        Timeout => "timeout",
        Cancelled => "cancelled",
    }
);

impl RunStatus {
    /// The status a running run closes with when its task leaves an active status for
    /// `to` without the worker finishing it: success when the task completed (or went on
    /// to review), failure when it failed, cancelled otherwise. Its worker's late finish
    /// is then stale.
    pub const fn on_task_leaving_for(to: crate::TaskStatus) -> RunStatus {
        use crate::TaskStatus;
        match to {
            TaskStatus::Completed | TaskStatus::ReviewPending | TaskStatus::Approved => {
                RunStatus::Success
            }
            TaskStatus::Failed => RunStatus::Failure,
            _ => RunStatus::Cancelled,
        }
    }

    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failure | Self::Timeout | Self::Cancelled
        )
    }
}

/// One execution attempt of a task by a worker. Its id is the lease token the worker
/// must present to finish the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub task_id: TaskId,
    pub worker_id: WorkerId,
    /// 1 for the first attempt, then 2, 3, …
    pub run_number: u32,
    pub status: RunStatus,
    pub phase: String,
    /// When the run's handler started: while it runs, its claim's time; once closed, later
    /// by however long the claim waited at its worker for a free handler (a prefetched
    /// claim), as the worker reported it, so `completed_at - started_at` is the handler's
    /// time.
    pub started_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    /// While running: the time after which the reaper may take the task back.
    pub lease_expires_at: Option<Timestamp>,
    pub result_data: Option<Json>,
    pub error_message: Option<String>,
    pub output_log: Option<String>,
    pub transcript: Option<String>,
    /// When the run was opened: by its claim, so this is `started_at` until a closed run's
    /// start moves past a wait for a handler (the original package's `created_at`, kept for
    /// its users).
    pub created_at: Timestamp,
    /// When the run last changed: opened, its lease extended (by a heartbeat or
    /// `extend_lease`), or closed.
    pub updated_at: Timestamp,
    /// How far the handler said it had got, last (see [`Progress`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// How far a running handler says it has got: a fraction of its work, a message, and when
/// it said so (the store's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// From 0 (nothing done) to 1 (all done).
    pub fraction: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub at: Timestamp,
}

impl Progress {
    /// The longest progress message kept, in bytes.
    pub const MAX_MESSAGE_BYTES: usize = 1000;

    /// Refuses a fraction outside `[0, 1]` (or not a number) and a message that is too long
    /// or holds a NUL character.
    pub fn check(fraction: f64, message: Option<&str>) -> crate::Result<()> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(crate::Error::InvalidField {
                field: "progress".into(),
                reason: format!("{fraction} is not a fraction from 0 to 1"),
            });
        }
        if let Some(m) = message {
            crate::check_no_nul("progress message", m)?;
            if m.len() > Self::MAX_MESSAGE_BYTES {
                return Err(crate::Error::InvalidField {
                    field: "progress message".into(),
                    reason: format!(
                        "{} bytes is over the limit of {}",
                        m.len(),
                        Self::MAX_MESSAGE_BYTES
                    ),
                });
            }
        }
        Ok(())
    }

    /// `42%`, or `42% copying files`: as tables show it.
    pub fn display(&self) -> String {
        let pct = format!("{:.0}%", self.fraction * 100.0);
        match &self.message {
            Some(m) if !m.is_empty() => format!("{pct} {m}"),
            _ => pct,
        }
    }
}

impl Run {
    /// The run a claim opens for `task`: `running` from `started_at`, under a lease.
    pub fn claimed(
        id: RunId,
        task: &crate::Task,
        worker_id: WorkerId,
        run_number: u32,
        started_at: Timestamp,
        lease_expires_at: Option<Timestamp>,
    ) -> Run {
        Run {
            id,
            task_id: task.id,
            worker_id,
            run_number,
            status: RunStatus::Running,
            phase: task.current_phase.clone(),
            started_at,
            completed_at: None,
            lease_expires_at,
            result_data: None,
            error_message: None,
            output_log: None,
            transcript: None,
            created_at: started_at,
            updated_at: started_at,
            progress: None,
        }
    }

    /// The error a run closed by the reaper carries: its worker stopped renewing the lease.
    pub const LEASE_EXPIRED: &'static str = "timed out: no heartbeat from its worker before \
        the lease ran out (the worker stopped, hung or lost the database), so the task was \
        taken back";

    /// The error a run carries when its worker, started again under the same id, ended it
    /// as it registered: the process that claimed it is gone (or replaced).
    pub const WORKER_RESTARTED: &'static str = "timed out: its worker was started again \
        under the same id while this run was held, so the process that claimed it is gone \
        or replaced";

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    pub fn is_running(&self) -> bool {
        self.status == RunStatus::Running
    }

    pub fn start(&mut self, now: Timestamp) {
        self.status = RunStatus::Running;
        self.started_at = now;
        self.updated_at = now;
    }

    fn finish(&mut self, status: RunStatus, now: Timestamp) {
        self.status = status;
        self.completed_at = Some(now);
        self.lease_expires_at = None;
        self.updated_at = now;
    }

    pub fn succeed(&mut self, result: Option<Json>, now: Timestamp) {
        self.result_data = result;
        self.finish(RunStatus::Success, now);
    }

    pub fn fail(&mut self, error: impl Into<String>, now: Timestamp) {
        self.error_message = Some(error.into());
        self.finish(RunStatus::Failure, now);
    }

    /// Closes the run as the reaper does when its lease ran out ([`Run::LEASE_EXPIRED`]).
    pub fn timeout(&mut self, now: Timestamp) {
        self.error_message = Some(Self::LEASE_EXPIRED.into());
        self.finish(RunStatus::Timeout, now);
    }

    /// Closes the run as cancelled, keeping the reason given as its error message.
    pub fn cancel(&mut self, reason: Option<String>, now: Timestamp) {
        if reason.is_some() {
            self.error_message = reason;
        }
        self.finish(RunStatus::Cancelled, now);
    }

    /// How long the run took, once it has finished.
    pub fn duration(&self) -> Option<chrono::Duration> {
        self.completed_at.map(|end| end - self.started_at)
    }
}

#[cfg(test)]
mod tests;
