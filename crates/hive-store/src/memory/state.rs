//! The memory store's tables as plain maps, read by the rules as a [`View`] and changed by
//! applying their [`Patches`].

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DurationRound, Utc};
use hive_models::{
    ExecutionPlan, IdMap, NewTask, PlanCounters, PlanId, PlanStatus, Run, RunId, Task, TaskId,
    TaskStatus, Timestamp, Worker, WorkerId,
};

use super::queue::ReadyQueue;
use crate::rules::{Patches, TaskState, View};
use crate::{Claim, ClaimParams, Notification, Notifier};

#[derive(Debug, Default)]
pub(super) struct State {
    next_seq: u64,
    pub tasks: IdMap<TaskId, (Task, u64)>,
    pub ready: ReadyQueue,
    pub idempotency: std::collections::HashMap<String, TaskId>,
    pub dependents: IdMap<TaskId, Vec<TaskId>>,
    pub runs: IdMap<RunId, Run>,
    pub task_runs: IdMap<TaskId, Vec<RunId>>,
    /// Times a task was snoozed (absent: never), as the SQL backends' `snoozes` column.
    pub snoozes: IdMap<TaskId, u32>,
    /// Running runs and their lease durations.
    pub running: IdMap<RunId, Duration>,
    /// Tasks `in_progress`, with a run or moved there by hand: what flow limits count, as
    /// the SQL backends do.
    pub in_progress: hive_models::IdSet<TaskId>,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub plans: IdMap<PlanId, ExecutionPlan>,
    /// Plans by idempotency key.
    pub plan_keys: std::collections::HashMap<String, PlanId>,
    pub plan_tasks: IdMap<PlanId, Vec<TaskId>>,
    pub schedules: BTreeMap<String, hive_models::Schedule>,
    pub flow_rules: std::collections::HashMap<hive_models::Scope, hive_models::FlowRule>,
    pub flow_starts: super::flow::Starts,
}

/// The database backends keep microseconds; so does this one, to behave the same.
pub(super) fn now() -> Timestamp {
    let t = Utc::now();
    t.duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or(t)
}

/// `t - d`, the earliest time there is when that is further back (as the SQL backends
/// clamp): an age of `Duration::MAX` means "older than anything", not a panic.
pub(super) fn sub(t: Timestamp, d: Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
}

impl View for State {
    fn task(&self, id: TaskId) -> Option<TaskState> {
        let (t, seq) = self.tasks.get(&id)?;
        let running = t
            .current_run_id
            .is_some_and(|r| self.running.contains_key(&r));
        Some(TaskState::of(
            t,
            i64::try_from(*seq).unwrap_or(i64::MAX),
            self.snoozes.get(&id).copied().unwrap_or(0),
            running,
        ))
    }

    fn dependents(&self, id: TaskId) -> Vec<TaskId> {
        self.dependents.get(&id).cloned().unwrap_or_default()
    }

    fn plan(&self, id: PlanId) -> Option<PlanCounters> {
        self.plans.get(&id).map(ExecutionPlan::counters)
    }
}

impl State {
    /// `id`'s dependents, as deleting it counts them.
    pub(super) fn dependents_left(&self, id: TaskId) -> hive_models::DependentsLeft {
        let count = |left: fn(TaskStatus) -> bool| {
            self.dependents.get(&id).map_or(0, |ds| {
                ds.iter()
                    .filter(|d| self.task(**d).is_some_and(|t| left(t.status)))
                    .count()
            })
        };
        hive_models::DependentsLeft {
            unfinished: count(|st| !st.is_terminal()),
            not_completed: count(|st| st != TaskStatus::Completed),
        }
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(|(t, _)| t)
    }

    /// The outputs of `task`'s dependencies, as a claim carries them.
    fn inputs(&self, task: &Task) -> crate::Inputs {
        task.dependencies
            .iter()
            .filter_map(|d| self.task(*d))
            .map(|d| {
                (
                    d.output_key(),
                    d.result.clone().unwrap_or(hive_models::Json::Null),
                )
            })
            .collect()
    }

