//! Whether a task may be deleted: the one rule every backend applies, given what it read.

use super::{Task, TaskStatus};
use crate::{Error, Result};

/// A task's dependents, as deleting it counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DependentsLeft {
    /// Not finished: queued, held, running or in review.
    pub unfinished: usize,
    /// Not completed: unfinished, failed or cancelled.
    pub not_completed: usize,
}

impl Task {
    /// Whether this task may be deleted: never while its plan is unfinished (the plan could
    /// then never finish, or a dependent would run before what it waits for), nor while a
    /// worker holds it (its handler would run on, its limits' room freed), nor while
    /// unfinished tasks depend on it. Of a finished plan, which a retry can run again, only
    /// a completed subtask whose dependents all completed: the plan counts the others, and
    /// a retry would run them again, the dependents without its output.
    /// `plan_status` is its plan's status.
    pub fn check_deletable(
        &self,
        plan_status: Option<crate::PlanStatus>,
        dependents: DependentsLeft,
    ) -> Result<()> {
        let refuse = |reason: String| {
            Err(Error::InUse {
                kind: "task",
                id: self.id.to_string(),
                reason,
            })
        };
        if let (Some(plan), Some(status)) = (self.plan_id, plan_status)
            && !status.is_terminal()
        {
            return refuse(format!(
                "it belongs to plan `{plan}`, which is {status}; cancel the plan (or let it \
                 finish) before deleting its tasks"
            ));
        }
        if let (Some(plan), Some(status)) = (self.plan_id, plan_status) {
            if self.status != TaskStatus::Completed {
                return refuse(format!(
                    "it is {} in plan `{plan}`, which is {status} and may be retried (which \
                     runs it again); delete the whole plan with `hive plan prune` instead",
                    self.status
                ));
            }
            if dependents.not_completed > 0 {
                return refuse(format!(
                    "{} subtask(s) of plan `{plan}` that depend on it have not completed: a \
                     retry of the plan would run them without its output; delete the whole \
                     plan with `hive plan prune` instead",
                    dependents.not_completed
                ));
            }
        }
        if self.is_active() {
            return refuse(format!(
                "a worker holds it ({}); cancel it first",
                self.status
            ));
        }
        if dependents.unfinished > 0 {
            return refuse(format!(
                "{} unfinished task(s) depend on it; cancel them first",
                dependents.unfinished
            ));
        }
        Ok(())
    }
}
