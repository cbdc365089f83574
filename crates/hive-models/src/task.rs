//! [`Task`], its eleven statuses, the transition table, and [`NewTask`] input validation.

use serde::{Deserialize, Serialize};

use crate::status::status_enum;
pub(crate) use crate::storable::non_blank;
pub use crate::storable::{MAX_JSON_DEPTH, check_json_depth, check_json_storable, check_no_nul};
use crate::{Error, Json, PlanId, Result, RunId, TaskId, Timestamp, WorkerId};

/// Payloads larger than this are rejected unless the caller configures another limit.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

status_enum!(
    /// Where a task is in its life. See [`TaskStatus::can_transition_to`] for the legal moves.
    TaskStatus, "task" {
        /// Waiting to be claimed (possibly not before `run_at`, or until its dependencies complete).
        Queued => "queued",
        /// Handed to a worker that has not started it yet.
        Assigned => "assigned",
        /// A worker is running it under a lease.
        InProgress => "in_progress",
        /// Done by the worker, waiting for a review.
        ReviewPending => "review_pending",
        /// The review accepted it.
        Approved => "approved",
        /// The review turned it down.
        Rejected => "rejected",
        /// It must be worked on again.
        ReworkNeeded => "rework_needed",
        /// A human must look at it.
        Escalated => "escalated",
        /// Finished successfully. Terminal.
        Completed => "completed",
        /// Failed for good, retries exhausted. Terminal.
        Failed => "failed",
        /// Cancelled. Terminal.
        Cancelled => "cancelled",
    }
);

impl TaskStatus {
    /// The names of the statuses [`TaskStatus::is_terminal`] calls `finished` (`true`) or
    /// not (`false`), as stored.
    pub fn names_where_finished(finished: bool) -> Vec<&'static str> {
        (Self::ALL.iter())
            .filter(|s| s.is_terminal() == finished)
            .map(|s| s.as_str())
            .collect()
    }

    /// Completed, failed and cancelled tasks never change again except by an explicit requeue.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// A worker holds the task.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Assigned | Self::InProgress)
    }

    /// Failed or cancelled: finished without completing, so what depends on the task would
    /// wait for good until it is requeued.
    pub const fn never_completes(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }

    /// The transition table. Staying in the same status is always allowed (a no-op).
    ///
    /// | from | to |
    /// |---|---|
    /// | queued | assigned, in_progress, failed, cancelled |
    /// | assigned | queued, in_progress, completed, failed, cancelled |
    /// | in_progress | queued, review_pending, rework_needed, escalated, completed, failed, cancelled |
    /// | review_pending | in_progress, approved, rejected, escalated, cancelled |
    /// | approved | in_progress, completed, cancelled |
    /// | rejected | rework_needed, escalated, failed, cancelled |
    /// | rework_needed | queued, in_progress, cancelled |
    /// | escalated | queued, in_progress, review_pending, completed, failed, cancelled |
    /// | completed, failed, cancelled | nothing (only [`TaskStatus::can_requeue`]) |
    pub fn can_transition_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        if self == to {
            return true;
        }
        match self {
            Queued => matches!(to, Assigned | InProgress | Failed | Cancelled),
            Assigned => matches!(to, Queued | InProgress | Completed | Failed | Cancelled),
            InProgress => matches!(
                to,
                Queued | ReviewPending | ReworkNeeded | Escalated | Completed | Failed | Cancelled
            ),
            ReviewPending => matches!(to, InProgress | Approved | Rejected | Escalated | Cancelled),
            Approved => matches!(to, InProgress | Completed | Cancelled),
            Rejected => matches!(to, ReworkNeeded | Escalated | Failed | Cancelled),
            ReworkNeeded => matches!(to, Queued | InProgress | Cancelled),
            Escalated => matches!(
                to,
                Queued | InProgress | ReviewPending | Completed | Failed | Cancelled
            ),
            Completed | Failed | Cancelled => false,
        }
    }

    /// Checks a transition, naming both ends when it is illegal.
    pub fn check_transition(self, to: TaskStatus) -> Result<()> {
        if self.can_transition_to(to) {
            Ok(())
        } else {
            Err(Error::IllegalTransition {
                kind: "task",
                from: self.as_str().into(),
                to: to.as_str().into(),
            })
        }
    }

    /// An explicit requeue may bring back any task that no worker holds.
    pub const fn can_requeue(self) -> bool {
        !self.is_active()
    }

    /// Whether an operator's retry moves a task in this status: one no worker holds that
    /// is not in the queue already (a retry of a queued task would change nothing, and one
    /// of a running task would take it from its worker).
    pub const fn can_retry(self) -> bool {
        self.can_requeue() && !matches!(self, Self::Queued)
    }

    /// [`TaskStatus::can_requeue`], saying why a status is refused: checked where the
    /// requeue is applied, so a task claimed since the caller looked is not taken from its
    /// worker.
    pub fn check_requeue(self) -> Result<()> {
        if self.can_requeue() {
            return Ok(());
        }
        Err(Error::InvalidField {
            field: "status".into(),
            reason: format!(
                "`{self}` tasks cannot be requeued: a worker holds them (cancel the task \
                 first, or let it finish)"
            ),
        })
    }

    /// [`TaskStatus::can_retry`], saying why a status is refused.
    pub fn check_retry(self) -> Result<()> {
        let why = match self {
            Self::Queued => "they are in the queue already",
            Self::Assigned | Self::InProgress => {
                "a worker holds them (cancel the task first, or let it finish)"
            }
            _ => return Ok(()),
        };
        Err(Error::InvalidField {
            field: "status".into(),
            reason: format!("`{self}` tasks cannot be retried: {why}"),
        })
    }
}

