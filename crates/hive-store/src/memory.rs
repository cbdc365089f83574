//! [`MemoryStore`]: every table in plain maps behind one mutex, so each method is atomic.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DurationRound, Utc};
use hive_models::{
    ExecutionPlan, Json, NewPlan, NewTask, PlanId, PlanStatus, Run, RunId, RunStatus, Task, TaskId,
    TaskStatus, Timestamp, Worker, WorkerId, WorkerStatus,
};
use tokio::sync::broadcast;

use crate::{
    Backend, Claim, ClaimParams, Error, FinishReport, Finished, HeartbeatReport, Notification,
    Notifier, Outcome, PruneParams, ReapParams, ReapReport, Result, RunOutcome, StatusChange,
    StatusChanged, StatusCounts, Store, TaskFilter, WorkerFilter, WorkerRegistration,
};

/// An in-process store: one mutex over plain maps; no persistence.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    notifier: Notifier,
}

/// Ready-queue key: priority descending, then insertion order.
type ReadyKey = (Reverse<i32>, u64, TaskId);

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    tasks: HashMap<TaskId, (Task, u64)>,
    /// Queued tasks with no pending dependency (their `run_at` is checked when claiming).
    ready: BTreeSet<ReadyKey>,
    idempotency: HashMap<String, TaskId>,
    dependents: HashMap<TaskId, Vec<TaskId>>,
    runs: HashMap<RunId, Run>,
    task_runs: HashMap<TaskId, Vec<RunId>>,
    /// Running runs and their lease durations.
    running: HashMap<RunId, Duration>,
    workers: BTreeMap<WorkerId, Worker>,
    plans: HashMap<PlanId, ExecutionPlan>,
    plan_tasks: HashMap<PlanId, Vec<TaskId>>,
}

