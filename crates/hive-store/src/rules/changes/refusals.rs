//! Status changes a plan's state refuses: queuing again a subtask its plan would not run,
//! or one waiting for a dependency that will not complete.

use hive_models::Task;

use super::{Changes, View};

impl<V: View + ?Sized> Changes<'_, V> {
    /// A failed or cancelled subtask queued again alone would run in a plan that never
    /// moves again, with what depends on it cancelled: refused while its plan is failed or
    /// cancelled (its retry requeues the subtask with its dependents).
    pub(super) fn check_plan_runs_on(&self, task: &Task) -> Result<(), hive_models::Error> {
        let Some(pid) = task.plan_id else {
            return Ok(());
        };
        match self.plan_counters(pid).map(|c| c.status) {
            Some(status) if !status.requeues_subtasks() => {
                Err(hive_models::Error::SubtaskOfFinishedPlan {
                    task: task.id.to_string(),
                    plan: pid.to_string(),
                    status: status.as_str(),
                })
            }
            _ => Ok(()),
        }
    }

    /// A task queued again waits for every dependency not completed; one that failed or
    /// was cancelled (alone, its plan left running) never completes, so the task would wait
    /// for good and its plan never finish: refused. The adapter loads the dependencies of a
    /// task requeued from a finished status ([`StatusChange::loads_dependencies`]).
    pub(super) fn check_dependencies_can_complete(
        &self,
        task: &Task,
    ) -> Result<(), hive_models::Error> {
        for &dep in &task.dependencies {
            if let Some(st) = self
                .state(dep)
                .map(|d| d.status)
                .filter(|s| s.never_completes())
            {
                return Err(hive_models::Error::DependencyWillNotComplete {
                    task: task.id.to_string(),
                    dependency: dep.to_string(),
                    status: st.as_str(),
                });
            }
        }
        Ok(())
    }
}
