//! [`Changes`]: a batch of operations replayed against a [`View`], producing the
//! [`Patches`] a backend writes.

use std::collections::VecDeque;

use hive_models::{
    AfterFailure, IdMap, IdSet, Json, PlanCounters, PlanId, PlanStatus, RetryPolicy, RunId,
    RunStatus, Task, TaskId, TaskStatus, Timestamp, after_failure,
};

use super::{TaskState, View, after};
use crate::notify::{Change, TaskStatusChange, note_error};
use crate::{
    Effects, FinishReport, Finished, Notification, Notifier, Outcome, RunOutcome, StatusChange,
};

mod refusals;

/// A change to one task row. Every patch sets the status and stamps `updated_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPatch {
    pub id: TaskId,
    pub status: TaskStatus,
    /// `Some`: store this result.
    pub result: Option<Option<Json>>,
    /// `Some`: store this as the last error.
    pub error: Option<String>,
    /// `Some`: back to the queue — no worker, claimable from this time (`None`: at once).
    pub requeue: Option<Option<Timestamp>>,
    /// Added to the attempts (a released run gives its attempt back).
    pub attempts_delta: i32,
    /// Added to the snoozes.
    pub snoozes_delta: i32,
    /// Count the dependencies not completed again (a finished task requeued waits anew).
    pub recount_pending: bool,
    /// `Some`: the task's metadata after merging a status change's.
    pub metadata: Option<Json>,
}

impl TaskPatch {
    fn new(id: TaskId, status: TaskStatus) -> TaskPatch {
        TaskPatch {
            id,
            status,
            result: None,
            error: None,
            requeue: None,
            attempts_delta: 0,
            snoozes_delta: 0,
            recount_pending: false,
            metadata: None,
        }
    }
}

/// Closing one running run; fields left `None` keep the run's value.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPatch {
    pub id: RunId,
    pub status: RunStatus,
    pub result: Option<Option<Json>>,
    pub error: Option<Option<String>>,
    pub log: Option<Option<String>>,
    /// How much later than its claim the run's handler started ([`RunOutcome::waited`]).
    pub waited: std::time::Duration,
}

impl RunPatch {
    fn close(id: RunId, status: RunStatus) -> RunPatch {
        RunPatch {
            id,
            status,
            result: None,
            error: None,
            log: None,
            waited: std::time::Duration::ZERO,
        }
    }
}

/// Everything a replayed batch changes, for the backend to write in one transaction, then
/// send `notes` after commit.
#[derive(Debug, Default)]
pub struct Patches {
    /// Runs to close, each only if it is still running when written.
    pub runs: Vec<RunPatch>,
    pub tasks: Vec<TaskPatch>,
    /// Tasks that completed: each of their dependents waits for one dependency fewer, and a
    /// queued one left waiting for none is announced `TaskReady` by the writer.
    pub completed: Vec<TaskId>,
    /// Completed tasks an operator put back in the queue: each of their queued dependents
    /// waits for one dependency more (the one it will get a new output from).
    pub reopened: Vec<TaskId>,
    /// Plans a finish counted against, with their new counters and status.
    pub plans: Vec<(PlanId, PlanCounters)>,
    pub notes: Vec<Notification>,
}

impl Patches {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.tasks.is_empty()
            && self.completed.is_empty()
            && self.reopened.is_empty()
            && self.plans.is_empty()
            && self.notes.is_empty()
    }
}

/// What a status change did.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusOutcome {
    pub previous: TaskStatus,
    pub effects: Effects,
}

/// The batch being replayed: the view, what the batch changed so far (read before the
/// view), and the patches to write.
#[derive(Debug)]
pub struct Changes<'v, V: View + ?Sized> {
    view: &'v V,
    notifier: &'v Notifier,
    /// The transaction's clock; every time the batch writes derives from it.
    pub at: Timestamp,
    tasks: IdMap<TaskId, TaskState>,
    plans: IdMap<PlanId, PlanCounters>,
    /// Plans counted against, in the order first touched.
    touched: Vec<PlanId>,
    task_patches: Vec<TaskPatch>,
    task_index: IdMap<TaskId, usize>,
    runs: Vec<RunPatch>,
    completed: Vec<TaskId>,
    reopened: Vec<TaskId>,
    notes: Vec<Notification>,
}