/// The database backends keep microseconds; so does this one, to behave the same.
fn now() -> Timestamp {
    let t = Utc::now();
    t.duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or(t)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Merges a JSON object's top-level keys into `target` (replacing a non-object target).
pub(crate) fn merge_metadata(target: &mut Json, patch: &Json) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                t.insert(k.clone(), v.clone());
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The run status a run closes with when its task leaves an active status for `to`.
pub(crate) fn run_status_on_leave(to: TaskStatus) -> RunStatus {
    match to {
        TaskStatus::Completed | TaskStatus::ReviewPending | TaskStatus::Approved => {
            RunStatus::Success
        }
        TaskStatus::Failed => RunStatus::Failure,
        _ => RunStatus::Cancelled,
    }
}

/// What a terminal change did beyond the task itself.
#[derive(Default)]
struct Effects {
    cancelled: Vec<TaskId>,
    plan_transition: Option<(PlanId, PlanStatus)>,
}

impl State {
    fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(|(t, _)| t)
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(&id).map(|(t, _)| t)
    }

    /// Puts the task in or out of the ready index to match its state.
    fn sync_ready(&mut self, id: TaskId) {
        let Some((t, seq)) = self.tasks.get(&id) else {
            return;
        };
        let key = (Reverse(t.priority), *seq, id);
        if t.status == TaskStatus::Queued && t.pending_dependencies == 0 {
            self.ready.insert(key);
        } else {
            self.ready.remove(&key);
        }
    }

    /// Claims up to `p.limit` ready tasks (see [`Store::claim_tasks`]).
    fn claim(
        &mut self,
        p: &ClaimParams,
        at: Timestamp,
        notes: &mut Vec<Notification>,
        n: &Notifier,
    ) -> Vec<Claim> {
        let lease_until = add(at, p.lease);
        let picked: Vec<TaskId> = self
            .ready
            .iter()
            .filter_map(|(_, _, id)| self.task(*id))
            .filter(|t| t.run_at.is_none_or(|r| r <= at))
            .filter(|t| p.task_types.is_empty() || p.task_types.contains(&t.task_type))
            .take(p.limit as usize)
            .map(|t| t.id)
            .collect();
        let mut claims = Vec::with_capacity(picked.len());
        for id in picked {
            let run_number = self.task_runs.get(&id).map_or(0, Vec::len) as u32 + 1;
            let Some(task) = self.task(id) else { continue };
            let run = Run::claimed(
                RunId::new(),
                task,
                p.worker_id.clone(),
                run_number,
                at,
                Some(lease_until),
            );
            let Some(t) = self.task_mut(id) else { continue };
            t.status = TaskStatus::InProgress;
            t.assigned_worker = Some(p.worker_id.clone());
            t.attempts += 1;
            t.current_run_id = Some(run.id);
            t.updated_at = at;
            let task = t.clone();
            self.sync_ready(id);
            self.task_runs.entry(id).or_default().push(run.id);
            self.running.insert(run.id, p.lease);
            self.runs.insert(run.id, run.clone());
            if let Some(pid) = task.plan_id
                && let Some(plan) = self.plans.get_mut(&pid)
                && plan.start_execution()
            {
                plan.updated_at = at;
                notes.push(n.plan_status(pid, PlanStatus::InProgress));
            }
            notes.push(n.task_status(id, TaskStatus::InProgress));
            claims.push(Claim { task, run });
        }
        claims
    }

    /// Finishes runs in order (see [`Store::finish_runs`]).
    fn finish(
        &mut self,
        outcomes: &[RunOutcome],
        at: Timestamp,
        notes: &mut Vec<Notification>,
        n: &Notifier,
    ) -> Vec<FinishReport> {
        let mut reports = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let task_id = self.runs.get(&o.run_id).map(|r| r.task_id);
            let stale = FinishReport {
                run_id: o.run_id,
                task_id,
                finished: Finished::Stale,
                plan_id: None,
                cancelled_dependents: Vec::new(),
                plan_transition: None,
            };
            let Some(task_id) = self.current_running(o.run_id) else {
                reports.push(stale);
                continue;
            };
            self.running.remove(&o.run_id);
            if let Some(run) = self.runs.get_mut(&o.run_id) {
                run.output_log.clone_from(&o.output_log);
                match &o.outcome {
                    Outcome::Success { result } => run.succeed(result.clone(), at),
                    Outcome::Failure { error, .. } => run.fail(error.clone(), at),
                }
            }
            let plan_id = self.task(task_id).and_then(|t| t.plan_id);
            let (finished, fx) = match &o.outcome {
                Outcome::Success { result } => {
                    if let Some(t) = self.task_mut(task_id) {
                        t.status = TaskStatus::Completed;
                        t.result.clone_from(result);
                        t.updated_at = at;
                    }
                    notes.push(n.task_status(task_id, TaskStatus::Completed));
                    (Finished::Completed, self.on_terminal(task_id, at, notes, n))
                }
                Outcome::Failure { error, retry } => {
                    self.fail_attempt(task_id, error, *retry, at, notes, n)
                }
            };
            reports.push(FinishReport {
                run_id: o.run_id,
                task_id: Some(task_id),
                finished,
                plan_id,
                cancelled_dependents: fx.cancelled,
                plan_transition: fx.plan_transition.map(|(_, st)| st),
            });
        }
        reports
    }

    fn insert_task(&mut self, id: TaskId, new: NewTask, at: Timestamp) -> TaskId {
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.idempotency.get(key) {
                return *existing;
            }
            self.idempotency.insert(key.clone(), id);
        }
        let task = Task::from_new(id, new, at);
        self.next_seq += 1;
        self.tasks.insert(id, (task, self.next_seq));
        self.sync_ready(id);
        id
    }

    /// Closes the task's current run if it is running.
    fn close_current_run(&mut self, task_id: TaskId, status: RunStatus, at: Timestamp) {
        let Some(run_id) = self.task(task_id).and_then(|t| t.current_run_id) else {
            return;
        };
        if self.running.remove(&run_id).is_none() {
            return;
        }
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.status = status;
            run.completed_at = Some(at);
            run.lease_expires_at = None;
        }
    }

    /// Applies the dependency and plan rules after `id` reached a terminal status.
    fn on_terminal(
        &mut self,
        id: TaskId,
        at: Timestamp,
        notes: &mut Vec<Notification>,
        n: &Notifier,
    ) -> Effects {
        let mut fx = Effects::default();
        let Some(task) = self.task(id) else {
            return fx;
        };
        let status = task.status;
        let plan_id = task.plan_id;
        if let Some(pid) = plan_id {
            // The task's own plan update comes first in counting, so a failure's
            // cancelled descendants find the plan failed already.
            if let Some((p, s)) = self.update_plan(pid, status, at) {
                notes.push(n.plan_status(p, s));
                fx.plan_transition = Some((p, s));
            }
        }
        if status == TaskStatus::Completed {
            for d in self.dependents.get(&id).cloned().unwrap_or_default() {
                if let Some(t) = self.task_mut(d) {
                    t.pending_dependencies = t.pending_dependencies.saturating_sub(1);
                    if t.status == TaskStatus::Queued && t.pending_dependencies == 0 {
                        notes.push(n.task_ready(d));
                    }
                }
                self.sync_ready(d);
            }
        } else {
            let mut queue: VecDeque<TaskId> =
                self.dependents.get(&id).cloned().unwrap_or_default().into();
            let mut seen = HashSet::new();
            while let Some(d) = queue.pop_front() {
                if !seen.insert(d) {
                    continue;
                }
                let Some(t) = self.task(d) else { continue };
                if t.status.is_terminal() {
                    continue;
                }
                self.close_current_run(d, RunStatus::Cancelled, at);
                if let Some(t) = self.task_mut(d) {
                    t.status = TaskStatus::Cancelled;
                    t.updated_at = at;
                }
                self.sync_ready(d);
                notes.push(n.task_status(d, TaskStatus::Cancelled));
                fx.cancelled.push(d);
                if let Some(pid) = self.task(d).and_then(|t| t.plan_id)
                    && let Some((p, s)) = self.update_plan(pid, TaskStatus::Cancelled, at)
                {
                    notes.push(n.plan_status(p, s));
                    fx.plan_transition = Some((p, s));
                }
                queue.extend(self.dependents.get(&d).cloned().unwrap_or_default());
            }
        }
        fx
    }

    /// Plan counters and status after one of its tasks reached `status`.
    fn update_plan(
        &mut self,
        pid: PlanId,
        status: TaskStatus,
        at: Timestamp,
    ) -> Option<(PlanId, PlanStatus)> {
        let plan = self.plans.get_mut(&pid)?;
        match status {
            TaskStatus::Completed => plan.increment_completed(),
            TaskStatus::Failed => plan.increment_failed(),
            TaskStatus::Cancelled => plan.increment_cancelled(),
            _ => {}
        }
        plan.updated_at = at;
        let to = plan.status_after(status)?;
        plan.status = to;
        Some((pid, to))
    }

    fn requeue_after(&mut self, id: TaskId, run_at: Option<Timestamp>, at: Timestamp) {
        if let Some(t) = self.task_mut(id) {
            t.status = TaskStatus::Queued;
            t.assigned_worker = None;
            t.run_at = run_at;
            t.updated_at = at;
        }
        self.sync_ready(id);
    }

    /// Fails or requeues a task after its run failed or timed out.
    fn fail_attempt(
        &mut self,
        id: TaskId,
        error: &str,
        retry: Option<hive_models::RetryPolicy>,
        at: Timestamp,
        notes: &mut Vec<Notification>,
        n: &Notifier,
    ) -> (Finished, Effects) {
        let Some(t) = self.task_mut(id) else {
            return (Finished::Stale, Effects::default());
        };
        t.last_error = Some(error.to_owned());
        let attempts = t.attempts;
        match retry {
            Some(policy) if attempts <= t.max_retries => {
                let run_at = add(at, policy.backoff(attempts));
                self.requeue_after(id, Some(run_at), at);
                notes.push(n.task_status(id, TaskStatus::Queued));
                (Finished::Retrying { run_at }, Effects::default())
            }
            _ => {
                t.status = TaskStatus::Failed;
                t.updated_at = at;
                self.sync_ready(id);
                notes.push(n.task_status(id, TaskStatus::Failed));
                let fx = self.on_terminal(id, at, notes, n);
                (Finished::Failed, fx)
            }
        }
    }

    fn release(&mut self, run_id: RunId, at: Timestamp) -> Option<TaskId> {
        let task_id = self.current_running(run_id)?;
        self.close_current_run(task_id, RunStatus::Cancelled, at);
        if let Some(t) = self.task_mut(task_id) {
            t.attempts = t.attempts.saturating_sub(1);
        }
        self.requeue_after(task_id, None, at);
        Some(task_id)
    }

    /// The task whose current running run this is, if the run is not stale.
    fn current_running(&self, run_id: RunId) -> Option<TaskId> {
        if !self.running.contains_key(&run_id) {
            return None;
        }
        let task_id = self.runs.get(&run_id)?.task_id;
        (self.task(task_id)?.current_run_id == Some(run_id)).then_some(task_id)
    }

    fn remove_task(&mut self, id: TaskId) -> bool {
        let Some((task, seq)) = self.tasks.remove(&id) else {
            return false;
        };
        self.ready.remove(&(Reverse(task.priority), seq, id));
        if let Some(k) = &task.idempotency_key {
            self.idempotency.remove(k);
        }
        for r in self.task_runs.remove(&id).unwrap_or_default() {
            self.runs.remove(&r);
            self.running.remove(&r);
        }
        for dep in &task.dependencies {
            if let Some(list) = self.dependents.get_mut(dep) {
                list.retain(|x| *x != id);
            }
        }
        for d in self.dependents.remove(&id).unwrap_or_default() {
            if let Some(t) = self.task_mut(d) {
                t.dependencies.retain(|x| *x != id);
                if task.status != TaskStatus::Completed {
                    t.pending_dependencies = t.pending_dependencies.saturating_sub(1);
                }
            }
            self.sync_ready(d);
        }
        if let Some(pid) = task.plan_id
            && let Some(list) = self.plan_tasks.get_mut(&pid)
        {
            list.retain(|x| *x != id);
        }
        true
    }

    fn sorted(&self, mut tasks: Vec<&(Task, u64)>) -> Vec<Task> {
        tasks.sort_by_key(|(t, seq)| (Reverse(t.priority), *seq));
        tasks.into_iter().map(|(t, _)| t.clone()).collect()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change visible to
        // callers in a way they could act on differently, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, notes: Vec<Notification>) {
        self.notifier.send_all(notes);
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> Backend {
        Backend::Memory
    }

    fn origin(&self) -> uuid::Uuid {
        self.notifier.origin()
    }

    async fn now(&self) -> Result<Timestamp> {
        Ok(now())
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Notification>> {
        Ok(self.notifier.subscribe())
    }

    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>> {
        let at = now();
        let single = tasks.len() == 1;
        let ids: Vec<TaskId> = {
            let mut s = self.lock();
            tasks
                .into_iter()
                .map(|t| s.insert_task(TaskId::new(), t, at))
                .collect()
        };
        let first = ids.first().copied().filter(|_| single);
        if !ids.is_empty() {
            self.send(vec![self.notifier.task_created(first)]);
        }
        Ok(ids)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.lock().task(id).cloned())
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        let at = now();
        let s = self.lock();
        let limit = f.limit.map_or(usize::MAX, |l| l as usize);
        let matches = |t: &Task| {
            f.status.is_none_or(|st| t.status == st)
                && f.task_type.as_ref().is_none_or(|ty| &t.task_type == ty)
                && f.plan_id.is_none_or(|p| t.plan_id == Some(p))
                && (!f.ready_only || t.is_ready_at(at))
        };
        if f.ready_only {
            return Ok(s
                .ready
                .iter()
                .filter_map(|(_, _, id)| s.task(*id))
                .filter(|t| matches(t))
                .take(limit)
                .cloned()
                .collect());
        }
        let rows: Vec<&(Task, u64)> = match f.plan_id {
            Some(p) => s
                .plan_tasks
                .get(&p)
                .map(|ids| ids.iter().filter_map(|i| s.tasks.get(i)).collect())
                .unwrap_or_default(),
            None => s.tasks.values().collect(),
        };
        let rows = rows.into_iter().filter(|(t, _)| matches(t)).collect();
        let mut out = s.sorted(rows);
        out.truncate(limit);
        Ok(out)
    }

    async fn count_tasks(&self, plan_id: Option<PlanId>) -> Result<StatusCounts> {
        let s = self.lock();
        let mut counts = StatusCounts::new();
        for (t, _) in s.tasks.values() {
            if plan_id.is_none_or(|p| t.plan_id == Some(p)) {
                *counts.entry(t.status).or_default() += 1;
            }
        }
        Ok(counts)
    }

    async fn set_task_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>> {
        let at = now();
        let mut notes = Vec::new();
        let out = {
            let mut s = self.lock();
            let Some(task) = s.task(id) else {
                return Ok(None);
            };
            let previous = task.status;
            let deps = task.dependencies.clone();
            let old_pending = task.pending_dependencies;
            let to = change.status;
            let requeue = change.requeue && to == TaskStatus::Queued && previous.can_requeue();
            if !requeue {
                previous.check_transition(to)?;
            }
            let mut fx = Effects::default();
            if previous != to {
                if previous.is_active() {
                    s.close_current_run(id, run_status_on_leave(to), at);
                }
                let pending = if requeue && previous.is_terminal() {
                    deps.iter()
                        .filter(|d| {
                            s.task(**d)
                                .is_some_and(|t| t.status != TaskStatus::Completed)
                        })
                        .count() as u32
                } else {
                    old_pending
                };
                if let Some(t) = s.task_mut(id) {
                    t.status = to;
                    t.updated_at = at;
                    t.pending_dependencies = pending;
                    if to == TaskStatus::Queued {
                        t.assigned_worker = None;
                        t.run_at = None;
                    }
                }
                s.sync_ready(id);
                notes.push(self.notifier.task_status(id, to));
                if to.is_terminal() {
                    fx = s.on_terminal(id, at, &mut notes, &self.notifier);
                }
            }
            if let (Some(patch), Some(t)) = (&change.metadata, s.task_mut(id)) {
                merge_metadata(&mut t.metadata, patch);
                t.updated_at = at;
            }
            let task = s
                .task(id)
                .cloned()
                .ok_or_else(|| Error::not_found("task", id))?;
            StatusChanged {
                previous,
                task,
                cancelled_dependents: fx.cancelled,
                plan_transition: fx.plan_transition,
            }
        };
        self.send(notes);
        Ok(Some(out))
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool> {
        let mut s = self.lock();
        let Some(task) = s.task(id) else {
            return Ok(false);
        };
        let plan_status = task.plan_id.and_then(|p| s.plans.get(&p)).map(|p| p.status);
        let open_dependents = s.dependents.get(&id).map_or(0, |ds| {
            ds.iter()
                .filter(|d| s.task(**d).is_some_and(|t| !t.status.is_terminal()))
                .count()
        });
        task.check_deletable(plan_status, open_dependents)?;
        Ok(s.remove_task(id))
    }

    async fn prune_tasks(&self, p: &PruneParams) -> Result<u64> {
        if let Some(bad) = p.statuses.iter().find(|s| !s.is_terminal()) {
            return Err(hive_models::Error::InvalidField {
                field: "statuses".into(),
                reason: format!("only terminal tasks can be pruned, not `{bad}`"),
            }
            .into());
        }
        let cutoff = sub(now(), p.older_than);
        let mut s = self.lock();
        let mut old: Vec<(Timestamp, TaskId)> = s
            .tasks
            .values()
            .filter(|(t, _)| p.statuses.contains(&t.status) && t.updated_at < cutoff)
            .map(|(t, _)| (t.updated_at, t.id))
            .collect();
        old.sort();
        old.truncate(p.limit as usize);
        for (_, id) in &old {
            s.remove_task(*id);
        }
        Ok(old.len() as u64)
    }

    async fn claim_tasks(&self, p: &ClaimParams) -> Result<Vec<Claim>> {
        let mut notes = Vec::new();
        let claims = self.lock().claim(p, now(), &mut notes, &self.notifier);
        self.send(notes);
        Ok(claims)
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<Vec<FinishReport>> {
        let mut notes = Vec::new();
        let reports = self
            .lock()
            .finish(outcomes, now(), &mut notes, &self.notifier);
        self.send(notes);
        Ok(reports)
    }

    async fn finish_and_claim(
        &self,
        outcomes: &[RunOutcome],
        claim: &ClaimParams,
    ) -> Result<(Vec<FinishReport>, Vec<Claim>)> {
        let mut notes = Vec::new();
        let (reports, claims) = {
            let mut s = self.lock();
            // Read the clock under the lock: a time read before waiting for it could
            // predate a change committed meanwhile (a claimed child would seem to start
            // before its parent completed).
            let at = now();
            let reports = s.finish(outcomes, at, &mut notes, &self.notifier);
            let claims = s.claim(claim, at, &mut notes, &self.notifier);
            (reports, claims)
        };
        Notifier::drop_claimed_ready(&mut notes, &claims);
        self.send(notes);
        Ok((reports, claims))
    }

    async fn extend_lease(&self, run_id: RunId, lease: Duration) -> Result<Timestamp> {
        let until = add(now(), lease);
        let mut s = self.lock();
        if s.current_running(run_id).is_none() {
            return Err(Error::StaleRun { run_id });
        }
        s.running.insert(run_id, lease);
        if let Some(run) = s.runs.get_mut(&run_id) {
            run.lease_expires_at = Some(until);
        }
        Ok(until)
    }

    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        let at = now();
        let released: Vec<TaskId> = {
            let mut s = self.lock();
            run_ids.iter().filter_map(|r| s.release(*r, at)).collect()
        };
        self.send(
            released
                .iter()
                .map(|id| self.notifier.task_status(*id, TaskStatus::Queued))
                .collect(),
        );
        Ok(released)
    }

    async fn reap(&self, p: &ReapParams) -> Result<ReapReport> {
        let at = now();
        let mut notes = Vec::new();
        let mut report = ReapReport::default();
        {
            let mut s = self.lock();
            let mut expired: Vec<(Timestamp, RunId)> = s
                .running
                .keys()
                .filter_map(|r| s.runs.get(r))
                .filter_map(|r| r.lease_expires_at.filter(|l| *l < at).map(|l| (l, r.id)))
                .collect();
            expired.sort();
            expired.truncate(p.limit as usize);
            for (_, run_id) in expired {
                let Some(task_id) = s.current_running(run_id) else {
                    continue;
                };
                s.running.remove(&run_id);
                if let Some(run) = s.runs.get_mut(&run_id) {
                    run.timeout(at);
                }
                let (finished, fx) = s.fail_attempt(
                    task_id,
                    "lease expired",
                    Some(p.retry),
                    at,
                    &mut notes,
                    &self.notifier,
                );
                match finished {
                    Finished::Retrying { .. } => report.requeued.push((task_id, run_id)),
                    _ => report.failed.push(task_id),
                }
                report.plan_transitions.extend(fx.plan_transition);
            }
            let stale_before = sub(at, p.heartbeat_timeout);
            for w in s.workers.values_mut() {
                if w.is_active() && w.last_heartbeat < stale_before {
                    w.mark_offline();
                    notes.push(self.notifier.worker(w.id.clone(), WorkerStatus::Offline));
                    report.offline_workers.push(w.id.clone());
                }
            }
        }
        self.send(notes);
        Ok(report)
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        Ok(self.lock().runs.get(&id).cloned())
    }

    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        let s = self.lock();
        Ok(s.task_runs
            .get(&task_id)
            .map(|ids| ids.iter().filter_map(|r| s.runs.get(r).cloned()).collect())
            .unwrap_or_default())
    }

    async fn register_worker(&self, r: &WorkerRegistration) -> Result<Worker> {
        let at = now();
        let worker = {
            let mut s = self.lock();
            let w = s.workers.entry(r.id.clone()).or_insert_with(|| Worker {
                id: r.id.clone(),
                role: String::new(),
                status: WorkerStatus::Active,
                last_heartbeat: at,
                capabilities: Vec::new(),
                current_task_id: None,
                registered_at: at,
                metadata: Json::Null,
            });
            w.role.clone_from(&r.role);
            w.capabilities.clone_from(&r.capabilities);
            w.metadata.clone_from(&r.metadata);
            w.status = WorkerStatus::Active;
            w.last_heartbeat = at;
            w.clone()
        };
        self.send(vec![
            self.notifier.worker(r.id.clone(), WorkerStatus::Active),
        ]);
        Ok(worker)
    }

    async fn heartbeat(
        &self,
        id: &WorkerId,
        status: Option<WorkerStatus>,
    ) -> Result<Option<HeartbeatReport>> {
        let at = now();
        let mut s = self.lock();
        let Some(w) = s.workers.get_mut(id) else {
            return Ok(None);
        };
        w.last_heartbeat = at;
        if let Some(st) = status {
            w.status = st;
        }
        let State { running, runs, .. } = &mut *s;
        let mut extended = 0;
        for (run_id, lease) in running.iter() {
            if let Some(run) = runs.get_mut(run_id)
                && &run.worker_id == id
            {
                run.lease_expires_at = Some(add(at, *lease));
                extended += 1;
            }
        }
        Ok(Some(HeartbeatReport { extended }))
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<Worker>> {
        Ok(self.lock().workers.get(id).cloned())
    }

    async fn list_workers(&self, f: &WorkerFilter) -> Result<Vec<Worker>> {
        let at = now();
        let s = self.lock();
        Ok(s.workers
            .values()
            .filter(|w| f.role.as_ref().is_none_or(|r| &w.role == r))
            .filter(|w| {
                f.alive_within
                    .is_none_or(|d| w.is_active() && w.last_heartbeat >= sub(at, d))
            })
            .cloned()
            .collect())
    }

    async fn unregister_worker(&self, id: &WorkerId) -> Result<Option<Vec<TaskId>>> {
        let at = now();
        let released = {
            let mut s = self.lock();
            if s.workers.remove(id).is_none() {
                return Ok(None);
            }
            let mine: Vec<RunId> = s
                .running
                .keys()
                .filter(|r| s.runs.get(r).is_some_and(|run| &run.worker_id == id))
                .copied()
                .collect();
            mine.into_iter()
                .filter_map(|r| s.release(r, at))
                .collect::<Vec<_>>()
        };
        let mut notes: Vec<Notification> = released
            .iter()
            .map(|t| self.notifier.task_status(*t, TaskStatus::Queued))
            .collect();
        notes.push(self.notifier.worker(id.clone(), WorkerStatus::Offline));
        self.send(notes);
        Ok(Some(released))
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId> {
        let id = PlanId::new();
        let plan = ExecutionPlan::from_new(id, plan, now());
        self.lock().plans.insert(id, plan);
        Ok(id)
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>> {
        Ok(self.lock().plans.get(&id).cloned())
    }

    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        let s = self.lock();
        let mut plans: Vec<ExecutionPlan> = s
            .plans
            .values()
            .filter(|p| status.is_none_or(|st| p.status == st))
            .cloned()
            .collect();
        plans.sort_by_key(|p| Reverse((p.created_at, p.id)));
        plans.truncate(limit.map_or(usize::MAX, |l| l as usize));
        Ok(plans)
    }

    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>> {
        let at = now();
        let created = {
            let mut s = self.lock();
            let Some(plan) = s.plans.get_mut(&id) else {
                return Ok(None);
            };
            if plan.materialized {
                return Ok(Some(0));
            }
            plan.materialized = true;
            plan.updated_at = at;
            let subtasks = plan.subtasks.clone();
            let parent = plan.parent_task_id;
            let ids: HashMap<&str, TaskId> = subtasks
                .iter()
                .map(|st| (st.id.as_str(), TaskId::new()))
                .collect();
            let mut order = Vec::with_capacity(subtasks.len());
            for st in &subtasks {
                let tid = ids[st.id.as_str()];
                let deps: Vec<TaskId> = hive_models::unique_dependencies(st)
                    .into_iter()
                    .filter_map(|d| ids.get(d).copied())
                    .collect();
                let new = st.to_new_task(parent);
                s.insert_task(tid, new, at);
                for d in &deps {
                    s.dependents.entry(*d).or_default().push(tid);
                }
                if let Some(t) = s.task_mut(tid) {
                    t.plan_id = Some(id);
                    t.plan_subtask_id = Some(st.id.clone());
                    t.pending_dependencies = deps.len() as u32;
                    t.dependencies = deps;
                }
                s.sync_ready(tid);
                order.push(tid);
            }
            let n = order.len() as u64;
            s.plan_tasks.insert(id, order);
            n
        };
        self.send(vec![self.notifier.task_created(None)]);
        Ok(Some(created))
    }

    async fn transition_plan(&self, id: PlanId, from: PlanStatus, to: PlanStatus) -> Result<bool> {
        let changed = {
            let mut s = self.lock();
            match s.plans.get_mut(&id) {
                Some(p) if p.status == from => {
                    p.status = to;
                    p.updated_at = now();
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.send(vec![self.notifier.plan_status(id, to)]);
        }
        Ok(changed)
    }

    async fn cancel_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        let at = now();
        let mut notes = Vec::new();
        let cancelled = {
            let mut s = self.lock();
            let Some(plan) = s.plans.get_mut(&id) else {
                return Ok(None);
            };
            if !plan.cancel() {
                return Ok(Some(Vec::new()));
            }
            plan.updated_at = at;
            notes.push(self.notifier.plan_status(id, PlanStatus::Cancelled));
            let ids = s.plan_tasks.get(&id).cloned().unwrap_or_default();
            let mut cancelled = Vec::new();
            for tid in ids {
                let Some(t) = s.task(tid) else { continue };
                if t.status.is_terminal() {
                    continue;
                }
                if t.status.is_active() {
                    s.close_current_run(tid, RunStatus::Cancelled, at);
                }
                if let Some(t) = s.task_mut(tid) {
                    t.status = TaskStatus::Cancelled;
                    t.updated_at = at;
                }
                s.sync_ready(tid);
                notes.push(self.notifier.task_status(tid, TaskStatus::Cancelled));
                cancelled.push(tid);
            }
            if let Some(plan) = s.plans.get_mut(&id) {
                plan.cancelled_subtasks = plan
                    .cancelled_subtasks
                    .saturating_add(cancelled.len() as u32);
            }
            cancelled
        };
        self.send(notes);
        Ok(Some(cancelled))
    }

    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>> {
        let s = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let t = s.task(*id)?;
                let met = t
                    .dependencies
                    .iter()
                    .all(|d| s.task(*d).is_none_or(|x| x.status == TaskStatus::Completed));
                Some((*id, met))
            })
            .collect())
    }
}