    pub fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(&id).map(|(t, _)| t)
    }

    /// Puts the task in or out of the ready and in-progress indexes to match its state.
    pub fn sync_ready(&mut self, id: TaskId) {
        let Some((t, seq)) = self.tasks.get(&id) else {
            return;
        };
        let at = (Reverse(t.priority), *seq, id);
        let key = t.concurrency_key.clone().map(|k| (k, t.concurrency_limit));
        if t.status == TaskStatus::Queued && t.pending_dependencies == 0 {
            self.ready.insert(key, at);
        } else {
            self.ready.remove(key, &at);
        }
        if t.status == TaskStatus::InProgress {
            self.in_progress.insert(id);
        } else {
            self.in_progress.remove(&id);
        }
    }

    /// The task of a run, when the run exists.
    pub fn task_of(&self, run: RunId) -> Option<TaskId> {
        self.runs.get(&run).map(|r| r.task_id)
    }

    /// Writes what the rules decided; returns the notifications to send, the dependents a
    /// completion freed announced as `TaskReady`.
    pub fn apply(&mut self, p: Patches, at: Timestamp, n: &Notifier) -> Vec<Notification> {
        let Patches {
            runs,
            tasks,
            completed,
            reopened,
            plans,
            mut notes,
        } = p;
        for r in runs {
            if self.running.remove(&r.id).is_none() {
                continue;
            }
            if let Some(run) = self.runs.get_mut(&r.id) {
                run.status = r.status;
                run.started_at = crate::rules::handler_start(run.started_at, r.waited, at);
                run.completed_at = Some(at);
                run.updated_at = at;
                run.lease_expires_at = None;
                if let Some(result) = r.result {
                    run.result_data = result;
                }
                if let Some(error) = r.error {
                    run.error_message = error;
                }
                if let Some(log) = r.log {
                    run.output_log = log;
                }
            }
        }
        for t in tasks {
            let recount = t.recount_pending.then(|| self.pending_now(t.id));
            if t.snoozes_delta != 0 && self.tasks.contains_key(&t.id) {
                let snoozes = self.snoozes.entry(t.id).or_default();
                *snoozes = snoozes.saturating_add_signed(t.snoozes_delta);
            }
            let Some(task) = self.task_mut(t.id) else {
                continue;
            };
            task.status = t.status;
            task.updated_at = at;
            if let Some(result) = t.result {
                task.result = result;
            }
            if let Some(error) = t.error {
                task.last_error = Some(error);
            }
            if let Some(run_at) = t.requeue {
                task.assigned_worker = None;
                task.run_at = run_at;
            }
            task.attempts = task.attempts.saturating_add_signed(t.attempts_delta);
            if let Some(pending) = recount {
                task.pending_dependencies = pending;
            }
            if let Some(metadata) = t.metadata {
                task.metadata = metadata;
            }
            self.sync_ready(t.id);
        }
        for done in completed {
            for d in self.dependents.get(&done).cloned().unwrap_or_default() {
                if self.count_down(d, at) {
                    notes.push(n.task_ready(d));
                }
            }
        }
        for again in reopened {
            for d in self.dependents.get(&again).cloned().unwrap_or_default() {
                self.count_up(d);
            }
        }
        for (id, counters) in plans {
            if let Some(plan) = self.plans.get_mut(&id) {
                plan.set_counters(counters);
                plan.updated_at = at;
            }
        }
        notes
    }

    /// One dependency of `id` done: a task left waiting for nothing starts its delay now.
    /// True when the task is claimable at once.
    fn count_down(&mut self, id: TaskId, at: Timestamp) -> bool {
        let Some(t) = self.task_mut(id) else {
            return false;
        };
        let was = t.pending_dependencies;
        if was == 0 {
            return false;
        }
        t.pending_dependencies = was - 1;
        // As the SQL adapters do: a finished dependent (cancelled while it waited) keeps
        // its time, which pruning goes by.
        if t.status == TaskStatus::Queued {
            t.updated_at = at;
        }
        if was == 1 && t.delay_secs > 0 {
            t.run_at = Some(hive_models::delayed_until(at, t.delay_secs));
        }
        let ready = t.status == TaskStatus::Queued && was == 1 && t.delay_secs == 0;
        self.sync_ready(id);
        ready
    }

    /// A completed dependency of `id` back in the queue: a queued task waits for it again.
    fn count_up(&mut self, id: TaskId) {
        let Some(t) = self.task_mut(id) else { return };
        if t.status != TaskStatus::Queued {
            return;
        }
        t.pending_dependencies = t.pending_dependencies.saturating_add(1);
        self.sync_ready(id);
    }

    /// How many of a task's dependencies are not completed.
    fn pending_now(&self, id: TaskId) -> u32 {
        let Some(t) = self.task(id) else { return 0 };
        let open = t
            .dependencies
            .iter()
            .filter(|d| {
                self.task(**d)
                    .is_some_and(|x| x.status != TaskStatus::Completed)
            })
            .count();
        u32::try_from(open).unwrap_or(u32::MAX)
    }

    /// Claims up to `p.limit` ready tasks (see [`crate::Store::claim_tasks`]).
    pub fn claim(
        &mut self,
        p: &ClaimParams,
        at: Timestamp,
        notes: &mut Vec<Notification>,
        n: &Notifier,
    ) -> Vec<Claim> {
        let lease_until = crate::rules::after(at, p.lease);
        let mut admission = None;
        let mut picked: Vec<(TaskId, bool)> = Vec::new();
        let mut walk = self.ready.walk();
        while let Some((key, id)) = walk.next() {
            if picked.len() >= p.limit as usize {
                break;
            }
            let Some(t) = self.task(id) else { continue };
            if t.run_at.is_some_and(|r| r > at)
                || !(p.task_types.is_empty() || p.task_types.contains(&t.task_type))
            {
                continue;
            }
            let c = super::flow::candidate(t);
            let limited = hive_models::is_flow_controlled(&self.flow_rules, c.task_type, c.key);
            if limited {
                let admission = admission.get_or_insert_with(|| {
                    let usage = self.flow_usage(at);
                    hive_models::Admission::new(&self.flow_rules, usage)
                });
                if !admission.admit(&c) {
                    // A full key's later tasks (of its limit) would all be refused too.
                    if key.is_some() && !admission.key_has_room(&c) {
                        walk.skip_key();
                    }
                    continue;
                }
            }
            picked.push((id, limited));
        }
        let mut claims = Vec::with_capacity(picked.len());
        for (id, limited) in picked {
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
            self.record_start(&task, at);
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
            let inputs = self.inputs(&task);
            let claim = Claim {
                task,
                run,
                inputs,
                limited,
            };
            notes.push(n.task_claimed(&claim));
            claims.push(claim);
        }
        claims
    }

    /// Inserts a task that `waits` for dependencies or not (its start delay begins now
    /// when it does not).
    pub fn insert_task(&mut self, id: TaskId, new: NewTask, at: Timestamp, waits: bool) -> TaskId {
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.idempotency.get(key) {
                return *existing;
            }
            self.idempotency.insert(key.clone(), id);
        }
        let run_at = new.claimable_from(at, waits);
        let mut task = Task::from_new(id, new, at);
        task.run_at = run_at;
        self.next_seq += 1;
        self.tasks.insert(id, (task, self.next_seq));
        self.sync_ready(id);
        id
    }

    /// Runs of `worker` still running, in (task, run) order.
    pub fn runs_of(&self, worker: &WorkerId) -> Vec<(RunId, TaskId)> {
        let mut mine: Vec<(RunId, TaskId)> = self
            .running
            .keys()
            .filter_map(|r| self.runs.get(r))
            .filter(|run| &run.worker_id == worker)
            .map(|run| (run.id, run.task_id))
            .collect();
        mine.sort_by_key(|(r, t)| (*t, *r));
        mine
    }

    pub fn remove_task(&mut self, id: TaskId, at: Timestamp) -> bool {
        let Some((task, seq)) = self.tasks.remove(&id) else {
            return false;
        };
        self.ready.remove(
            task.concurrency_key
                .clone()
                .map(|k| (k, task.concurrency_limit)),
            &(Reverse(task.priority), seq, id),
        );
        self.in_progress.remove(&id);
        if let Some(k) = &task.idempotency_key {
            self.idempotency.remove(k);
        }
        self.snoozes.remove(&id);
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
            }
            if task.status != TaskStatus::Completed {
                self.count_down(d, at);
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

    pub fn sorted(&self, mut tasks: Vec<&(Task, u64)>) -> Vec<Task> {
        tasks.sort_by_key(|(t, seq)| (Reverse(t.priority), *seq));
        tasks.into_iter().map(|(t, _)| t.clone()).collect()
    }
}
