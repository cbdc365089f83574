//! A large plan's subtasks in the order an operator looks for them, read a bounded page at
//! a time: what `hive plan status` and the dashboard show of a plan too large to list
//! whole.

use std::collections::HashMap;

use hive_models::{PlanHeader, Run, RunId, Task, TaskId, TaskStatus};
use hive_store::{Store, TaskPageParams};
use serde::Serialize;

use crate::results::RunTiming;
use crate::{Ops, Result};

/// What went wrong, what runs, what waits, then what finished.
pub const PLAN_TRIAGE_ORDER: [TaskStatus; 11] = [
    TaskStatus::Failed,
    TaskStatus::Rejected,
    TaskStatus::Escalated,
    TaskStatus::InProgress,
    TaskStatus::Assigned,
    TaskStatus::ReviewPending,
    TaskStatus::ReworkNeeded,
    TaskStatus::Approved,
    TaskStatus::Queued,
    TaskStatus::Cancelled,
    TaskStatus::Completed,
];

/// A subtask of a plan shown in part: its task row, the subtask ids of its dependencies,
/// and what its latest run says of its timing, all at one level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriagedSubtask {
    #[serde(flatten)]
    pub task: Task,
    /// The subtask ids of `task.dependencies`, in the same order.
    pub depends_on: Vec<String>,
    #[serde(flatten)]
    pub timing: RunTiming,
}

impl<S: Store + ?Sized> Ops<S> {
    /// [`Ops::plan_subtasks_by_status`] with each subtask's dependencies by subtask id and
    /// its latest run timing, read in two more queries for the rows found (their
    /// dependencies' names, their runs), never the plan's.
    pub async fn plan_subtasks_with_timing(
        &self,
        plan: &PlanHeader,
        statuses: &[TaskStatus],
        limit: u32,
    ) -> Result<Vec<TriagedSubtask>> {
        let tasks = self.plan_subtasks_by_status(plan, statuses, limit).await?;
        let mut deps: Vec<TaskId> = tasks.iter().flat_map(|t| t.dependencies.clone()).collect();
        deps.sort_unstable();
        deps.dedup();
        let names = self.store.subtask_ids(&deps).await?;
        let run_ids: Vec<RunId> = tasks.iter().filter_map(|t| t.current_run_id).collect();
        let runs: HashMap<RunId, Run> = if run_ids.is_empty() {
            HashMap::new()
        } else {
            let runs = self.store.get_runs(&run_ids).await?;
            runs.into_iter().map(|r| (r.id, r)).collect()
        };
        Ok(tasks
            .into_iter()
            .map(|task| TriagedSubtask {
                // A dependency without a name (a task outside the plan) shows its task id.
                depends_on: task
                    .dependencies
                    .iter()
                    .map(|d| names.get(d).cloned().unwrap_or_else(|| d.to_string()))
                    .collect(),
                timing: RunTiming::of(task.current_run_id.and_then(|id| runs.get(&id))),
                task,
            })
            .collect())
    }

    /// Up to `limit` of `plan`'s subtasks in `statuses`, status by status in the order
    /// given (a status named twice counts once), newest first within a status. Each read
    /// is one bounded page, never the whole plan, and a finished status the plan's
    /// counters put at zero is not read at all, so the cost follows `limit`, not the
    /// plan's size.
    pub async fn plan_subtasks_by_status(
        &self,
        plan: &PlanHeader,
        statuses: &[TaskStatus],
        limit: u32,
    ) -> Result<Vec<Task>> {
        let mut rows: Vec<Task> = Vec::new();
        for (i, &status) in statuses.iter().enumerate() {
            if statuses[..i].contains(&status) || counted(plan, status) == Some(0) {
                continue;
            }
            let mut before = None;
            loop {
                let left = limit.saturating_sub(u32::try_from(rows.len()).unwrap_or(u32::MAX));
                if left == 0 {
                    return Ok(rows);
                }
                let params = TaskPageParams {
                    status: Some(status),
                    plan_id: Some(plan.id),
                    before,
                    limit: left.min(TaskPageParams::MAX_LIMIT),
                    ..TaskPageParams::default()
                };
                let page = self.store.page_tasks(&params).await?;
                let full = page.len() == params.limit as usize;
                before = page.last().map(|t| t.id);
                rows.extend(page);
                if !full {
                    break;
                }
            }
        }
        Ok(rows)
    }
}

/// How many of the plan's subtasks are in `status`, where its counters say.
fn counted(plan: &PlanHeader, status: TaskStatus) -> Option<u32> {
    match status {
        TaskStatus::Failed => Some(plan.failed_subtasks),
        TaskStatus::Cancelled => Some(plan.cancelled_subtasks),
        TaskStatus::Completed => Some(plan.completed_subtasks),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_triage_order_names_every_status_once() {
        for status in TaskStatus::ALL {
            assert_eq!(
                PLAN_TRIAGE_ORDER.iter().filter(|s| *s == status).count(),
                1,
                "{status}"
            );
        }
    }
}
