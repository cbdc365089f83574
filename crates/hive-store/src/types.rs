//! Parameter and report types of the [`crate::Store`] methods.

use std::time::Duration;

use hive_models::{
    Json, PlanId, PlanStatus, RetryPolicy, Run, RunId, Task, TaskId, TaskStatus, Timestamp,
    WorkerId, WorkerStatus,
};
use serde::{Deserialize, Serialize};

/// Which backend a store is; tests branch on it for real differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether the store delivers other processes' changes as notifications (Postgres's
    /// LISTEN/NOTIFY); elsewhere a process learns of them only by reading.
    pub const fn announces_other_processes(self) -> bool {
        matches!(self, Backend::Postgres)
    }

    /// Whether every write transaction queues for one connection and runs there as a
    /// series of statements (SQLite): a second transaction in flight waits out the whole
    /// first one. (Postgres runs them side by side; the memory store's are each one short
    /// critical section.)
    pub const fn queues_writes(self) -> bool {
        matches!(self, Backend::Sqlite)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tasks [`crate::Store::list_tasks`] returns. Results are always in queue order:
/// priority descending, then oldest first (insertion order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub task_type: Option<String>,
    pub plan_id: Option<PlanId>,
    /// Only tasks claimable now: queued, all dependencies completed, `run_at` reached
    /// (on the database clock).
    pub ready_only: bool,
    /// Only tasks last changed (`updated_at`) at or before this time: a bulk change pages
    /// through the tasks as they stood when it began, and never meets a task it changed.
    pub updated_not_after: Option<Timestamp>,
    /// Only the tasks that depend on this one (its dependents).
    pub depending_on: Option<TaskId>,
    /// At most this many rows (`None`: all).
    pub limit: Option<u32>,
}

impl TaskFilter {
    /// Every task of one plan.
    pub fn in_plan(plan_id: PlanId) -> TaskFilter {
        TaskFilter {
            plan_id: Some(plan_id),
            ..TaskFilter::default()
        }
    }
}

/// A schedule's compare-and-set move (see [`crate::Store::advance_schedule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleAdvance {
    pub name: String,
    /// The `done_until` the scheduler read; the move happens only if it is still this.
    pub from: hive_models::Timestamp,
    /// The new `done_until`.
    pub to: hive_models::Timestamp,
    /// The latest slot this move fired, if it fired any: kept only if newer than the
    /// stored one (a scheduler that lost a race must not move it back).
    pub last_fired: Option<hive_models::Timestamp>,
    /// The first slot after `to`.
    pub next_slot: Option<hive_models::Timestamp>,
    /// Also the new enabled flag (pause, resume); `None` keeps it.
    pub enabled: Option<bool>,
}

/// A status change requested through [`crate::Store::set_task_status`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub status: TaskStatus,
    /// Merged into the task's metadata object (top-level keys replace existing ones).
    pub metadata: Option<Json>,
    /// Allow leaving a terminal status for `queued` (an explicit requeue); refused for a
    /// task a worker holds, which only a plain change to `queued` takes from its worker.
    pub requeue: bool,
    /// Why (say, why a task is cancelled): kept as the task's `last_error` and as the
    /// error message of the run the change closes, and carried by the status notification.
    pub reason: Option<String>,
}

impl StatusChange {
    pub fn to(status: TaskStatus) -> Self {
        StatusChange {
            status,
            metadata: None,
            requeue: false,
            reason: None,
        }
    }

    /// Whether the rules need the states of `task`'s dependencies to apply this change:
    /// a requeue from a finished status, which is refused while one of them will not
    /// complete. An SQL adapter loads them into its view.
    pub fn loads_dependencies(&self, task: &hive_models::Task) -> bool {
        self.status == TaskStatus::Queued
            && task.status.is_terminal()
            && !task.dependencies.is_empty()
    }