impl<'v, V: View + ?Sized> Changes<'v, V> {
    pub fn new(view: &'v V, notifier: &'v Notifier, at: Timestamp) -> Self {
        Changes {
            view,
            notifier,
            at,
            tasks: IdMap::default(),
            plans: IdMap::default(),
            touched: Vec::new(),
            task_patches: Vec::new(),
            task_index: IdMap::default(),
            runs: Vec::new(),
            completed: Vec::new(),
            reopened: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A task as the batch sees it: its own changes first, then the view.
    pub fn state(&self, id: TaskId) -> Option<TaskState> {
        self.tasks.get(&id).cloned().or_else(|| self.view.task(id))
    }

    fn state_mut(&mut self, id: TaskId) -> Option<&mut TaskState> {
        if !self.tasks.contains_key(&id) {
            let s = self.view.task(id)?;
            self.tasks.insert(id, s);
        }
        self.tasks.get_mut(&id)
    }

    /// Whether `run` is still `task`'s current running run, as the batch sees it.
    pub fn is_live(&self, task: TaskId, run: RunId) -> bool {
        self.state(task).is_some_and(|t| t.is_live(run))
    }

    /// A notification to send with the batch's own (a worker going offline, say).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn note(&mut self, n: Notification) {
        self.notes.push(n);
    }

    fn patch(&mut self, id: TaskId) -> &mut TaskPatch {
        let i = match self.task_index.get(&id) {
            Some(i) => *i,
            None => {
                let status = self.state(id).map_or(TaskStatus::Queued, |t| t.status);
                self.task_patches.push(TaskPatch::new(id, status));
                self.task_index.insert(id, self.task_patches.len() - 1);
                self.task_patches.len() - 1
            }
        };
        &mut self.task_patches[i]
    }

    fn set_status(&mut self, id: TaskId, status: TaskStatus) {
        if let Some(t) = self.state_mut(id) {
            t.status = status;
        }
        self.patch(id).status = status;
    }

    fn requeue(&mut self, id: TaskId, run_at: Option<Timestamp>) {
        self.set_status(id, TaskStatus::Queued);
        self.patch(id).requeue = Some(run_at);
    }

    /// Closes the task's current run if it is running, with `close` filling in the rest.
    /// Returns that run when a worker held it (the task is active): an adapter's view
    /// assumes a task's current run runs, which only an active task's surely does.
    fn close_run(&mut self, task: TaskId, close: impl FnOnce(RunId) -> RunPatch) -> Option<RunId> {
        let t = self.state_mut(task)?;
        let run = t.current_run.filter(|_| t.run_running)?;
        let held = t.status.is_active();
        t.run_running = false;
        self.runs.push(close(run));
        held.then_some(run)
    }

    fn task_note(&mut self, change: Change) {
        let n = self.notifier.note(change);
        self.notes.push(n);
    }

    /// Finishes one run as its worker reported; `task` is the run's task when the run
    /// exists. A run that is not its task's current running run is stale: nothing changes.
    pub fn finish(&mut self, o: &RunOutcome, task: Option<TaskId>) -> FinishReport {
        let Some(task_id) = task.filter(|t| self.is_live(*t, o.run_id)) else {
            return FinishReport::stale(o.run_id, task);
        };
        let plan_id = self.state(task_id).and_then(|t| t.plan_id);
        let log = Some(o.output_log.clone());
        let (finished, fx) = match &o.outcome {
            Outcome::Success { result, .. } => {
                self.close_run(task_id, |r| RunPatch {
                    result: Some(result.clone()),
                    log,
                    ..RunPatch::close(r, RunStatus::Success)
                });
                self.set_status(task_id, TaskStatus::Completed);
                self.patch(task_id).result = Some(result.clone());
                self.task_note(Change::TaskStatus(TaskStatusChange {
                    run_id: Some(o.run_id),
                    plan_id,
                    ..TaskStatusChange::new(task_id, TaskStatus::Completed)
                }));
                (Finished::Completed, self.on_terminal(task_id))
            }
            Outcome::Failure { error, retry } | Outcome::TimedOut { error, retry } => {
                let status = match o.outcome {
                    Outcome::TimedOut { .. } => RunStatus::Timeout,
                    _ => RunStatus::Failure,
                };
                self.close_run(task_id, |r| RunPatch {
                    error: Some(Some(error.clone())),
                    log,
                    ..RunPatch::close(r, status)
                });
                self.fail_attempt(task_id, o.run_id, error, *retry)
            }
            Outcome::Snooze { delay, limit } => self.snooze(task_id, o.run_id, *delay, *limit, log),
            Outcome::GiveBack { reason } => {
                self.give_back(task_id, o.run_id, Some(reason.clone()), log);
                (Finished::GivenBack, Effects::default())
            }
        };
        // However the outcome closed its run, the run started when its handler did.
        if let Some(closed) = self.runs.iter_mut().rev().find(|r| r.id == o.run_id) {
            closed.waited = o.waited;
        }
        FinishReport {
            run_id: o.run_id,
            task_id: Some(task_id),
            finished,
            plan_id,
            cancelled_dependents: fx.cancelled,
            plan_transition: fx.plan_transition.map(|(_, s)| s),
        }
    }

    /// Closes an expired run as `timeout` and retries or fails its task (the reaper).
    /// `None` when the run is no longer live (an earlier expiry's cascade cancelled it).
    pub fn expire(
        &mut self,
        run: RunId,
        task: TaskId,
        retry: RetryPolicy,
    ) -> Option<(Finished, Effects)> {
        const LEASE_EXPIRED: &str = hive_models::Run::LEASE_EXPIRED;
        if !self.is_live(task, run) {
            return None;
        }
        self.close_run(task, |r| RunPatch {
            error: Some(Some(LEASE_EXPIRED.into())),
            ..RunPatch::close(r, RunStatus::Timeout)
        });
        Some(self.fail_attempt(task, run, LEASE_EXPIRED, Some(retry)))
    }

    /// Gives a live run back without counting its attempt; false for a stale one.
    pub fn release(&mut self, run: RunId, task: TaskId) -> bool {
        if !self.is_live(task, run) {
            return false;
        }
        self.give_back(task, run, None, None);
        true
    }

    /// [`Changes::release`] for each (run, task) in order; the pairs released.
    pub fn release_all(&mut self, runs: &[(RunId, TaskId)]) -> Vec<(RunId, TaskId)> {
        runs.iter()
            .filter(|(r, t)| self.release(*r, *t))
            .copied()
            .collect()
    }

    /// Closes a live run as `cancelled` (noted with `note`, if any) and queues its task
    /// again at once, its attempt given back.
    fn give_back(
        &mut self,
        task: TaskId,
        run: RunId,
        note: Option<String>,
        log: Option<Option<String>>,
    ) {
        self.close_run(task, |r| RunPatch {
            error: note.map(Some),
            log,
            ..RunPatch::close(r, RunStatus::Cancelled)
        });
        let plan_id = self.state(task).and_then(|t| t.plan_id);
        if let Some(t) = self.state_mut(task) {
            t.attempts = t.attempts.saturating_sub(1);
        }
        self.patch(task).attempts_delta -= 1;
        self.requeue(task, None);
        self.task_note(Change::TaskStatus(TaskStatusChange {
            run_id: Some(run),
            plan_id,
            ..TaskStatusChange::new(task, TaskStatus::Queued)
        }));
    }

    /// Puts a live run's task back in the queue until `delay` has passed, giving its
    /// attempt back; fails it for good once it was snoozed `limit` times.
    fn snooze(
        &mut self,
        id: TaskId,
        run: RunId,
        delay: std::time::Duration,
        limit: u32,
        log: Option<Option<String>>,
    ) -> (Finished, Effects) {
        let Some(t) = self.state(id) else {
            return (Finished::Stale, Effects::default());
        };
        if t.snoozes >= limit {
            let error = format!(
                "snoozed {} times, the limit: failing instead of waiting again",
                t.snoozes
            );
            self.close_run(id, |r| RunPatch {
                error: Some(Some(error.clone())),
                log,
                ..RunPatch::close(r, RunStatus::Failure)
            });
            return self.fail_attempt(id, run, &error, None);
        }
        let run_at = after(self.at, delay);
        self.close_run(id, |r| RunPatch {
            error: Some(Some(format!("snoozed until {}", run_at.to_rfc3339()))),
            log,
            ..RunPatch::close(r, RunStatus::Cancelled)
        });
        if let Some(t) = self.state_mut(id) {
            t.attempts = t.attempts.saturating_sub(1);
            t.snoozes = t.snoozes.saturating_add(1);
        }
        let patch = self.patch(id);
        patch.attempts_delta -= 1;
        patch.snoozes_delta += 1;
        self.requeue(id, Some(run_at));
        self.task_note(Change::TaskStatus(TaskStatusChange {
            run_id: Some(run),
            plan_id: t.plan_id,
            run_at: Some(run_at),
            ..TaskStatusChange::new(id, TaskStatus::Queued)
        }));
        (Finished::Snoozed { run_at }, Effects::default())
    }

    /// Requeues with backoff while retries remain, else fails the task for good.
    fn fail_attempt(
        &mut self,
        id: TaskId,
        run: RunId,
        error: &str,
        retry: Option<RetryPolicy>,
    ) -> (Finished, Effects) {
        let Some(t) = self.state(id) else {
            return (Finished::Stale, Effects::default());
        };
        self.patch(id).error = Some(error.to_owned());
        let note = |status, run_at| {
            Change::TaskStatus(TaskStatusChange {
                run_id: Some(run),
                plan_id: t.plan_id,
                error: Some(note_error(error)),
                run_at,
                ..TaskStatusChange::new(id, status)
            })
        };
        // A task's own policy replaces the caller's; a permanent failure stays permanent.
        let retry = retry.map(|caller| t.retry_policy.unwrap_or(caller));
        match after_failure(retry, t.attempts, t.max_retries, fastrand::f64()) {
            AfterFailure::Retry { delay } => {
                let run_at = after(self.at, delay);
                self.requeue(id, Some(run_at));
                self.task_note(note(TaskStatus::Queued, Some(run_at)));
                (Finished::Retrying { run_at }, Effects::default())
            }
            AfterFailure::Fail => {
                self.set_status(id, TaskStatus::Failed);
                self.task_note(note(TaskStatus::Failed, None));
                let fx = self.on_terminal(id);
                (Finished::Failed, fx)
            }
        }
    }

    /// A status change asked for by a caller (`set_task_status`); `task` is the task's row.
    /// An illegal transition is refused and changes nothing. A reason given is kept as the
    /// task's last error and the closed run's error, and carried by the notification.
    pub fn change_status(
        &mut self,
        task: &Task,
        change: &StatusChange,
    ) -> Result<StatusOutcome, hive_models::Error> {
        let id = task.id;
        let previous = task.status;
        let to = change.status;
        let requeue = change.requeue && to == TaskStatus::Queued;
        if requeue {
            previous.check_requeue()?;
        } else {
            previous.check_transition(to)?;
        }
        if to == TaskStatus::Queued && previous.is_terminal() {
            if previous.never_completes() {
                self.check_plan_runs_on(task)?;
            }
            self.check_dependencies_can_complete(task)?;
        }
        let mut effects = Effects::default();
        let reason = change.reason.as_ref();
        if previous != to {
            // The run a cancellation closes goes with its notification: a worker told of it
            // late stops that run, not a newer one of the task queued again since.
            let mut closed = None;
            if previous.is_active() {
                closed = self.close_run(id, |r| RunPatch {
                    error: reason.map(|why| Some(why.clone())),
                    ..RunPatch::close(r, RunStatus::on_task_leaving_for(to))
                });
            }
            if to == TaskStatus::Queued {
                self.requeue(id, None);
                // Back in the queue it waits again for every dependency not completed now
                // (one may have been requeued while it was held or in review), and its
                // result is no longer its outcome (a failure next must not read as the
                // earlier success). Recounted here, a change of one task alone: in a
                // worker's batch a dependency may complete in the same statement, which a
                // recount would not see on Postgres.
                self.patch(id).recount_pending = true;
                if previous.is_terminal() {
                    self.patch(id).result = Some(None);
                    self.reopen(id, task.plan_id, previous);
                }
            } else {
                self.set_status(id, to);
            }
            self.task_note(Change::TaskStatus(TaskStatusChange {
                plan_id: task.plan_id,
                error: reason.map(|why| note_error(why)),
                run_id: closed.filter(|_| to == TaskStatus::Cancelled),
                ..TaskStatusChange::new(id, to)
            }));
            if to.is_terminal() {
                effects = self.on_terminal(id);
            }
        } else if requeue {
            // Queued already, maybe waiting out a retry's backoff or a start delay: asked
            // to queue it again, it may run now.
            self.requeue(id, None);
            self.task_note(Change::TaskStatus(TaskStatusChange {
                plan_id: task.plan_id,
                ..TaskStatusChange::new(id, to)
            }));
        }
        if let Some(why) = reason {
            self.patch(id).error = Some(why.clone());
        }
        if let Some(patch) = &change.metadata {
            let mut metadata = task.metadata.clone();
            hive_models::merge_metadata(&mut metadata, patch);
            self.patch(id).metadata = Some(metadata);
        }
        Ok(StatusOutcome { previous, effects })
    }

    /// Cancels a plan that is not finished and its open tasks (`open`, in insertion order),
    /// closing their running runs; a failed plan's open tasks are cancelled and it stays
    /// failed ([`PlanStatus::may_cancel`]). Returns the tasks cancelled; none when the plan
    /// is completed or cancelled already (or unknown).
    pub fn cancel_plan(&mut self, plan: PlanId, open: &[TaskId]) -> Vec<TaskId> {
        let Some(mut counters) = self.plan_counters(plan) else {
            return Vec::new();
        };
        if !counters.status.may_cancel() {
            return Vec::new();
        }
        if counters.status != PlanStatus::Failed {
            let note = self.notifier.plan_status(plan, PlanStatus::Cancelled);
            self.notes.push(note);
            counters.status = PlanStatus::Cancelled;
        }
        let mut cancelled = Vec::with_capacity(open.len());
        for &id in open {
            let Some(t) = self.state(id) else { continue };
            if t.status.is_terminal() {
                continue;
            }
            let closed = self.close_run(id, |r| RunPatch::close(r, RunStatus::Cancelled));
            self.set_status(id, TaskStatus::Cancelled);
            self.task_note(Change::TaskStatus(TaskStatusChange {
                plan_id: Some(plan),
                run_id: closed,
                ..TaskStatusChange::new(id, TaskStatus::Cancelled)
            }));
            cancelled.push(id);
        }
        let n = u32::try_from(cancelled.len()).unwrap_or(u32::MAX);
        counters.cancelled = counters.cancelled.saturating_add(n);
        self.set_plan(plan, counters);
        cancelled
    }

    /// Gives a failed or cancelled plan another go: its failed and cancelled tasks (among
    /// `tasks`, in insertion order) go back to the queue, each waiting again for its
    /// dependencies not completed, with its attempts back at 0, and the plan is in progress
    /// again — or, with nothing to requeue, takes the status its counts call for. Completed
    /// tasks keep their outputs and are not run again. Returns the tasks requeued; `None` when the plan is unknown or
    /// neither failed nor cancelled.
    pub fn retry_plan(&mut self, plan: PlanId, tasks: &[TaskId]) -> Option<Vec<TaskId>> {
        let mut counters = self.plan_counters(plan)?;
        counters.check_retry().ok()?;
        let mut requeued = Vec::new();
        for &id in tasks {
            let Some(t) = self.state(id) else { continue };
            if !matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled) {
                continue;
            }
            self.requeue(id, None);
            let patch = self.patch(id);
            patch.recount_pending = true;
            // A fresh retry and snooze budget: the cause was fixed, so one more blip must
            // not fail the subtask for good at once. (Run numbers keep counting.)
            patch.attempts_delta = -i32::try_from(t.attempts).unwrap_or(i32::MAX);
            patch.snoozes_delta = -i32::try_from(t.snoozes).unwrap_or(i32::MAX);
            counters.unstep(t.status);
            self.task_note(Change::TaskStatus(TaskStatusChange {
                plan_id: Some(plan),
                ..TaskStatusChange::new(id, TaskStatus::Queued)
            }));
            requeued.push(id);
        }
        counters.status = PlanStatus::InProgress;
        // A plan whose failed subtask was retried alone and completed has nothing left to
        // run: it finishes now rather than waiting for a subtask that will not come.
        counters.status = counters.settled().unwrap_or(PlanStatus::InProgress);
        if requeued.is_empty() && counters.finished() == 0 && counters.total > 0 {
            // Cancelled before its tasks were created (a cancel finishes the open tasks
            // of any other): pending again, for them to be created.
            counters.status = PlanStatus::Pending;
        }
        let note = self.notifier.plan_status(plan, counters.status);
        self.notes.push(note);
        self.set_plan(plan, counters);
        Some(requeued)
    }

