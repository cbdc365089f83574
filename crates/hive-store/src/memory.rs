//! [`MemoryStore`]: every table in plain maps behind one mutex, so each method is atomic.
//! The rules ([`crate::rules`]) read the maps directly and their patches are applied to
//! them: this is the reference semantics every other backend is compared with.

mod dashboard;
mod flow;
mod plans;
mod queue;
mod release;
mod schedules;
mod state;
mod subtasks;
mod workers;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hive_models::{
    ExecutionPlan, NewPlan, NewTask, PlanCounters, PlanHeader, PlanId, PlanStatus, Run, RunId,
    Task, TaskId, Timestamp, Worker, WorkerId, WorkerStatus,
};
use tokio::sync::broadcast;

use crate::rules::{Changes, Patches};
use crate::{
    Backend, Claim, ClaimParams, Error, FinishReport, HeartbeatReport, Notification, Notifier,
    PlanPruneParams, PlansPruned, PruneParams, QueueStats, ReapParams, ReapReport, Result,
    RunOutcome, StatusChange, StatusChanged, StatusCounts, Store, TaskFilter, TaskPageParams,
    TasksInserted, WorkerFilter, WorkerRegistration, WorkerStatusChange,
};
use state::{State, now, sub};

/// An in-process store: one mutex over plain maps; no persistence.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    notifier: Notifier,
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

    /// A flow rule changed: a pause lifted, a limit raised or gone may let waiting tasks
    /// be claimed, so workers look again.
    fn flow_changed(&self, changed: bool) {
        if changed {
            self.send(vec![self.notifier.note(crate::Change::StoreChanged)]);
        }
    }

    /// Finishes a batch under the lock already held: its spawns first, then the rules.
    fn finish_locked(
        &self,
        s: &mut State,
        outcomes: &[RunOutcome],
    ) -> (Vec<FinishReport>, Vec<Notification>) {
        let (outcomes, created) = s.grow_spawns(outcomes);
        let tasks: Vec<Option<TaskId>> = outcomes.iter().map(|o| s.task_of(o.run_id)).collect();
        let (reports, mut notes) = self.replay(s, |ch| {
            outcomes
                .iter()
                .zip(tasks)
                .map(|(o, t)| ch.finish(o, t))
                .collect::<Vec<_>>()
        });
        if created > 0 {
            notes.insert(0, self.notifier.task_created(None, created));
        }
        (reports, notes)
    }

    /// Replays `f` against the maps and applies its patches, under the lock already held.
    /// The clock is read under the lock: a time read before waiting for it could predate a
    /// change committed meanwhile (a claimed child would seem to start before its parent
    /// completed).
    fn replay<T>(
        &self,
        s: &mut State,
        f: impl FnOnce(&mut Changes<'_, State>) -> T,
    ) -> (T, Vec<Notification>) {
        let at = now();
        let (out, patches): (T, Patches) = {
            let mut ch = Changes::new(&*s, &self.notifier, at);
            let out = f(&mut ch);
            (out, ch.into_patches())
        };
        let notes = s.apply(patches, at, &self.notifier);
        (out, notes)
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

    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<TasksInserted> {
        let at = now();
        let mut new_tasks = 0;
        let ids: Vec<TaskId> = {
            let mut s = self.lock();
            tasks
                .into_iter()
                .map(|t| {
                    let fresh = TaskId::new();
                    let id = s.insert_task(fresh, t, at, false);
                    new_tasks += u64::from(id == fresh);
                    id
                })
                .collect()
        };
        let inserted = TasksInserted { ids, new_tasks };
        if let Some(note) = self.notifier.tasks_inserted(&inserted) {
            self.send(vec![note]);
        }
        Ok(inserted)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.lock().task(id).cloned())
    }

    async fn get_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        Ok(self.lock().tasks_by_id(ids))
    }

    async fn page_tasks(&self, params: &TaskPageParams) -> Result<Vec<Task>> {
        params.check()?;
        Ok(dashboard::page(&self.lock(), params))
    }

    async fn queue_stats(&self, since: Option<Timestamp>) -> Result<QueueStats> {
        Ok(dashboard::stats(&self.lock(), now(), since))
    }

    async fn count_finished_tasks(&self) -> Result<Vec<crate::TypeStatusCount>> {
        Ok(dashboard::counts(&self.lock(), true))
    }

    async fn count_unfinished_tasks(&self) -> Result<Vec<crate::TypeStatusCount>> {
        Ok(dashboard::counts(&self.lock(), false))
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        Ok(dashboard::list(&self.lock(), f, now()))
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
        let (out, notes) = {
            let mut s = self.lock();
            let Some(task) = s.task(id).cloned() else {
                return Ok(None);
            };
            let (outcome, notes) = self.replay(&mut s, |ch| ch.change_status(&task, &change));
            let outcome = outcome?;
            let task = s
                .task(id)
                .cloned()
                .ok_or_else(|| Error::not_found("task", id))?;
            let changed = StatusChanged {
                previous: outcome.previous,
                task,
                cancelled_dependents: outcome.effects.cancelled,
                plan_transition: outcome.effects.plan_transition,
            };
            (changed, notes)
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
        task.check_deletable(plan_status, s.dependents_left(id))?;
        Ok(s.remove_task(id, now()))
    }

    async fn prune_tasks(&self, p: &PruneParams) -> Result<u64> {
        p.check()?;
        let at = now();
        let cutoff = sub(at, p.older_than);
        let mut s = self.lock();
        let mut old: Vec<(Timestamp, TaskId)> = s
            .tasks
            .values()
            .filter(|(t, _)| {
                t.plan_id.is_none() && p.statuses.contains(&t.status) && t.updated_at < cutoff
            })
            .map(|(t, _)| (t.updated_at, t.id))
            .collect();
        old.sort();
        old.truncate(p.limit as usize);
        for (_, id) in &old {
            s.remove_task(*id, at);
        }
        Ok(old.len() as u64)
    }

    async fn claim_tasks(&self, p: &ClaimParams) -> Result<Vec<Claim>> {
        let mut notes = Vec::new();
        let claims = {
            let mut s = self.lock();
            let at = now();
            s.claim(p, at, &mut notes, &self.notifier)
        };
        self.send(notes);
        Ok(claims)
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<Vec<FinishReport>> {
        let (reports, notes) = {
            let mut s = self.lock();
            self.finish_locked(&mut s, outcomes)
        };
        self.send(notes);
        Ok(reports)
    }

    async fn finish_and_claim(
        &self,
        outcomes: &[RunOutcome],
        claim: &ClaimParams,
    ) -> Result<(Vec<FinishReport>, Vec<Claim>)> {
        let (reports, claims, mut notes) = {
            let mut s = self.lock();
            let (reports, mut notes) = self.finish_locked(&mut s, outcomes);
            let at = now();
            let claims = s.claim(claim, at, &mut notes, &self.notifier);
            (reports, claims, notes)
        };
        Notifier::drop_claimed_ready(&mut notes, &claims);
        self.send(notes);
        Ok((reports, claims))
    }

    async fn record_progress(
        &self,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) -> Result<()> {
        let mut s = self.lock();
        let task = s.task_of(run_id).filter(|t| {
            crate::rules::View::task(&*s, *t)
                .is_some_and(|t| t.current_run == Some(run_id) && t.run_running)
        });
        let (Some(task_id), Some(run)) = (task, s.runs.get_mut(&run_id)) else {
            return Err(Error::StaleRun { run_id });
        };
        let at = now();
        run.progress = Some(hive_models::Progress {
            fraction,
            message: message.clone(),
            at,
        });
        run.updated_at = at;
        drop(s);
        self.send(vec![self.notifier.note(crate::Change::Progress {
            task_id,
            run_id,
            fraction,
            message,
        })]);
        Ok(())
    }

    async fn extend_lease(&self, run_id: RunId, lease: Duration) -> Result<Timestamp> {
        let mut s = self.lock();
        let at = now();
        let until = crate::rules::after(at, lease);
        let live = s.task_of(run_id).is_some_and(|t| {
            crate::rules::View::task(&*s, t)
                .is_some_and(|t| t.current_run == Some(run_id) && t.run_running)
        });
        if !live {
            return Err(Error::StaleRun { run_id });
        }
        let longest = s.running.get(&run_id).map_or(lease, |l| (*l).max(lease));
        s.running.insert(run_id, longest);
        let mut expiry = until;
        if let Some(run) = s.runs.get_mut(&run_id) {
            expiry = run.lease_expires_at.map_or(until, |e| e.max(until));
            run.lease_expires_at = Some(expiry);
            run.updated_at = at;
        }
        Ok(expiry)
    }

    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        Ok(self.release(run_ids, false))
    }

    async fn release_unstarted(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        Ok(self.release(run_ids, true))
    }

    async fn reap(&self, p: &ReapParams) -> Result<ReapReport> {
        let (report, notes) = {
            let mut s = self.lock();
            let at = now();
            let mut expired: Vec<(Timestamp, RunId, TaskId)> = s
                .running
                .keys()
                .filter_map(|r| s.runs.get(r))
                .filter_map(|r| {
                    r.lease_expires_at
                        .filter(|l| *l < at)
                        .map(|l| (l, r.id, r.task_id))
                })
                .collect();
            expired.sort();
            expired.truncate(p.limit as usize);
            let (mut report, mut notes) = self.replay(&mut s, |ch| {
                let mut report = ReapReport::default();
                for (_, run, task) in expired {
                    match ch.expire(run, task, p.retry) {
                        Some((crate::Finished::Retrying { .. }, _)) => {
                            report.requeued.push((task, run));
                        }
                        Some((_, fx)) => {
                            report.failed.push(task);
                            report.plan_transitions.extend(fx.plan_transition);
                        }
                        None => {}
                    }
                }
                report
            });
            let stale_before = sub(at, p.heartbeat_timeout);
            let silent = Worker::silent_reason(p.heartbeat_timeout);
            for w in s.workers.values_mut() {
                if w.is_active() && w.last_heartbeat < stale_before {
                    w.mark_offline(Some(silent.clone()));
                    notes.push(self.notifier.worker(w.id.clone(), WorkerStatus::Offline));
                    report.offline_workers.push(w.id.clone());
                }
            }
            (report, notes)
        };
        self.send(notes);
        Ok(report)
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        Ok(self.lock().runs.get(&id).cloned())
    }

    async fn get_runs(&self, ids: &[RunId]) -> Result<Vec<Run>> {
        Ok(self.lock().runs_by_id(ids))
    }

    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        Ok(self.lock().runs_of_tasks(&[task_id]))
    }

    async fn list_plan_runs(&self, plan_id: PlanId) -> Result<Vec<Run>> {
        let s = self.lock();
        let mut tasks: Vec<TaskId> = s.plan_tasks.get(&plan_id).cloned().unwrap_or_default();
        tasks.sort();
        Ok(s.runs_of_tasks(&tasks))
    }

    async fn running_runs(&self, workers: &[WorkerId]) -> Result<Vec<Run>> {
        let s = self.lock();
        let mut held: Vec<Run> = s
            .running
            .keys()
            .filter_map(|r| s.runs.get(r))
            .filter(|r| workers.contains(&r.worker_id))
            .cloned()
            .collect();
        held.sort_by_key(|r| (r.task_id, r.id));
        Ok(held)
    }

    async fn insert_schedule(&self, schedule: &hive_models::Schedule) -> Result<()> {
        self.lock().insert_schedule(schedule)
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<hive_models::Schedule>> {
        Ok(self.lock().schedules.get(name).cloned())
    }

    async fn list_schedules(&self) -> Result<Vec<hive_models::Schedule>> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn due_schedules(&self, now: Timestamp) -> Result<Vec<hive_models::Schedule>> {
        Ok(self.lock().due_schedules(now))
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn put_flow_rule(&self, rule: &hive_models::FlowRule) -> Result<()> {
        self.lock().put_flow_rule(rule);
        self.flow_changed(true);
        Ok(())
    }

    async fn list_flow_rules(&self) -> Result<Vec<hive_models::FlowRule>> {
        Ok(self.lock().list_flow_rules())
    }

    async fn delete_flow_rule(&self, scope: &hive_models::Scope) -> Result<bool> {
        let deleted = self.lock().delete_flow_rule(scope);
        self.flow_changed(deleted);
        Ok(deleted)
    }

    async fn edit_flow_rule(
        &self,
        scope: &hive_models::Scope,
        edit: hive_models::FlowEdit,
    ) -> Result<(Option<hive_models::FlowRule>, bool)> {
        let edited = self.lock().edit_flow_rule(scope, edit, now());
        self.flow_changed(edited.1);
        Ok(edited)
    }

    async fn advance_schedule(&self, advance: &crate::ScheduleAdvance) -> Result<bool> {
        Ok(self.lock().advance_schedule(advance))
    }

    async fn replace_schedule(&self, s: &hive_models::Schedule, from: Timestamp) -> Result<bool> {
        Ok(self.lock().replace_schedule(s, from))
    }

    async fn unfinished_by_key(&self, keys: &[String]) -> Result<bool> {
        let s = self.lock();
        Ok(keys.iter().any(|k| s.unfinished_by_key(k)))
    }

    async fn keyed_work(&self, keys: &[String]) -> Result<HashMap<String, crate::KeyedWork>> {
        let s = self.lock();
        Ok(keys
            .iter()
            .filter_map(|k| Some((k.clone(), s.keyed_work(k)?)))
            .collect())
    }

    async fn claim_slot(&self, read: &hive_models::Schedule, slot: Timestamp) -> Result<bool> {
        Ok(self.lock().claim_slot(read, slot))
    }

    async fn note_manual_run(&self, name: &str, key: &str) -> Result<bool> {
        Ok(self.lock().note_manual_run(name, key))
    }

    async fn register_worker(&self, r: &WorkerRegistration) -> Result<Worker> {
        let at = now();
        let worker = self.lock().register_worker(r, at);
        self.send(vec![
            self.notifier.worker(r.id.clone(), WorkerStatus::Active),
        ]);
        Ok(worker)
    }

    async fn heartbeat(
        &self,
        id: &WorkerId,
        status: Option<WorkerStatusChange>,
    ) -> Result<Option<HeartbeatReport>> {
        let offline = status
            .as_ref()
            .is_some_and(|c| c.status == WorkerStatus::Offline);
        // The clock under the lock, as every write here: time spent waiting for it (a large
        // finish or plan) must not come off the leases this beat extends.
        let Some(extended) = self.lock().heartbeat(id, status, now) else {
            return Ok(None);
        };
        if offline {
            self.send(vec![
                self.notifier.worker(id.clone(), WorkerStatus::Offline),
            ]);
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
        let (released, mut notes) = {
            let mut s = self.lock();
            if s.workers.remove(id).is_none() {
                return Ok(None);
            }
            let mine = s.runs_of(id);
            self.replay(&mut s, |ch| {
                let released = ch.release_all(&mine);
                released.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
            })
        };
        notes.push(self.notifier.worker(id.clone(), WorkerStatus::Offline));
        self.send(notes);
        Ok(Some(released))
    }

    async fn prune_worker(&self, id: &WorkerId, silent_before: Timestamp) -> Result<bool> {
        let pruned = self.lock().prune_worker(id, silent_before);
        if pruned {
            self.send(vec![
                self.notifier.worker(id.clone(), WorkerStatus::Offline),
            ]);
        }
        Ok(pruned)
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId> {
        Ok(self.lock().insert_plan(plan, now()).0)
    }

    async fn submit_plan(&self, plan: NewPlan) -> Result<(PlanId, u64)> {
        let at = now();
        let (id, created) = {
            let mut s = self.lock();
            // A first plan stored by `insert_plan` alone is materialized now: a submit
            // leaves no plan that nothing will run.
            let (id, _) = s.insert_plan(plan, at);
            (id, s.materialize(id, at, false)?.unwrap_or(0))
        };
        if created > 0 {
            self.send(vec![self.notifier.task_created(None, created)]);
        }
        Ok((id, created))
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>> {
        Ok(self.lock().plans.get(&id).cloned())
    }

    async fn get_plan_counters(&self, id: PlanId) -> Result<Option<PlanCounters>> {
        Ok(self.lock().plans.get(&id).map(ExecutionPlan::counters))
    }

    async fn get_plan_header(&self, id: PlanId) -> Result<Option<PlanHeader>> {
        Ok(self.lock().plans.get(&id).map(ExecutionPlan::header))
    }

    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        Ok(self.listed_plans(status, limit, ExecutionPlan::clone))
    }

    async fn list_plan_headers(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<PlanHeader>> {
        Ok(self.listed_plans(status, limit, ExecutionPlan::header))
    }

    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>> {
        let at = now();
        let created = match self.lock().materialize(id, at, true)? {
            Some(0) => return Ok(Some(0)),
            Some(n) => n,
            None => return Ok(None),
        };
        self.send(vec![self.notifier.task_created(None, created)]);
        Ok(Some(created))
    }

    async fn count_plans(&self, status: Option<PlanStatus>) -> Result<u64> {
        let s = self.lock();
        Ok(s.plans
            .values()
            .filter(|p| status.is_none_or(|st| p.status == st))
            .count() as u64)
    }

    async fn transition_plan(&self, id: PlanId, from: PlanStatus, to: PlanStatus) -> Result<bool> {
        let changed = self.lock().transition_plan(id, from, to);
        if changed {
            self.send(vec![self.notifier.plan_status(id, to)]);
        }
        Ok(changed)
    }

    async fn cancel_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        let (cancelled, notes) = {
            let mut s = self.lock();
            let Some(plan) = s.plans.get(&id) else {
                return Ok(None);
            };
            if !plan.status.may_cancel() {
                return Ok(Some(Vec::new()));
            }
            let open = s.plan_tasks.get(&id).cloned().unwrap_or_default();
            self.replay(&mut s, |ch| ch.cancel_plan(id, &open))
        };
        self.send(notes);
        Ok(Some(cancelled))
    }

    async fn retry_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        let (requeued, notes) = {
            let mut s = self.lock();
            let tasks = s.plan_tasks.get(&id).cloned().unwrap_or_default();
            self.replay(&mut s, |ch| ch.retry_plan(id, &tasks))
        };
        self.send(notes);
        Ok(requeued)
    }

    async fn prune_plans(&self, p: &PlanPruneParams) -> Result<PlansPruned> {
        p.check()?;
        Ok(self.lock().prune_plans(p, now()))
    }

    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>> {
        Ok(self.lock().dependencies_met(ids))
    }

    async fn subtask_ids(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, String>> {
        Ok(self.lock().subtask_ids(ids))
    }
}
