//! A plan's subtasks becoming tasks: at materialization, and when a running subtask
//! spawns more.

use std::collections::HashMap;

use hive_models::{PlanId, RunId, SubTask, TaskId, TaskStatus, Timestamp};

use super::state::{State, now};
use crate::RunOutcome;

impl State {
    /// Adds a batch's spawns to their plans, before the batch finishes; a spawn its plan cannot
    /// take turns its outcome into a permanent failure. Stale runs spawn nothing. Returns the
    /// outcomes to finish and how many tasks were created.
    pub fn grow_spawns<'a>(
        &mut self,
        outcomes: &'a [RunOutcome],
    ) -> (std::borrow::Cow<'a, [RunOutcome]>, u64) {
        use crate::rules::growth;
        let at = now();
        let run_task: HashMap<RunId, TaskId> = growth::spawning(outcomes)
            .filter_map(|(i, _)| Some((outcomes[i].run_id, self.task_of(outcomes[i].run_id)?)))
            .collect();
        let mut out = std::borrow::Cow::Borrowed(outcomes);
        let mut created = 0;
        for (i, task, spawn) in growth::live_spawns(outcomes, &*self, &run_task) {
            match self.grow_plan(task, spawn, at) {
                Ok(n) => created += n,
                Err(e) => growth::refuse(&mut out, i, &e),
            }
        }
        (out, created)
    }

    /// Creates the tasks of `subtasks` (in creation order) in plan `plan`; `ids` maps every
    /// subtask id they may depend on to its task. A dependency already completed does not
    /// count as pending.
    pub fn add_subtasks(
        &mut self,
        plan: PlanId,
        parent: Option<TaskId>,
        subtasks: &[SubTask],
        ids: &HashMap<String, TaskId>,
        at: Timestamp,
    ) {
        for st in subtasks {
            let Some(&tid) = ids.get(&st.id) else {
                continue;
            };
            let deps: Vec<TaskId> = hive_models::unique_dependencies(st)
                .into_iter()
                .filter_map(|d| ids.get(d).copied())
                .collect();
            let pending = deps
                .iter()
                .filter(|d| {
                    self.task(**d)
                        .is_none_or(|t| t.status != TaskStatus::Completed)
                })
                .count();
            self.insert_task(tid, st.to_new_task(parent), at, pending > 0);
            for d in &deps {
                self.dependents.entry(*d).or_default().push(tid);
            }
            if let Some(t) = self.task_mut(tid) {
                t.plan_id = Some(plan);
                t.plan_subtask_id = Some(st.id.clone());
                t.pending_dependencies = pending as u32;
                t.dependencies = deps;
            }
            self.sync_ready(tid);
            self.plan_tasks.entry(plan).or_default().push(tid);
        }
    }

    /// Adds what the running task `spawner` spawned to its plan (see [`hive_models::grow`]),
    /// before its completion is applied; returns how many tasks it created. A finished plan
    /// refuses the spawn.
    pub fn grow_plan(
        &mut self,
        spawner: TaskId,
        spawn: &[SubTask],
        at: Timestamp,
    ) -> Result<u64, hive_models::Error> {
        let Some(task) = self.task(spawner) else {
            return Ok(0);
        };
        let (Some(plan_id), Some(subtask)) = (task.plan_id, task.plan_subtask_id.clone()) else {
            return Err(hive_models::Error::InvalidField {
                field: "spawn".into(),
                reason: format!("{} belongs to no plan", task.describe()),
            });
        };
        let Some(plan) = self.plans.get(&plan_id) else {
            return Ok(0);
        };
        let growth =
            crate::rules::growth::growth(plan_id, plan.status, &plan.subtasks, &subtask, spawn)?;
        let Some(growth) = growth else {
            return Ok(0);
        };
        let parent = plan.parent_task_id;
        let mut ids: HashMap<String, TaskId> = self
            .plan_tasks
            .get(&plan_id)
            .into_iter()
            .flatten()
            .filter_map(|t| Some((self.task(*t)?.plan_subtask_id.clone()?, *t)))
            .collect();
        let status_of = |id: &str| Some(self.task(*ids.get(id)?)?.status);
        crate::rules::growth::dependencies_can_complete(&growth, status_of)?;
        for s in &growth.added {
            ids.insert(s.id.clone(), TaskId::new());
        }
        self.add_subtasks(plan_id, parent, &growth.added, &ids, at);
        let sinks: Vec<TaskId> = growth
            .sinks
            .iter()
            .filter_map(|s| ids.get(s).copied())
            .collect();
        for r in &growth.rewired {
            let Some(&tid) = ids.get(r) else { continue };
            for sink in &sinks {
                self.dependents.entry(*sink).or_default().push(tid);
            }
            if let Some(t) = self.task_mut(tid) {
                t.dependencies.extend(sinks.iter().copied());
                t.pending_dependencies += sinks.len() as u32;
                t.updated_at = at;
            }
            self.sync_ready(tid);
        }
        if let Some(plan) = self.plans.get_mut(&plan_id) {
            plan.grow(&growth);
            plan.updated_at = at;
        }
        Ok(growth.added.len() as u64)
    }
}
