//! A plan's results: every subtask's status, attempts, timing, worker, output and error,
//! and the plan's own result (its sinks' outputs). What `hive plan status` and
//! `hive plan results` show, read in three queries whatever the plan's size.

use std::collections::{HashMap, HashSet};

use hive_models::{
    ExecutionPlan, Json, PlanId, PlanStatus, Run, TaskId, TaskStatus, Timestamp, WorkerId,
};
use hive_store::{Store, TaskFilter};
use serde::Serialize;

use crate::{Ops, Result};

/// One subtask as it stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubtaskResult {
    pub subtask_id: String,
    pub task_id: TaskId,
    pub status: TaskStatus,
    /// The subtasks it waits for.
    pub dependencies: Vec<String>,
    pub attempts: u32,
    /// The worker of its latest run.
    pub worker: Option<WorkerId>,
    /// When its latest run started and, once it ended, how long it took.
    pub started_at: Option<Timestamp>,
    pub duration_secs: Option<f64>,
    /// What its handler returned (`None` until it completed, or when it returned nothing).
    pub output: Option<Json>,
    /// Its last error.
    pub error: Option<String>,
    /// How far its running run said it had got (`None` unless it runs and reported).
    pub progress: Option<hive_models::Progress>,
}

/// What a subtask's latest run says of its timing: when it started, how long it took once
/// it ended, and how far it said it had got while it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunTiming {
    pub started_at: Option<Timestamp>,
    pub duration_secs: Option<f64>,
    pub progress: Option<hive_models::Progress>,
}

impl RunTiming {
    pub fn of(latest: Option<&Run>) -> RunTiming {
        RunTiming {
            started_at: latest.map(|r| r.started_at),
            duration_secs: latest
                .and_then(Run::duration)
                .and_then(|d| d.num_microseconds())
                .map(|us| us as f64 / 1e6),
            progress: latest
                .filter(|r| r.is_running())
                .and_then(|r| r.progress.clone()),
        }
    }
}

/// A plan's subtasks in plan order, and its own result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanResults {
    pub plan_id: PlanId,
    pub title: String,
    pub status: PlanStatus,
    /// The outputs of the plan's sinks (subtasks nothing depends on), keyed by subtask id:
    /// what the plan as a whole produced. A sink without output maps to `null`.
    pub result: serde_json::Map<String, Json>,
    pub subtasks: Vec<SubtaskResult>,
}

impl PlanResults {
    fn assemble(plan: ExecutionPlan, tasks: Vec<hive_models::Task>, runs: Vec<Run>) -> Self {
        let mut latest: HashMap<TaskId, Run> = HashMap::new();
        for run in runs {
            match latest.get(&run.task_id) {
                Some(r) if r.run_number >= run.run_number => {}
                _ => {
                    latest.insert(run.task_id, run);
                }
            }
        }
        let mut by_subtask: HashMap<String, hive_models::Task> = tasks
            .into_iter()
            .filter_map(|t| Some((t.plan_subtask_id.clone()?, t)))
            .collect();
        let depended: HashSet<&str> = plan
            .subtasks
            .iter()
            .flat_map(|s| s.dependencies.iter().map(String::as_str))
            .collect();
        let mut result = serde_json::Map::new();
        let mut subtasks = Vec::with_capacity(plan.subtasks.len());
        for spec in &plan.subtasks {
            let Some(task) = by_subtask.remove(&spec.id) else {
                continue;
            };
            let run = latest.get(&task.id);
            if !depended.contains(spec.id.as_str()) {
                result.insert(spec.id.clone(), task.result.clone().unwrap_or(Json::Null));
            }
            let timing = RunTiming::of(run);
            subtasks.push(SubtaskResult {
                subtask_id: spec.id.clone(),
                task_id: task.id,
                status: task.status,
                // A dependency named twice in the plan is one dependency.
                dependencies: hive_models::unique_dependencies(spec)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                attempts: task.attempts,
                worker: run.map(|r| r.worker_id.clone()),
                started_at: timing.started_at,
                duration_secs: timing.duration_secs,
                error: task.current_error().map(str::to_owned),
                output: task.result,
                progress: timing.progress,
            });
        }
        PlanResults {
            plan_id: plan.id,
            title: plan.title,
            status: plan.status,
            result,
            subtasks,
        }
    }
}

impl<S: Store + ?Sized> Ops<S> {
    /// Every subtask of a plan with its status, timing, worker, output and error, and the
    /// plan's result; `None` for an unknown plan. Subtasks not materialized yet are absent.
    pub async fn plan_results(&self, plan_id: PlanId) -> Result<Option<PlanResults>> {
        let Some(plan) = self.store.get_plan(plan_id).await? else {
            return Ok(None);
        };
        let tasks = self.store.list_tasks(&TaskFilter::in_plan(plan_id)).await?;
        let runs = self.store.list_plan_runs(plan_id).await?;
        Ok(Some(PlanResults::assemble(plan, tasks, runs)))
    }
}