/// Why a queued task is not ready: see [`Task::blocker_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// This many of its dependencies have not completed.
    Dependencies(u32),
    /// Its start time (`run_at`: a delay, a schedule or a retry's backoff) is still ahead.
    StartTime(Timestamp),
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::Dependencies(n) => write!(f, "{n} dep{}", if *n == 1 { "" } else { "s" }),
            Blocker::StartTime(at) => write!(f, "until {}", at.format("%Y-%m-%d %H:%M:%S")),
        }
    }
}

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub title: String,
    pub description: String,
    pub task_type: String,
    /// Higher runs first.
    pub priority: i32,
    pub status: TaskStatus,
    pub current_phase: String,
    pub workflow: Option<Json>,
    pub payload: Json,
    pub assigned_worker: Option<WorkerId>,
    pub due_date: Option<Timestamp>,
    /// Failed runs retried at most this many times: a task runs at most `max_retries + 1` times.
    pub max_retries: u32,
    /// Its own backoff between retries (`None`: the worker's policy).
    pub retry_policy: Option<crate::RetryPolicy>,
    pub parent_task_id: Option<TaskId>,
    pub plan_id: Option<PlanId>,
    /// The subtask id this task was created from, when it belongs to a plan.
    pub plan_subtask_id: Option<String>,
    /// Tasks that must complete before this one may be claimed.
    pub dependencies: Vec<TaskId>,
    /// How many of `dependencies` have not completed yet.
    pub pending_dependencies: u32,
    pub tags: Vec<String>,
    pub metadata: Json,
    /// Not claimable before this time (delayed tasks and retry backoff).
    pub run_at: Option<Timestamp>,
    /// A run may last this long before the worker stops it (`None`: the worker's default).
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// Once its dependencies completed (at creation for a task without any), the task waits
    /// this long before it can be claimed.
    #[serde(default)]
    pub delay_secs: u64,
    /// Runs counted against `max_retries` (released runs do not count).
    pub attempts: u32,
    /// The run currently allowed to finish this task; any other run is stale.
    pub current_run_id: Option<RunId>,
    pub idempotency_key: Option<String>,
    /// Tasks sharing a key run at most `concurrency_limit` at once across all workers.
    pub concurrency_key: Option<String>,
    /// The limit for `concurrency_key` (1 when it carries a key; a stored rule for the key
    /// takes precedence).
    pub concurrency_limit: Option<u32>,
    pub result: Option<Json>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Task {
    /// The error that explains the task's state now: its last error, unless it completed
    /// since (a retry that succeeded leaves `last_error` as history, not as a fault).
    pub fn current_error(&self) -> Option<&str> {
        (self.status != TaskStatus::Completed)
            .then_some(self.last_error.as_deref())
            .flatten()
    }

    /// The key this task's output has among a dependent's inputs: its plan subtask id, or
    /// its task id when it belongs to no plan.
    pub fn output_key(&self) -> String {
        self.plan_subtask_id
            .clone()
            .unwrap_or_else(|| self.id.to_string())
    }

    /// Builds a queued task from validated input, as a backend does on insert.
    pub fn from_new(id: TaskId, new: NewTask, now: Timestamp) -> Task {
        let max_retries = new.retries();
        Task {
            id,
            title: new.title,
            description: new.description,
            task_type: new.task_type,
            priority: new.priority,
            status: TaskStatus::Queued,
            current_phase: new.current_phase,
            workflow: new.workflow,
            payload: new.payload,
            assigned_worker: None,
            due_date: new.due_date,
            max_retries,
            retry_policy: new.retry_policy,
            parent_task_id: new.parent_task_id,
            plan_id: None,
            plan_subtask_id: None,
            dependencies: Vec::new(),
            pending_dependencies: 0,
            tags: new.tags,
            metadata: new.metadata,
            run_at: new.run_at,
            timeout_secs: new.timeout_secs,
            delay_secs: new.delay_secs,
            attempts: 0,
            current_run_id: None,
            idempotency_key: new.idempotency_key,
            concurrency_limit: new
                .concurrency_key
                .as_ref()
                .map(|_| new.concurrency_limit.unwrap_or(1)),
            concurrency_key: new.concurrency_key,
            result: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Queued, with every dependency completed and `run_at` (if any) reached at `now`.
    pub fn is_ready_at(&self, now: Timestamp) -> bool {
        self.status == TaskStatus::Queued
            && self.pending_dependencies == 0
            && self.run_at.is_none_or(|t| t <= now)
    }

    /// Since when a ready task has waited to be claimed: its start time or its last change
    /// (the countdown that freed it, a retry, a requeue), whichever is later. Counted from
    /// creation instead, a plan's subtask freed a minute ago would look as old as its
    /// plan, and a retried task as old as its first attempt. An operator's edit to a queued
    /// task (its priority, say) counts as a change too.
    pub fn ready_since(&self) -> Timestamp {
        self.run_at
            .map_or(self.updated_at, |at| at.max(self.updated_at))
    }

    /// What the task itself says keeps it from being claimed at `now`: None when it is not
    /// queued, or is ready (a paused queue or a limit may still hold a ready task).
    pub fn blocker_at(&self, now: Timestamp) -> Option<Blocker> {
        if self.status != TaskStatus::Queued || self.is_ready_at(now) {
            return None;
        }
        if self.pending_dependencies > 0 {
            return Some(Blocker::Dependencies(self.pending_dependencies));
        }
        self.run_at.map(Blocker::StartTime)
    }

    /// [`Task::is_ready_at`] with the local clock (stores use the database clock instead).
    pub fn is_ready(&self) -> bool {
        self.is_ready_at(chrono::Utc::now())
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    pub fn is_active(&self) -> bool {
        self.status.is_active()
    }

    fn transition(&mut self, to: TaskStatus, now: Timestamp) -> Result<()> {
        self.status.check_transition(to)?;
        self.status = to;
        self.updated_at = now;
        Ok(())
    }

    pub fn assign_to_worker(&mut self, worker: WorkerId, now: Timestamp) -> Result<()> {
        self.transition(TaskStatus::Assigned, now)?;
        self.assigned_worker = Some(worker);
        Ok(())
    }

    pub fn start_execution(&mut self, now: Timestamp) -> Result<()> {
        self.transition(TaskStatus::InProgress, now)
    }

    pub fn complete(&mut self, result: Option<Json>, now: Timestamp) -> Result<()> {
        self.transition(TaskStatus::Completed, now)?;
        self.result = result;
        Ok(())
    }

    pub fn fail(&mut self, error: impl Into<String>, now: Timestamp) -> Result<()> {
        self.transition(TaskStatus::Failed, now)?;
        self.last_error = Some(error.into());
        Ok(())
    }

    /// Cancels the task, keeping the reason given as its `last_error`.
    pub fn cancel(&mut self, reason: Option<String>, now: Timestamp) -> Result<()> {
        self.transition(TaskStatus::Cancelled, now)?;
        if reason.is_some() {
            self.last_error = reason;
        }
        Ok(())
    }
}

/// Merges a JSON object's top-level keys into `target`, replacing the keys it has; a
/// target or patch that is not an object is replaced by the patch. How a status change's
/// metadata joins a task's.
pub fn merge_metadata(target: &mut Json, patch: &Json) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                t.insert(k.clone(), v.clone());
            }
        }
        _ => *target = patch.clone(),
    }
}

