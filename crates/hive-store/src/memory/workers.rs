//! Workers in memory: a registration creates the worker or brings it back, active.

use hive_models::{Json, Timestamp, Worker, WorkerId, WorkerStatus};

use super::state::State;
use crate::{WorkerRegistration, WorkerStatusChange};

impl State {
    /// Creates or refreshes `r`'s worker, active and beating at `at`; returns it.
    pub(crate) fn register_worker(&mut self, r: &WorkerRegistration, at: Timestamp) -> Worker {
        let w = self.workers.entry(r.id.clone()).or_insert_with(|| Worker {
            id: r.id.clone(),
            role: String::new(),
            status: WorkerStatus::Active,
            last_heartbeat: at,
            capabilities: Vec::new(),
            current_task_id: None,
            registered_at: at,
            metadata: Json::Null,
            status_reason: None,
        });
        w.role.clone_from(&r.role);
        w.capabilities.clone_from(&r.capabilities);
        w.metadata.clone_from(&r.metadata);
        w.set_status(WorkerStatus::Active, None);
        w.last_heartbeat = at;
        w.clone()
    }

    /// Records `id`'s heartbeat at `clock()` (read under the caller's lock), with its new
    /// status if any, and extends its running runs' leases; the runs extended, or `None`
    /// for an unknown worker.
    pub(crate) fn heartbeat(
        &mut self,
        id: &WorkerId,
        status: Option<WorkerStatusChange>,
        clock: impl FnOnce() -> Timestamp,
    ) -> Option<u64> {
        let at = clock();
        let w = self.workers.get_mut(id)?;
        w.last_heartbeat = at;
        match status {
            Some(c) => w.set_status(c.status, c.reason),
            None if w.status == WorkerStatus::Offline => w.set_status(WorkerStatus::Active, None),
            None => {}
        }
        let State { running, runs, .. } = self;
        let mut extended = 0;
        for (run_id, lease) in running.iter() {
            if let Some(run) = runs.get_mut(run_id)
                && &run.worker_id == id
            {
                run.lease_expires_at = Some(crate::rules::after(at, *lease));
                run.updated_at = at;
                extended += 1;
            }
        }
        Some(extended)
    }

    /// Removes `id` if it has been silent since before `silent_before` and holds no
    /// running run.
    pub(crate) fn prune_worker(&mut self, id: &WorkerId, silent_before: Timestamp) -> bool {
        let silent = self
            .workers
            .get(id)
            .is_some_and(|w| w.last_heartbeat < silent_before);
        if !silent || !self.runs_of(id).is_empty() {
            return false;
        }
        self.workers.remove(id).is_some()
    }
}
