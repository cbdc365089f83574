//! Runs given back without an outcome.

use hive_models::{RunId, TaskId};

use super::MemoryStore;

impl MemoryStore {
    /// Releases the live runs among `run_ids`, in their order; with `unstarted`, each
    /// released run's start is also taken out of its scopes' rate windows.
    pub(super) fn release(&self, run_ids: &[RunId], unstarted: bool) -> Vec<TaskId> {
        let (released, notes) = {
            let mut s = self.lock();
            let runs: Vec<(RunId, TaskId)> = run_ids
                .iter()
                .filter_map(|r| s.task_of(*r).map(|t| (*r, t)))
                .collect();
            let (released, notes) = self.replay(&mut s, |ch| ch.release_all(&runs));
            if unstarted {
                for (run, _) in &released {
                    s.forget_start(*run);
                }
            }
            (released.into_iter().map(|(_, t)| t).collect(), notes)
        };
        self.send(notes);
        released
    }
}