/// What a caller supplies to create a task; everything else has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewTask {
    pub title: String,
    pub task_type: String,
    pub description: String,
    pub priority: i32,
    pub payload: Json,
    /// Failed runs retried at most this many times (`None`: the task type's setting, else
    /// [`DEFAULT_MAX_RETRIES`]).
    pub max_retries: Option<u32>,
    /// Backoff between retries (`None`: the task type's policy, else the worker's).
    pub retry_policy: Option<crate::RetryPolicy>,
    pub current_phase: String,
    pub workflow: Option<Json>,
    pub due_date: Option<Timestamp>,
    pub parent_task_id: Option<TaskId>,
    pub tags: Vec<String>,
    pub metadata: Json,
    /// Not claimable before this time.
    pub run_at: Option<Timestamp>,
    /// A repeated create with the same key returns the first task's id instead of a new task.
    pub idempotency_key: Option<String>,
    /// A run may last this long before the worker stops it (`None`: the worker's default).
    pub timeout_secs: Option<u32>,
    /// Once its dependencies completed (at creation for a task without any), the task waits
    /// this long before it can be claimed.
    pub delay_secs: u64,
    /// Tasks sharing this key run at most `concurrency_limit` at once across all workers
    /// (for example one account's jobs, strictly one after another).
    pub concurrency_key: Option<String>,
    /// How many tasks of `concurrency_key` may run at once (default 1).
    pub concurrency_limit: Option<u32>,
}