    fn plan_counters(&self, id: PlanId) -> Option<PlanCounters> {
        self.plans.get(&id).copied().or_else(|| self.view.plan(id))
    }

    fn set_plan(&mut self, id: PlanId, counters: PlanCounters) {
        if self.plans.insert(id, counters).is_none() {
            self.touched.push(id);
        }
    }

    /// Applies the dependency and plan rules after `id` reached a terminal status: the
    /// task's own plan counts it first (so a failure's cancelled descendants find the plan
    /// failed already), then a completion counts down its dependents, and a failure or
    /// cancellation cancels every unfinished transitive dependent, breadth-first, never
    /// through a finished task.
    fn on_terminal(&mut self, id: TaskId) -> Effects {
        let mut fx = Effects::default();
        let Some(task) = self.state(id) else {
            return fx;
        };
        if let Some(pid) = task.plan_id {
            self.count_for_plan(pid, task.status, &mut fx);
        }
        if task.status == TaskStatus::Completed {
            self.completed.push(id);
            return fx;
        }
        let mut queue: VecDeque<TaskId> = self.view.dependents(id).into();
        let mut seen = IdSet::default();
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d) {
                continue;
            }
            let Some(t) = self.state(d) else { continue };
            if t.status.is_terminal() {
                continue;
            }
            let closed = self.close_run(d, |r| RunPatch::close(r, RunStatus::Cancelled));
            self.set_status(d, TaskStatus::Cancelled);
            self.task_note(Change::TaskStatus(TaskStatusChange {
                plan_id: t.plan_id,
                run_id: closed,
                ..TaskStatusChange::new(d, TaskStatus::Cancelled)
            }));
            fx.cancelled.push(d);
            if let Some(pid) = t.plan_id {
                self.count_for_plan(pid, TaskStatus::Cancelled, &mut fx);
            }
            queue.extend(self.view.dependents(d));
        }
        fx
    }

    /// A finished task back in the queue is no longer finished: its plan stops counting it,
    /// and its dependents that have not started wait for it again.
    fn reopen(&mut self, id: TaskId, plan: Option<PlanId>, previous: TaskStatus) {
        if let Some(pid) = plan
            && let Some(mut counters) = self.plan_counters(pid)
        {
            counters.unstep(previous);
            self.set_plan(pid, counters);
        }
        if previous == TaskStatus::Completed {
            self.reopened.push(id);
        }
    }

    /// The plan rule for one of its tasks reaching `status`; a move is announced and
    /// recorded in `fx` (the last one wins).
    fn count_for_plan(&mut self, pid: PlanId, status: TaskStatus, fx: &mut Effects) {
        let Some(mut counters) = self.plan_counters(pid) else {
            return;
        };
        let moved = counters.step(status);
        self.set_plan(pid, counters);
        if let Some(to) = moved {
            let note = self.notifier.plan_status(pid, to);
            self.notes.push(note);
            fx.plan_transition = Some((pid, to));
        }
    }

    /// The batch's changes, for the backend to write.
    pub fn into_patches(self) -> Patches {
        let plans = self
            .touched
            .iter()
            .filter_map(|id| self.plans.get(id).map(|c| (*id, *c)))
            .collect();
        Patches {
            runs: self.runs,
            tasks: self.task_patches,
            completed: self.completed,
            reopened: self.reopened,
            plans,
            notes: self.notes,
        }
    }
}
