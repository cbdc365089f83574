//! Plans in memory: turning a plan's subtasks into tasks, and deleting finished plans with
//! their tasks.

use std::cmp::Reverse;
use std::collections::HashMap;

use hive_models::{ExecutionPlan, NewPlan, PlanId, PlanStatus, TaskId, TaskStatus, Timestamp};

use super::state::{State, sub};
use crate::{PlanPruneParams, PlansPruned};

impl super::MemoryStore {
    /// The plans a listing shows, newest first, each as `show` makes it.
    pub(super) fn listed_plans<T>(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
        show: impl Fn(&ExecutionPlan) -> T,
    ) -> Vec<T> {
        let s = self.lock();
        let mut plans: Vec<&ExecutionPlan> = s
            .plans
            .values()
            .filter(|p| status.is_none_or(|st| p.status == st))
            .collect();
        plans.sort_by_key(|p| Reverse((p.created_at, p.id)));
        plans.truncate(limit.map_or(usize::MAX, |l| l as usize));
        plans.into_iter().map(show).collect()
    }
}

impl State {
    /// Compare-and-set of a plan's status: whether it was `from` and is now `to`.
    pub(super) fn transition_plan(&mut self, id: PlanId, from: PlanStatus, to: PlanStatus) -> bool {
        match self.plans.get_mut(&id) {
            Some(p) if p.status == from => {
                p.status = to;
                p.updated_at = super::state::now();
                true
            }
            _ => false,
        }
    }

    /// Stores a new pending plan and returns it with `true`; or, when a plan was submitted
    /// with its idempotency key before, returns that one with `false`.
    pub(crate) fn insert_plan(&mut self, plan: NewPlan, at: Timestamp) -> (PlanId, bool) {
        if let Some(first) = plan
            .idempotency_key
            .as_ref()
            .and_then(|k| self.plan_keys.get(k))
        {
            return (*first, false);
        }
        let id = PlanId::new();
        if let Some(key) = &plan.idempotency_key {
            self.plan_keys.insert(key.clone(), id);
        }
        self.plans.insert(id, ExecutionPlan::from_new(id, plan, at));
        (id, true)
    }

    /// See [`crate::Store::dependencies_met`].
    pub(crate) fn dependencies_met(&self, ids: &[TaskId]) -> HashMap<TaskId, bool> {
        ids.iter()
            .filter_map(|id| {
                let met = self.task(*id)?.dependencies.iter().all(|d| {
                    self.task(*d)
                        .is_none_or(|x| x.status == TaskStatus::Completed)
                });
                Some((*id, met))
            })
            .collect()
    }

    /// See [`crate::Store::subtask_ids`].
    pub(crate) fn subtask_ids(&self, ids: &[TaskId]) -> HashMap<TaskId, String> {
        ids.iter()
            .filter_map(|id| Some((*id, self.task(*id)?.plan_subtask_id.clone()?)))
            .collect()
    }

    /// Creates the plan's tasks once; the number created (0 when it was materialized
    /// already, or finished before it was and not `refuse_finished`), `None` for an unknown
    /// plan.
    pub(crate) fn materialize(
        &mut self,
        id: PlanId,
        at: Timestamp,
        refuse_finished: bool,
    ) -> Result<Option<u64>, hive_models::Error> {
        let Some(plan) = self.plans.get_mut(&id) else {
            return Ok(None);
        };
        if plan.materialized {
            return Ok(Some(0));
        }
        if let Err(e) = plan.status.check_materialize() {
            return if refuse_finished { Err(e) } else { Ok(Some(0)) };
        }
        plan.materialized = true;
        plan.updated_at = at;
        let subtasks = plan.subtasks.clone();
        let parent = plan.parent_task_id;
        let (in_order, ids) = hive_models::tasks_in_layers(&subtasks);
        let in_order: Vec<hive_models::SubTask> = in_order.into_iter().cloned().collect();
        let ids: HashMap<String, TaskId> =
            ids.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        self.add_subtasks(id, parent, &in_order, &ids, at);
        Ok(Some(self.plan_tasks.get(&id).map_or(0, Vec::len) as u64))
    }

    /// See [`crate::Store::prune_plans`]; `p` is checked.
    pub(crate) fn prune_plans(&mut self, p: &PlanPruneParams, at: Timestamp) -> PlansPruned {
        let cutoff = sub(at, p.older_than);
        let all_finished = |s: &State, id: &PlanId| {
            s.plan_tasks.get(id).is_none_or(|tasks| {
                tasks
                    .iter()
                    .all(|t| s.task(*t).is_none_or(|t| t.status.is_terminal()))
            })
        };
        let mut old: Vec<(Timestamp, PlanId)> = self
            .plans
            .values()
            .filter(|plan| p.statuses.contains(&plan.status) && plan.updated_at < cutoff)
            .filter(|plan| all_finished(self, &plan.id))
            .map(|plan| (plan.updated_at, plan.id))
            .collect();
        old.sort();
        old.truncate(p.limit as usize);
        let mut pruned = PlansPruned::default();
        for (_, id) in old {
            // The plan's list goes first: removing each task from it would cost a scan.
            for task in self.plan_tasks.remove(&id).unwrap_or_default() {
                if self.remove_task(task, at) {
                    pruned.tasks += 1;
                }
            }
            if let Some(key) = self.plans.remove(&id).and_then(|p| p.idempotency_key) {
                self.plan_keys.remove(&key);
            }
            pruned.plans += 1;
        }
        pruned
    }
}