impl Default for NewTask {
    fn default() -> Self {
        NewTask {
            title: String::new(),
            task_type: String::new(),
            description: String::new(),
            priority: 1,
            payload: Json::Object(Default::default()),
            max_retries: None,
            retry_policy: None,
            current_phase: "start".into(),
            workflow: None,
            due_date: None,
            parent_task_id: None,
            tags: Vec::new(),
            metadata: Json::Object(Default::default()),
            run_at: None,
            idempotency_key: None,
            timeout_secs: None,
            delay_secs: 0,
            concurrency_key: None,
            concurrency_limit: None,
        }
    }
}

impl NewTask {
    pub fn new(title: impl Into<String>, task_type: impl Into<String>) -> Self {
        NewTask {
            title: title.into(),
            task_type: task_type.into(),
            ..Default::default()
        }
    }

    crate::setters! {
        description: impl Into<String> => into,
        payload: Json,
        priority: i32,
        /// Failed runs retried at most this many times.
        max_retries: u32 => Some,
        /// Backoff between retries, for this task alone.
        retry_policy: crate::RetryPolicy => Some,
        /// Not claimable before this time.
        run_at: Timestamp => Some,
        /// Creating a task with a key that exists returns the existing task's id.
        idempotency_key: impl Into<String> => some_into,
        metadata: Json,
        /// A run may last this long before the worker stops it.
        timeout_secs: u32 => Some,
        /// Once its dependencies completed (at creation for a task without any), wait this
        /// long before the task can be claimed.
        delay_secs: u64,
        /// Tasks sharing this key run at most `concurrency_limit` (default 1) at once.
        concurrency_key: impl Into<String> => some_into,
        /// How many tasks of the concurrency key may run at once.
        concurrency_limit: u32 => Some,
    }

    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// When the task, created at `now`, may first be claimed: its `run_at`, pushed back by its
    /// start delay unless it `waits` for dependencies (the delay then runs from when they
    /// complete, see [`delayed_until`]).
    pub fn claimable_from(&self, now: Timestamp, waits: bool) -> Option<Timestamp> {
        if waits || self.delay_secs == 0 {
            return self.run_at;
        }
        let delayed = delayed_until(now, self.delay_secs);
        Some(self.run_at.map_or(delayed, |at| at.max(delayed)))
    }