    /// This change, giving `reason` for it.
    pub fn because(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    /// Back to `queued` from wherever the task stopped, terminal statuses included.
    pub fn requeue() -> Self {
        StatusChange {
            requeue: true,
            ..StatusChange::to(TaskStatus::Queued)
        }
    }
}

/// What [`crate::Store::set_task_status`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChanged {
    pub previous: TaskStatus,
    pub task: Task,
    /// Dependents cancelled transitively because this task failed or was cancelled.
    pub cancelled_dependents: Vec<TaskId>,
    /// The task's plan, when this change moved it to a new status.
    pub plan_transition: Option<(PlanId, PlanStatus)>,
}

/// Claim up to `limit` ready tasks for one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimParams {
    pub worker_id: WorkerId,
    /// Only these task types; empty means any type.
    pub task_types: Vec<String>,
    pub limit: u32,
    /// The run's lease: the reaper may take the task back once it expires un-extended.
    pub lease: Duration,
}

/// A claimed task (now `in_progress`, assigned to the worker) and the run opened for it.
/// The run id is the lease token for [`crate::Store::finish_runs`] and
/// [`crate::Store::extend_lease`].
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub task: Task,
    pub run: Run,
    /// The outputs of the task's dependencies, keyed by their plan subtask id (by task id for
    /// a dependency outside any plan), read in the claim's own statement.
    pub inputs: Inputs,
    /// The task counts against a flow rule (its type has a rule, or it has a concurrency
    /// key): it holds a share of a limit from its claim, so a worker starts it before
    /// claims that hold none (see the worker's prefetch).
    pub limited: bool,
}

/// Dependency outputs by subtask id; a dependency that returned nothing maps to `null`.
pub type Inputs = serde_json::Map<String, Json>;

/// How a run ended, as reported by its worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `spawn`: subtasks the run adds to its plan, committed with the completion (see
    /// [`hive_models::grow`] for the rule); a spawn the plan cannot take fails the run for
    /// good instead, naming why.
    Success {
        result: Option<Json>,
        spawn: Vec<hive_models::SubTask>,
    },
    /// With `retry: Some(policy)`, the task is requeued (not claimable before the backoff
    /// for this attempt ends) while `attempts <= max_retries`; otherwise it fails for good.
    Failure {
        error: String,
        retry: Option<RetryPolicy>,
    },
    /// The worker stopped the handler when its timeout passed: the run ends `timeout`, and
    /// the task is retried or fails as for [`Outcome::Failure`].
    TimedOut {
        error: String,
        retry: Option<RetryPolicy>,
    },
    /// The handler asked to run again after `delay` without using up an attempt: the run
    /// ends `cancelled` (noted "snoozed"), the task waits in the queue. A task already
    /// snoozed `limit` times fails for good instead, so a handler cannot snooze forever.
    Snooze {
        delay: std::time::Duration,
        limit: u32,
    },
    /// The worker gives the run back without an outcome, as [`crate::Store::release_runs`]
    /// does, saying why (it lost the store for longer than the lease, so another worker may
    /// be taking the task): the run ends `cancelled`, noted with `reason`, and the task is
    /// queued again at once, its attempt not counted.
    GiveBack { reason: String },
}

impl Outcome {
    /// A success that adds nothing to its plan.
    pub fn success(result: Option<Json>) -> Outcome {
        Outcome::Success {
            result,
            spawn: Vec::new(),
        }
    }
}

/// One run to finish in [`crate::Store::finish_runs`].
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub run_id: RunId,
    pub outcome: Outcome,
    pub output_log: Option<String>,
    /// How long the claim waited at its worker before the handler started (a prefetched
    /// claim waits for a free handler): the run's `started_at` moves that much later (never
    /// past its end), so its duration is the handler's. Zero when the handler started at
    /// once, or when nothing measured it.
    pub waited: Duration,
}

/// What became of one [`RunOutcome`].
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Completed,
    /// Requeued; claimable again from `run_at`.
    Retrying {
        run_at: Timestamp,
    },
    /// Snoozed: requeued without using up an attempt, claimable again from `run_at`.
    Snoozed {
        run_at: Timestamp,
    },
    /// Failed for good (out of retries, or a failure without retry).
    Failed,
    /// Given back ([`Outcome::GiveBack`]): queued again at once, its attempt not counted.
    GivenBack,
    /// The run was not the task's current running run; nothing was changed.
    Stale,
}

