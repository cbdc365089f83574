//! What the rules read: the few columns of a task they need, and a [`View`] over a
//! backend's rows.

use std::collections::HashMap;

use hive_models::{IdMap, PlanCounters, PlanId, RunId, Task, TaskId, TaskStatus};

/// The part of a task the rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub status: TaskStatus,
    /// Insertion order: a cascade cancels dependents in this order.
    pub seq: i64,
    pub plan_id: Option<PlanId>,
    pub attempts: u32,
    pub max_retries: u32,
    /// Its own backoff, which replaces the caller's.
    pub retry_policy: Option<hive_models::RetryPolicy>,
    /// Times it was snoozed since it was created or its plan retried.
    pub snoozes: u32,
    pub current_run: Option<RunId>,
    /// Whether `current_run` may still be running. Exact when the adapter read that run;
    /// otherwise assumed while there is a current run, which is safe: closing a run only
    /// changes it if it is still running when written.
    pub run_running: bool,
}

impl TaskState {
    /// A task's state from its full row (`seq`, its snoozes and whether its run runs
    /// come from the backend).
    pub fn of(task: &Task, seq: i64, snoozes: u32, run_running: bool) -> TaskState {
        TaskState {
            retry_policy: task.retry_policy,
            snoozes,
            status: task.status,
            seq,
            plan_id: task.plan_id,
            attempts: task.attempts,
            max_retries: task.max_retries,
            current_run: task.current_run_id,
            run_running: run_running && task.current_run_id.is_some(),
        }
    }
}

impl TaskState {
    /// Whether `run` is this task's current running run: the fence every finish passes.
    pub fn is_live(&self, run: RunId) -> bool {
        self.current_run == Some(run) && self.run_running
    }

    /// Whether a failure now would fail the task for good (and so may cancel its
    /// dependents: adapters load those before replaying).
    pub fn fails_for_good(&self, retry: Option<hive_models::RetryPolicy>) -> bool {
        hive_models::after_failure(retry, self.attempts, self.max_retries, 0.0)
            == hive_models::AfterFailure::Fail
    }

    /// Whether `outcome`, reported for this task's live run, fails it for good.
    pub fn fails_for_good_after(&self, outcome: &crate::Outcome) -> bool {
        match outcome {
            crate::Outcome::Failure { retry, .. } | crate::Outcome::TimedOut { retry, .. } => {
                self.fails_for_good(*retry)
            }
            crate::Outcome::Snooze { limit, .. } => self.snoozes >= *limit,
            crate::Outcome::Success { .. } | crate::Outcome::GiveBack { .. } => false,
        }
    }
}

/// A backend's rows, as the rules read them. Reads of rows a batch did not load return
/// `None` (or no dependents): the rules then leave those rows alone.
pub trait View {
    fn task(&self, id: TaskId) -> Option<TaskState>;
    /// The tasks that depend on `id`, in insertion order (read by cascades only).
    fn dependents(&self, id: TaskId) -> Vec<TaskId>;
    fn plan(&self, id: PlanId) -> Option<PlanCounters>;
}

/// The rows an SQL adapter loaded for a batch.
#[derive(Debug, Default)]
pub struct Loaded {
    pub tasks: IdMap<TaskId, TaskState>,
    /// Dependents of the tasks a failure may cancel, in insertion order.
    pub children: IdMap<TaskId, Vec<TaskId>>,
    pub plans: IdMap<PlanId, PlanCounters>,
}

impl Loaded {
    /// Adds a task unless it is loaded already (the first read of a row in a transaction
    /// is the one its lock protects).
    pub fn add_task(&mut self, id: TaskId, state: TaskState) {
        self.tasks.entry(id).or_insert(state);
    }

    /// Records that `run` of `task` was read: whether it is running is then known exactly.
    pub fn set_running(&mut self, task: TaskId, run: RunId, running: bool) {
        if let Some(t) = self.tasks.get_mut(&task)
            && t.current_run == Some(run)
        {
            t.run_running = running;
        }
    }

    /// Records cascade edges `(parent, child)`, ordering each parent's children by the
    /// children's insertion order (their states must be loaded first).
    pub fn add_edges(&mut self, edges: impl IntoIterator<Item = (TaskId, TaskId)>) {
        let mut edges: Vec<(TaskId, i64, TaskId)> = edges
            .into_iter()
            .filter_map(|(p, c)| self.tasks.get(&c).map(|t| (p, t.seq, c)))
            .collect();
        edges.sort();
        edges.dedup();
        for (parent, _, child) in edges {
            let list = self.children.entry(parent).or_default();
            if !list.contains(&child) {
                list.push(child);
            }
        }
    }

    /// The tasks of live runs that `outcomes` would fail for good: what a failure may
    /// cascade from, to load before replaying.
    pub fn failing_roots(
        &self,
        outcomes: &[crate::RunOutcome],
        run_task: &HashMap<RunId, TaskId>,
    ) -> Vec<TaskId> {
        outcomes
            .iter()
            .filter_map(|o| {
                let task = *run_task.get(&o.run_id)?;
                let state = self.tasks.get(&task)?;
                (state.is_live(o.run_id) && state.fails_for_good_after(&o.outcome)).then_some(task)
            })
            .collect()
    }

    /// The plans of every task loaded so far (those the batch may count against).
    pub fn plan_ids(&self) -> Vec<PlanId> {
        let mut ids: Vec<PlanId> = self.tasks.values().filter_map(|t| t.plan_id).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

impl View for Loaded {
    fn task(&self, id: TaskId) -> Option<TaskState> {
        self.tasks.get(&id).cloned()
    }

    fn dependents(&self, id: TaskId) -> Vec<TaskId> {
        self.children.get(&id).cloned().unwrap_or_default()
    }

    fn plan(&self, id: PlanId) -> Option<PlanCounters> {
        self.plans.get(&id).copied()
    }
}