    /// Rejects input no backend should store, before any database call.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        non_blank("title", &self.title)?;
        crate::check_scope_name("task_type", &self.task_type)?;
        check_max_retries(self.max_retries)?;
        if let Some(p) = &self.retry_policy {
            p.validate("retry_policy")?;
        }
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key)?;
        }
        check_timing(self.timeout_secs, self.delay_secs)?;
        crate::check_concurrency(self.concurrency_key.as_deref(), self.concurrency_limit)?;
        check_no_nul("description", &self.description)?;
        check_no_nul("current_phase", &self.current_phase)?;
        for (i, tag) in self.tags.iter().enumerate() {
            check_no_nul(&format!("tags[{i}]"), tag)?;
        }
        check_json_storable("payload", &self.payload)?;
        check_json_storable("metadata", &self.metadata)?;
        if let Some(workflow) = &self.workflow {
            check_json_storable("workflow", workflow)?;
        }
        for (field, at) in [("run_at", self.run_at), ("due_date", self.due_date)] {
            check_timestamp(field, at)?;
        }
        // Every list and claim carries them: each bounded as the payload is.
        let text = |s: &str| Json::String(s.to_owned());
        let tags = Json::from(self.tags.clone());
        for (field, value) in [
            ("title", &text(&self.title)),
            ("description", &text(&self.description)),
            ("tags", &tags),
            ("metadata", &self.metadata),
            ("workflow", self.workflow.as_ref().unwrap_or(&Json::Null)),
        ] {
            check_field_size(field, value, max_payload_bytes)?;
        }
        check_payload_size(&self.payload, max_payload_bytes)
    }
}

/// Retries a task runs with when neither it nor its type sets any.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// Refuses more retries than any task may have.
pub fn check_max_retries(max_retries: Option<u32>) -> Result<()> {
    match max_retries {
        Some(n) if n > 1000 => Err(Error::InvalidField {
            field: "max_retries".into(),
            reason: format!("{n} is over the maximum of 1000"),
        }),
        _ => Ok(()),
    }
}

impl NewTask {
    /// The retries this task runs with.
    pub fn retries(&self) -> u32 {
        self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
    }

    /// Fills what this task leaves unset from its type's retry defaults.
    pub fn with_type_retry(mut self, defaults: &crate::TypeRetry) -> NewTask {
        self.max_retries = self.max_retries.or(defaults.max_retries);
        self.retry_policy = self.retry_policy.or(defaults.policy);
        self
    }
}

/// The end of a start delay of `delay_secs` that begins at `from`.
pub fn delayed_until(from: Timestamp, delay_secs: u64) -> Timestamp {
    let secs = i64::try_from(delay_secs.min(MAX_DELAY_SECS)).unwrap_or(i64::MAX);
    from + chrono::Duration::seconds(secs)
}

/// The longest start delay a task may ask for: a year.
pub const MAX_DELAY_SECS: u64 = 366 * 24 * 3600;