/// What a task reaching a terminal status did beyond the task itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Unfinished dependents cancelled, transitively, because the task failed or was
    /// cancelled.
    pub cancelled: Vec<TaskId>,
    /// The last plan transition it caused.
    pub plan_transition: Option<(PlanId, PlanStatus)>,
}

/// The report for one finished run, in the order the outcomes were given.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishReport {
    pub run_id: RunId,
    /// `None` only for a stale run whose task no longer exists.
    pub task_id: Option<TaskId>,
    pub finished: Finished,
    pub plan_id: Option<PlanId>,
    /// Dependents cancelled transitively because the task failed for good.
    pub cancelled_dependents: Vec<TaskId>,
    /// Set when this finish moved the task's plan to a terminal status.
    pub plan_transition: Option<PlanStatus>,
}

impl FinishReport {
    /// The report for a run that was not its task's current running run.
    pub fn stale(run_id: RunId, task_id: Option<TaskId>) -> FinishReport {
        FinishReport {
            run_id,
            task_id,
            finished: Finished::Stale,
            plan_id: None,
            cancelled_dependents: Vec::new(),
            plan_transition: None,
        }
    }
}

/// What [`crate::Store::reap`] took back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReapReport {
    /// Tasks whose run timed out and that went back to the queue.
    pub requeued: Vec<(TaskId, RunId)>,
    /// Tasks whose run timed out with no retries left.
    pub failed: Vec<TaskId>,
    /// Workers newly marked offline because their heartbeat is older than the timeout.
    pub offline_workers: Vec<WorkerId>,
    /// Plans moved to a terminal status by the failures above.
    pub plan_transitions: Vec<(PlanId, PlanStatus)>,
}

impl ReapReport {
    pub fn is_empty(&self) -> bool {
        self.requeued.is_empty() && self.failed.is_empty() && self.offline_workers.is_empty()
    }
}

/// Parameters of [`crate::Store::reap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReapParams {
    /// Workers whose last heartbeat is older than this are marked offline.
    pub heartbeat_timeout: Duration,
    /// Backoff for requeued tasks (a timeout counts as a failed attempt).
    pub retry: RetryPolicy,
    /// At most this many expired runs per call.
    pub limit: u32,
}

/// A worker announcing itself; re-registering updates role, capabilities and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRegistration {
    pub id: WorkerId,
    pub role: String,
    pub capabilities: Vec<String>,
    pub metadata: Json,
}

/// A new status a heartbeat gives its worker, and why: the reason is kept as the worker's
/// `status_reason` (`None` clears an earlier one), so a worker marked `error` says what
/// went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatusChange {
    pub status: WorkerStatus,
    pub reason: Option<String>,
}

impl WorkerStatusChange {
    /// `status`, without a reason.
    pub fn to(status: WorkerStatus) -> Self {
        WorkerStatusChange {
            status,
            reason: None,
        }
    }
}

/// Which workers [`crate::Store::list_workers`] returns, ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerFilter {
    pub role: Option<String>,
    /// Only active or idle workers whose heartbeat is within this age (database clock).
    pub alive_within: Option<Duration>,
}

/// Parameters of [`crate::Store::prune_tasks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneParams {
    /// Only tasks last updated longer ago than this (database clock).
    pub older_than: Duration,
    /// Only tasks in these statuses; the store refuses non-terminal ones.
    pub statuses: Vec<TaskStatus>,
    /// At most this many tasks per call, so one call never holds locks for long.
    pub limit: u32,
}

impl PruneParams {
    /// Refuses statuses a prune may not delete: only finished tasks go.
    pub fn check(&self) -> Result<(), hive_models::Error> {
        only_finished(&self.statuses, |s| s.is_terminal(), "terminal tasks")
    }
}

/// Refuses the first of `statuses` that is not `finished`: only finished `what` are pruned.
fn only_finished<S: std::fmt::Display>(
    statuses: &[S],
    finished: impl Fn(&S) -> bool,
    what: &str,
) -> Result<(), hive_models::Error> {
    match statuses.iter().find(|s| !finished(s)) {
        Some(bad) => Err(hive_models::Error::InvalidField {
            field: "statuses".into(),
            reason: format!("only {what} can be pruned, not `{bad}`"),
        }),
        None => Ok(()),
    }
}

