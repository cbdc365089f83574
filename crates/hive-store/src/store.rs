//! The [`Store`] trait: every persistence operation Hive needs, each one atomic.

use std::collections::HashMap;

use async_trait::async_trait;
use hive_models::{
    ExecutionPlan, FlowRule, NewPlan, NewTask, PlanCounters, PlanHeader, PlanId, PlanStatus, Run,
    RunId, Schedule, Scope, Task, TaskId, Timestamp, Worker, WorkerId,
};
use tokio::sync::broadcast;

use crate::{
    Backend, Claim, ClaimParams, FinishReport, HeartbeatReport, KeyedWork, Notification,
    PlanPruneParams, PlansPruned, PruneParams, QueueStats, ReapParams, ReapReport, Result,
    RunOutcome, ScheduleAdvance, StatusChange, StatusChanged, StatusCounts, TaskFilter,
    TaskPageParams, TasksInserted, TypeStatusCount, WorkerFilter, WorkerRegistration,
    WorkerStatusChange,
};

/// Persistence of tasks, runs, workers, plans and plan dependencies.
///
/// Every method is atomic: a backend implements each as one transaction (or under one
/// lock), so concurrent callers in any number of processes never see or leave a partial
/// change. All time comparisons use the store's clock ([`Store::now`]), never the caller's.
///
/// Callers validate input with the hive-models rules before calling (hive-ops does); a
/// store trusts validated input but never panics on any input.
///
/// Shared semantics every backend follows (the conformance suite in `hive_store::testing`,
/// feature `testing`, checks each one):
/// - Queue order is priority descending, then insertion order.
/// - A claim admits a flow-controlled task (one with a concurrency key, or of a type with a
///   [`FlowRule`]) only while each of its scopes has room ([`hive_models::Admission`]),
///   judged under the claim's own exclusion so no two claimers can both take the last
///   place; paused scopes are not claimed at all. Tasks passed over stay queued.
/// - A task is *ready* when it is `queued`, its `pending_dependencies` is 0 and its
///   `run_at` is absent or not after now.
/// - When a task reaches `completed`, each dependent's `pending_dependencies` drops by one;
///   a queued dependent reaching 0 is announced with a `TaskReady` notification.
///   When a task reaches `failed` or `cancelled`, every transitive dependent that is not
///   terminal is cancelled (its running run, if any, is cancelled too).
/// - For a task of a plan: completing increments the plan's `completed_subtasks`, failing
///   for good increments `failed_subtasks`. The first failure moves a non-terminal plan to
///   `failed`; when every subtask is completed the plan becomes `completed`. A plan in
///   `pending` moves to `in_progress` when one of its tasks is claimed.
/// - A finished task requeued is unfinished again: its plan stops counting it (a plan
///   already finished keeps its status), and when it had completed, each of its queued
///   dependents waits for it again (`pending_dependencies` up by one) and takes its new
///   output. Dependents already running or finished are left as they are.
/// - Reasons are kept where a user reads them: a status change's `reason` becomes the
///   task's `last_error` and the error message of the run it closes; a worker's status
///   change replaces its `status_reason` (the reaper gives [`hive_models::Worker::silent_reason`]
///   when it marks a worker `offline`); a run closed by the reaper carries
///   [`hive_models::Run::LEASE_EXPIRED`].
/// - Task pages ([`Store::page_tasks`]) are ordered by descending id, which is creation
///   order (UUIDv7); the cursor is the last id of the previous page.
/// - A run records `created_at` (when a claim opened it, equal to `started_at`) and
///   `updated_at` (stamped by every write to it: opening, lease extension, closing).
///   A plan keeps the `metadata` object it was submitted with.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Identifies this store instance in its [`Notification`]s, so a process can tell its
    /// own changes from other processes'.
    fn origin(&self) -> uuid::Uuid;

    /// The store's clock: the database server's `now()` for SQL backends.
    async fn now(&self) -> Result<Timestamp>;

    /// Ends the store's connections and background tasks, waiting a few seconds at most.
    /// On the SQL backends calls made after it fail (`Unavailable`) and nothing reconnects;
    /// the memory store has nothing to end. A process calls it before it exits: on SQLite
    /// the last connection to close checkpoints the write-ahead log into the database file
    /// and removes it, so the file is whole on its own (readable where no writer may go).
    /// Without it the connections end with the process, and the log stays until the next
    /// writer checkpoints it.
    async fn close(&self) {}

    /// Change notifications ([`crate::Change`], typed): tasks created, claimed, moved to a
    /// status (with the run that moved them and a failure's error), freed dependents, plan
    /// and worker status. Delivered after commit; best-effort (a lagging receiver skips), so
    /// consumers treat them as wake-ups and re-read what they must be sure of. Postgres also
    /// delivers other processes' changes (LISTEN/NOTIFY, reconnecting on loss).
    async fn subscribe(&self) -> Result<broadcast::Receiver<Notification>>;

    // ---- tasks ----

    /// Inserts tasks in one transaction and returns their ids in input order. A task whose
    /// `idempotency_key` already exists is not inserted; its id is the existing task's, and
    /// [`TasksInserted::new_tasks`] does not count it (nor does the created notification).
    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<TasksInserted>;

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>>;

    /// The tasks of `ids` that exist, in insertion order, in one read (unknown ids are
    /// left out): what a reader of many events needs without a query per task.
    async fn get_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>>;

    /// Tasks matching the filter, in queue order.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>>;

    /// Task counts per status, for the whole store or one plan. The whole store's count
    /// reads every task ever kept; `Ops::status_counts` reuses its finished part.
    async fn count_tasks(&self, plan_id: Option<PlanId>) -> Result<StatusCounts>;

    /// One page of tasks, newest first (descending id), below the cursor `before`, under
    /// the filters: keyset pagination, so a page costs the same at any depth. Refuses a
    /// limit outside 1..=[`TaskPageParams::MAX_LIMIT`] with `Rejected`.
    async fn page_tasks(&self, params: &TaskPageParams) -> Result<Vec<Task>>;

    /// Unfinished tasks per type and status, the oldest ready task per type, and, with
    /// `since`, the runs closed per minute since then (of those claimed at most a day before
    /// it): an operator's overview and the metrics gauges, in one read whose cost follows
    /// the work in flight and the runs of the last day, not the history.
    async fn queue_stats(&self, since: Option<Timestamp>) -> Result<QueueStats>;

    /// Finished tasks (completed, failed, cancelled) per type and status: reads every
    /// finished task (230 ms for 2,000,000 on Postgres), so callers cache it
    /// (`Ops::queue_stats`).
    async fn count_finished_tasks(&self) -> Result<Vec<TypeStatusCount>>;

    /// Unfinished tasks per type and status, as [`Store::queue_stats`] counts them (by the
    /// status index), without its other reads.
    async fn count_unfinished_tasks(&self) -> Result<Vec<TypeStatusCount>>;

    /// Moves a task to a new status if the transition table allows it (or, with
    /// `requeue`, from a status no worker holds back to `queued`). Returns `None` for an
    /// unknown task, [`crate::Error::Invalid`] for an illegal transition. Leaving an active
    /// status closes the current run (`cancelled`, or `success`/`failure` for
    /// completed/failed), so its worker's late finish is rejected as stale. Reaching
    /// completed, failed or cancelled applies the dependency and plan rules above.
    async fn set_task_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>>;

    /// Deletes a task with its runs and dependency rows. Dependents that were still waiting
    /// for it stop waiting. Returns false for an unknown task.
    async fn delete_task(&self, id: TaskId) -> Result<bool>;

    /// Deletes up to `limit` terminal tasks outside plans (and their runs) older than
    /// `older_than`, oldest first, and returns how many. Non-terminal statuses are refused
    /// with `Invalid`. A plan's subtasks are left alone, whatever their age: they hold what
    /// its dependents read and a retry builds on, and go with their plan
    /// ([`Store::prune_plans`]).
    async fn prune_tasks(&self, params: &PruneParams) -> Result<u64>;

    // ---- running tasks ----

    /// Atomically takes up to `limit` ready tasks in queue order that no other caller can
    /// take: each becomes `in_progress`, assigned to the worker, `attempts + 1`, with a new
    /// `running` run (next run_number, lease expiring at now + lease) as its current run.
    async fn claim_tasks(&self, params: &ClaimParams) -> Result<Vec<Claim>>;

    /// Finishes runs in one transaction, returning one report per outcome in input order.
    /// A run that is not its task's current `running` run gets [`crate::Finished::Stale`]
    /// and changes nothing. Success completes the task (result stored on task and run);
    /// failure requeues with backoff or fails for good (see [`crate::Outcome`]).
    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<Vec<FinishReport>>;

    /// [`Store::finish_runs`] then [`Store::claim_tasks`], in one transaction where the
    /// backend allows: a worker hands back finished runs and refills the slots they freed in
    /// one round trip, and takes the dependents its completions just unblocked before any
    /// other worker is woken for them (their [`crate::Change::TaskReady`] notifications
    /// are sent only for those it did not claim). Outcomes are durable when this returns,
    /// exactly as with `finish_runs`.
    async fn finish_and_claim(
        &self,
        outcomes: &[RunOutcome],
        claim: &ClaimParams,
    ) -> Result<(Vec<FinishReport>, Vec<Claim>)> {
        let reports = self.finish_runs(outcomes).await?;
        let claims = if claim.limit == 0 {
            Vec::new()
        } else {
            self.claim_tasks(claim).await?
        };
        Ok((reports, claims))
    }

    /// Pushes a running run's lease to at least now + `lease` and its heartbeat length to
    /// at least `lease` (a shorter one changes neither: heartbeats would no longer keep the
    /// run alive), returning the expiry; [`crate::Error::StaleRun`] when the run is not its
    /// task's current running run.
    async fn extend_lease(&self, run_id: RunId, lease: std::time::Duration) -> Result<Timestamp>;

    /// Records how far a running run has got (the store's clock stamps it) and announces
    /// it ([`crate::Change::Progress`]); [`crate::Error::StaleRun`] when the run is not its
    /// task's current running run. Callers validate with [`hive_models::Progress::check`].
    async fn record_progress(
        &self,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) -> Result<()>;

    /// Gives runs back without counting an attempt: each current running run is closed as
    /// `cancelled`, its task returns to `queued` with `attempts - 1`. Stale runs are skipped.
    /// Returns the tasks requeued.
    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>>;

    /// [`Store::release_runs`] for runs whose handlers never started (a stopping worker's
    /// buffered claims): the start each claim counted against its task's rate-limited
    /// scopes is forgotten too, so giving work back does not use up a rate window.
    async fn release_unstarted(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>>;

    /// Closes as `timeout` up to `limit` running runs whose lease expired; each task is
    /// requeued with backoff while `attempts <= max_retries`, else failed (with the
    /// dependency and plan rules). Also marks active/idle workers whose heartbeat is older
    /// than the timeout `offline`.
    async fn reap(&self, params: &ReapParams) -> Result<ReapReport>;

    async fn get_run(&self, id: RunId) -> Result<Option<Run>>;

    /// The runs of `ids` that exist, by task then run_number, in one read: the latest run
    /// of each subtask a page of a large plan shows, without reading all the plan's runs.
    async fn get_runs(&self, ids: &[RunId]) -> Result<Vec<Run>>;

    /// A task's runs by run_number.
    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>>;

    /// The runs of every task of a plan, by task then run_number: what a plan's status
    /// and results show, in one read however many subtasks it has.
    async fn list_plan_runs(&self, plan_id: PlanId) -> Result<Vec<Run>>;

    /// The running runs the `workers` hold, by task: what the store believes each is
    /// running, in one read however many workers. A worker compares its own with what it
    /// knows it runs, to give back runs whose claim reply it never got and to stop handlers
    /// whose run ended elsewhere; the dashboard lists every worker's.
    async fn running_runs(&self, workers: &[WorkerId]) -> Result<Vec<Run>>;

    // ---- schedules ----

    /// Stores a new schedule row as given; [`crate::Error::Conflict`] when its name exists.
    async fn insert_schedule(&self, schedule: &Schedule) -> Result<()>;

    async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>>;

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<Schedule>>;

    /// The enabled schedules whose next slot is at or before `now`, by name: what a
    /// scheduler step reads, without decoding the schedules that are not due.
    async fn due_schedules(&self, now: Timestamp) -> Result<Vec<Schedule>>;

    /// Deletes a schedule (tasks it created stay); false for an unknown one.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;

    /// Compare-and-set: when the schedule's `done_until` is still `from`, moves it to `to`
    /// with the other fields given; false when another scheduler (or a redefinition) moved
    /// it first, or the schedule is unknown (a pause moves no `done_until`: a step that read
    /// the schedule before it still advances, its slots' work made or refused by
    /// [`Store::claim_slot`]). Nor does it move `done_until` to or past a slot
    /// claimed after `from` ([`Store::claim_slot`]) unless its own `last_fired` is that
    /// slot or later: the claimed slot's work may not exist yet, and a step that passed
    /// it would let the next one read it as finished.
    async fn advance_schedule(&self, advance: &ScheduleAdvance) -> Result<bool>;

    /// Compare-and-set: when the schedule named `schedule.name` still has `done_until` equal
    /// to `from`, replaces its definition (`cron`, `timezone`, `creates`, `missed`,
    /// `overlap`) and its
    /// progress (`done_until`, `next_slot`) with `schedule`'s; whether it is enabled, its
    /// last fire, its last manual run and its creation time stay as stored (a pause committed meanwhile is not
    /// undone), `updated_at` becomes the store's now. False when a scheduler moved it
    /// first, or the schedule is unknown.
    async fn replace_schedule(&self, schedule: &Schedule, from: Timestamp) -> Result<bool>;

    /// Whether a task or plan that holds one of `keys` is unfinished, in one read: a task
    /// not in a terminal status; a plan pending or running, or failed with subtasks still
    /// running or queued (a failure cancels only the failed subtask's descendants). A key
    /// none holds (never created, or pruned) counts as finished. What a schedule that
    /// skips or queues overlaps asks of its last slot's and last manual run's keys.
    async fn unfinished_by_key(&self, keys: &[String]) -> Result<bool>;

    /// The task or plan that holds each of `keys`, with its status, in one read (a
    /// listing of schedules or of a schedule's slots); a key none holds (never created, or
    /// pruned) is left out. Should a task and a plan hold the same key, the task.
    async fn keyed_work(&self, keys: &[String]) -> Result<HashMap<String, KeyedWork>>;

    /// Sets the schedule's `last_fired` to `slot` when it holds `slot` already, or when its
    /// `done_until`, `last_fired` and `last_manual` are still what `read` holds and it is
    /// enabled (a redefinition, a pause or another scheduler's move since makes it fail); true
    /// when it holds `slot` afterwards. A scheduler of a schedule that skips or queues
    /// overlaps claims the slot it is about to start: two schedulers that picked different
    /// slots (their clocks on either side of a slot's time) cannot both start theirs, nor
    /// one that missed a manual run noted since its read; and the slot a later step checks
    /// is the one started, also when the starter's advance loses or never happens. False
    /// for an unknown schedule.
    async fn claim_slot(&self, read: &Schedule, slot: Timestamp) -> Result<bool>;

    /// Sets the schedule's `last_manual` to `key`, the idempotency key of a manual run
    /// about to be created (the latest wins); false for an unknown schedule.
    async fn note_manual_run(&self, name: &str, key: &str) -> Result<bool>;

    // ---- flow control ----

    /// Stores a scope's rule, replacing the one it had. Claims read rules as they run, so
    /// a change holds from the next claim of any worker on.
    async fn put_flow_rule(&self, rule: &FlowRule) -> Result<()>;

    /// Every stored rule, by kind then name.
    async fn list_flow_rules(&self) -> Result<Vec<FlowRule>>;

    /// Deletes a scope's rule; false when it had none.
    async fn delete_flow_rule(&self, scope: &Scope) -> Result<bool>;

    /// Applies `edit` to the scope's rule as stored, atomically: written, or deleted when it
    /// says nothing any more, with the store's time ([`hive_models::FlowEdit::apply`]).
    /// Returns the rule after it (`None` when there is none) and whether it changed.
    async fn edit_flow_rule(
        &self,
        scope: &Scope,
        edit: hive_models::FlowEdit,
    ) -> Result<(Option<FlowRule>, bool)>;

    // ---- workers ----

    /// Inserts or updates a worker: role, capabilities and metadata replaced, status
    /// `active`, heartbeat now. Returns the stored worker.
    async fn register_worker(&self, registration: &WorkerRegistration) -> Result<Worker>;

    /// Records a heartbeat (and a new status if given, its reason replacing the worker's
    /// `status_reason`; `offline` is announced; without one, an `offline` worker is
    /// `active` again), and extends the lease of every running run of this worker by that
    /// run's lease duration. `None` for an unknown worker.
    async fn heartbeat(
        &self,
        id: &WorkerId,
        status: Option<WorkerStatusChange>,
    ) -> Result<Option<HeartbeatReport>>;

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<Worker>>;

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>>;

    /// Deletes a worker; its running runs are released as by [`Store::release_runs`].
    /// Returns the requeued tasks, or `None` for an unknown worker.
    async fn unregister_worker(&self, id: &WorkerId) -> Result<Option<Vec<TaskId>>>;

    /// Deletes a worker whose last heartbeat is before `silent_before` and that holds no
    /// running run (whatever its lease), in one step, announcing it offline; true when
    /// deleted. Runs are never released here: a worker holding one is left for the reaper,
    /// which takes the run back once its lease lapses, counting the attempt; and a claim
    /// committing meanwhile is not undone (its worker, alive after all, registers again at
    /// its next heartbeat).
    async fn prune_worker(&self, id: &WorkerId, silent_before: Timestamp) -> Result<bool>;

    // ---- plans ----

    /// Stores a validated plan as `pending`, not yet materialized. A plan with an
    /// idempotency key that a stored plan has already is not stored: the stored plan's id
    /// is returned, also to a submission racing the first.
    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId>;

    /// Stores a validated plan and materializes it ([`Store::materialize_plan`]) in one
    /// transaction: a crash leaves either nothing or the whole plan with its tasks, never
    /// a pending plan that nothing will run. Returns the plan and how many tasks it created:
    /// for a plan whose idempotency key a stored plan has, that plan, materialized now if
    /// it was only stored (by [`Store::insert_plan`]), and the tasks this created (0 when
    /// it had them).
    async fn submit_plan(&self, plan: NewPlan) -> Result<(PlanId, u64)>;

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>>;

    /// A plan's status and progress counters, without reading its subtasks: what progress
    /// displays poll, at a cost that does not grow with the plan.
    async fn get_plan_counters(&self, id: PlanId) -> Result<Option<PlanCounters>>;

    /// One plan as [`Store::list_plan_headers`] lists it (title, status, counters), without
    /// its subtasks: one row however large the plan.
    async fn get_plan_header(&self, id: PlanId) -> Result<Option<PlanHeader>>;

    /// Plans, newest first, optionally of one status.
    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>>;

    /// The plans [`Store::list_plans`] lists, in the same order, without their subtasks: one
    /// row each, however large the plans.
    async fn list_plan_headers(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<PlanHeader>>;

    /// How many plans there are, of one status or all: one count, not a listing, so a
    /// status display costs the same at ten plans as at a hundred thousand.
    async fn count_plans(&self, status: Option<PlanStatus>) -> Result<u64>;

    /// Creates one task per subtask (plan id, subtask id, dependency rows and
    /// `pending_dependencies` set) in one transaction and marks the plan materialized.
    /// Returns the number created: 0 when already materialized; `None` for an unknown plan.
    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>>;

    /// Compare-and-set of a plan's status: true when it was `from` and is now `to`.
    async fn transition_plan(&self, id: PlanId, from: PlanStatus, to: PlanStatus) -> Result<bool>;

    /// Cancels a non-terminal plan and all its non-terminal tasks (closing their runs); a
    /// failed plan's non-terminal tasks are cancelled and it stays failed
    /// ([`hive_models::PlanStatus::may_cancel`]). Returns the cancelled task ids; `None` for
    /// an unknown plan; `Some(empty)` when the plan was completed or cancelled already.
    async fn cancel_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>>;

    /// Gives a failed or cancelled plan another go, in one transaction, by the rules
    /// (`rules::Changes::retry_plan`): its failed and cancelled tasks are queued
    /// again (each waiting for its dependencies not completed) and the plan is in progress.
    /// Returns the requeued task ids in insertion order; `None` for an unknown plan or one
    /// neither failed nor cancelled (nothing changes).
    async fn retry_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>>;

    /// Deletes finished plans (in `p.statuses`, last updated longer ago than
    /// `p.older_than`, every task of theirs finished) with their tasks, runs, dependency rows
    /// and subtask definitions: oldest first, at most `p.limit` plans, in one transaction.
    /// A plan with a task still queued or running (a failed plan's other branch) stays.
    /// Unfinished statuses are refused (`Invalid`), deleting nothing.
    async fn prune_plans(&self, p: &PlanPruneParams) -> Result<PlansPruned>;

    /// For each known task: whether all its dependencies are completed. Unknown ids are
    /// absent from the map. One round trip for the whole list.
    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>>;

    /// The plan subtask id of each task of `ids` that is a plan's subtask, in one round
    /// trip: the names a page of a large plan gives its rows' dependencies, without reading
    /// the dependencies' rows (their outputs may be large) or the plan's definition.
    async fn subtask_ids(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, String>>;
}