/// The longest idempotency key, in bytes: a key is looked up by an index, and Postgres
/// refuses an index entry over about 2.7 KB (a hash or an id is far shorter).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// Refuses a blank or overlong idempotency key.
pub fn check_idempotency_key(key: &str) -> Result<()> {
    non_blank("idempotency_key", key)?;
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(Error::InvalidField {
            field: "idempotency_key".into(),
            reason: format!(
                "is {} bytes, over the limit of {MAX_IDEMPOTENCY_KEY_BYTES}",
                key.len()
            ),
        });
    }
    Ok(())
}

/// The longest timeout: what every backend stores as is (Postgres keeps it in 32 bits).
pub const MAX_TIMEOUT_SECS: u32 = i32::MAX as u32;

/// A timeout of at least a second and at most [`MAX_TIMEOUT_SECS`], a start delay of at
/// most [`MAX_DELAY_SECS`].
pub(crate) fn check_timing(timeout_secs: Option<u32>, delay_secs: u64) -> Result<()> {
    if timeout_secs == Some(0) {
        return Err(Error::InvalidField {
            field: "timeout_secs".into(),
            reason: "must be at least 1 second".into(),
        });
    }
    if let Some(t) = timeout_secs.filter(|t| *t > MAX_TIMEOUT_SECS) {
        return Err(Error::InvalidField {
            field: "timeout_secs".into(),
            reason: format!("{t} is over the maximum of {MAX_TIMEOUT_SECS}"),
        });
    }
    if delay_secs > MAX_DELAY_SECS {
        return Err(Error::InvalidField {
            field: "delay_secs".into(),
            reason: format!("{delay_secs} is over the maximum of {MAX_DELAY_SECS} (a year)"),
        });
    }
    Ok(())
}

/// Checks a handler's output against the size limit; the error names `owner` (a subtask
/// or task), so an operator knows which step produced too much.
/// Also refuses an output nested deeper than [`MAX_JSON_DEPTH`].
pub fn check_output_size(owner: &str, output: &Json, limit: usize) -> Result<()> {
    check_json_depth(&format!("the output of {owner}"), output)?;
    match check_payload_size(output, limit) {
        Err(Error::PayloadTooLarge { size, limit }) => Err(Error::OutputTooLarge {
            owner: owner.to_owned(),
            size,
            limit,
        }),
        other => other,
    }
}

impl Task {
    /// How errors name this task: `subtask `x` of plan P`, or `task T`.
    pub fn describe(&self) -> String {
        match (&self.plan_subtask_id, self.plan_id) {
            (Some(s), Some(p)) => format!("subtask `{}` of plan {p}", s.escape_debug()),
            _ => format!("task {}", self.id),
        }
    }
}

/// Refuses a time every backend cannot store alike (Postgres' range ends in 4713 BC):
/// years 1 to 9999.
pub fn check_timestamp(field: &str, at: Option<Timestamp>) -> Result<()> {
    use chrono::Datelike;
    match at {
        Some(t) if !(1..=9999).contains(&t.year()) => Err(Error::InvalidField {
            field: field.into(),
            reason: format!("{t} is outside the years 1 to 9999"),
        }),
        _ => Ok(()),
    }
}

/// Refuses `value` of `field` when its JSON is over `limit` bytes.
fn check_field_size(field: &str, value: &Json, limit: usize) -> Result<()> {
    match check_payload_size(value, limit) {
        Err(Error::PayloadTooLarge { size, limit }) => Err(Error::InvalidField {
            field: field.into(),
            reason: format!("is {size} bytes, over the limit of {limit}"),
        }),
        other => other,
    }
}

pub(crate) fn check_payload_size(payload: &Json, limit: usize) -> Result<()> {
    // Serialising is the only exact measure of what the backend will store.
    let size = serde_json::to_vec(payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(Error::PayloadTooLarge { size, limit });
    }
    Ok(())
}

mod deletable;
pub use deletable::DependentsLeft;

#[cfg(test)]
mod tests;