/// Which finished plans [`crate::Store::prune_plans`] deletes, with all their tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanPruneParams {
    /// Only plans last updated longer ago than this (database clock).
    pub older_than: Duration,
    /// Only plans in these statuses; the store refuses unfinished ones.
    pub statuses: Vec<hive_models::PlanStatus>,
    /// At most this many plans per call (however many tasks they hold).
    pub limit: u32,
}

impl PlanPruneParams {
    /// Refuses statuses a prune may not delete: only finished plans go.
    pub fn check(&self) -> Result<(), hive_models::Error> {
        only_finished(&self.statuses, |s| s.is_terminal(), "finished plans")
    }
}

/// What a plan prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlansPruned {
    pub plans: u64,
    /// Their tasks (each with its runs).
    pub tasks: u64,
}

impl std::ops::AddAssign for PlansPruned {
    fn add_assign(&mut self, other: Self) {
        self.plans += other.plans;
        self.tasks += other.tasks;
    }
}

/// What [`crate::Store::insert_tasks`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TasksInserted {
    /// Every task's id, in input order: for a task whose idempotency key was stored
    /// before (or came earlier in the same batch), the stored task's id.
    pub ids: Vec<TaskId>,
    /// Tasks this call inserted: fewer than `ids` when keys named stored tasks.
    pub new_tasks: u64,
}

/// Per-status task counts, for status displays.
pub type StatusCounts = std::collections::BTreeMap<TaskStatus, u64>;

/// A heartbeat's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReport {
    /// Leases extended on the worker's running runs.
    pub extended: u64,
}

/// One page of tasks for [`crate::Store::page_tasks`]: newest first (descending id, which
/// is creation order because ids are UUIDv7), after a cursor, under optional filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskPageParams {
    pub status: Option<TaskStatus>,
    pub task_type: Option<String>,
    pub plan_id: Option<PlanId>,
    /// Only tasks whose `assigned_worker` is this worker.
    pub worker: Option<WorkerId>,
    /// Only tasks whose title contains this text (case-sensitive, `%` and `_` literal).
    pub title_contains: Option<String>,
    /// The cursor: only tasks whose id is below this one (the last id of the page before).
    pub before: Option<TaskId>,
    /// At most this many rows, 1 to [`TaskPageParams::MAX_LIMIT`].
    pub limit: u32,
}

impl TaskPageParams {
    /// The largest page a caller may ask for.
    pub const MAX_LIMIT: u32 = 500;

    /// Refuses a limit of 0 or over [`TaskPageParams::MAX_LIMIT`].
    pub fn check(&self) -> crate::Result<()> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(crate::Error::Rejected(format!(
                "page limit {} is out of range; expected 1 to {}",
                self.limit,
                Self::MAX_LIMIT
            )));
        }
        Ok(())
    }

    /// Whether `task` passes every filter except the cursor (the memory backend's test).
    pub fn matches(&self, task: &hive_models::Task) -> bool {
        self.status.is_none_or(|s| task.status == s)
            && self.task_type.as_ref().is_none_or(|t| &task.task_type == t)
            && self.plan_id.is_none_or(|p| task.plan_id == Some(p))
            && self
                .worker
                .as_ref()
                .is_none_or(|w| task.assigned_worker.as_ref() == Some(w))
            && self
                .title_contains
                .as_ref()
                .is_none_or(|t| task.title.contains(t.as_str()))
            && self.before.is_none_or(|b| task.id < b)
    }
}

/// How long before `since` a run counted by `queue_stats` may have started: runs are
/// found through their time-ordered ids (UUIDv7, by the claiming worker's clock), so the
/// per-minute counts read the runs of the last day, not the whole history.
pub const RUNS_COUNTED_FROM: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// The smallest run id a run claimed at or after `since - RUNS_COUNTED_FROM` can have.
pub fn first_run_id_for(since: hive_models::Timestamp) -> uuid::Uuid {
    let from = since
        .checked_sub_signed(RUNS_COUNTED_FROM)
        .map_or(0, |t| t.timestamp_millis().max(0).unsigned_abs());
    uuid::Builder::from_unix_timestamp_millis(from, &[0; 10]).into_uuid()
}

/// What an operator's overview and the metrics exporter read, in one call
/// ([`crate::Store::queue_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The store's clock when the stats were read.
    pub now: Timestamp,
    /// Tasks per type and status (pairs with no task are absent): from the store, the
    /// unfinished ones only; from `Ops::queue_stats`, the finished ones too.
    pub counts: Vec<TypeStatusCount>,
    /// Per task type with ready tasks: when its longest-waiting ready task became
    /// claimable.
    pub oldest_ready: Vec<OldestReady>,
    /// Runs closed since the `since` asked for, per minute (minutes with none are absent),
    /// oldest first; none when no `since` was asked for.
    pub finished: Vec<MinuteRuns>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeStatusCount {
    pub task_type: String,
    pub status: TaskStatus,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldestReady {
    pub task_type: String,
    /// The earliest [`hive_models::Task::ready_since`] of the type's ready tasks.
    pub since: Timestamp,
}

/// Runs closed in one minute: successes, and failures of any kind (failure, timeout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinuteRuns {
    /// The minute's start.
    pub minute: Timestamp,
    pub succeeded: u64,
    pub failed: u64,
}

impl QueueStats {
    /// Adds one closed run to its minute in `finished` (kept sorted), for backends that
    /// bucket in Rust.
    pub fn add_finished(&mut self, at: Timestamp, succeeded: bool) {
        use chrono::{DurationRound, TimeDelta};
        let minute = at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at);
        let i = match self.finished.binary_search_by(|m| m.minute.cmp(&minute)) {
            Ok(i) => i,
            Err(i) => {
                self.finished.insert(
                    i,
                    MinuteRuns {
                        minute,
                        succeeded: 0,
                        failed: 0,
                    },
                );
                i
            }
        };
        if succeeded {
            self.finished[i].succeeded += 1;
        } else {
            self.finished[i].failed += 1;
        }
    }
}

/// The task or plan that holds an idempotency key, and its status: what a schedule's slot
/// made, for listings (see [`crate::Store::keyed_work`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyedWork {
    Task { id: TaskId, status: TaskStatus },
    Plan { id: PlanId, status: PlanStatus },
}

impl KeyedWork {
    /// Puts this work in `found` under `key`, a task winning over a plan holding the same
    /// key whichever row a read returns first.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn keep_in(
        self,
        found: &mut std::collections::HashMap<String, KeyedWork>,
        key: String,
    ) {
        match self {
            KeyedWork::Task { .. } => {
                found.insert(key, self);
            }
            KeyedWork::Plan { .. } => {
                found.entry(key).or_insert(self);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs claimed within a day before `since` are at or past the bound; older ones, and
    /// the bound of a time before 1970, are handled without panicking.
    #[test]
    fn the_first_run_id_bounds_runs_claimed_within_a_day() {
        let since = chrono::Utc::now();
        let bound = first_run_id_for(since);
        let made_at = |t: hive_models::Timestamp| {
            let ms = t.timestamp_millis().unsigned_abs();
            uuid::Builder::from_unix_timestamp_millis(ms, &[0xff; 10]).into_uuid()
        };
        let ms = chrono::TimeDelta::milliseconds;
        assert!(made_at(since - RUNS_COUNTED_FROM + ms(1)) >= bound);
        assert!(made_at(since) >= bound);
        assert!(made_at(since - RUNS_COUNTED_FROM - ms(1)) < bound);
        // Text order (SQLite keeps ids as text) agrees.
        assert!(made_at(since).to_string() >= bound.to_string());
        assert!(made_at(since - RUNS_COUNTED_FROM - ms(1)).to_string() < bound.to_string());
        assert_eq!(
            first_run_id_for(chrono::DateTime::UNIX_EPOCH).get_version_num(),
            7
        );
    }
}
