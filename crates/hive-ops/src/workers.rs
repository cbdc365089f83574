//! Worker operations: register, heartbeat, list the active ones, unregister.

use hive_models::{Json, TaskId, Worker, WorkerId, WorkerStatus};
use hive_store::{Store, WorkerFilter, WorkerRegistration, WorkerStatusChange};

use crate::{Ops, Result};

impl<S: Store + ?Sized> Ops<S> {
    /// Registers a worker (re-registering updates its role and capabilities). Always true
    /// once stored, as in the original API; see [`Ops::register_worker_with`] for the row.
    pub async fn register_worker(
        &self,
        worker_id: &str,
        role: &str,
        capabilities: Vec<String>,
    ) -> Result<bool> {
        let registration = WorkerRegistration {
            id: WorkerId::parse(worker_id)?,
            role: role.to_owned(),
            capabilities,
            metadata: Json::Object(Default::default()),
        };
        self.register_worker_with(&registration).await.map(|_| true)
    }

    /// Registers a worker with metadata and returns the stored row.
    pub async fn register_worker_with(&self, registration: &WorkerRegistration) -> Result<Worker> {
        if registration.role.trim().is_empty() {
            return Err(hive_models::Error::InvalidField {
                field: "role".into(),
                reason: "must not be empty".into(),
            }
            .into());
        }
        hive_models::check_no_nul("role", &registration.role)?;
        for (i, c) in registration.capabilities.iter().enumerate() {
            hive_models::check_no_nul(&format!("capabilities[{i}]"), c)?;
        }
        hive_models::check_json_storable("metadata", &registration.metadata)?;
        Ok(self.store.register_worker(registration).await?)
    }

    /// Records a heartbeat (and optionally a new status), extending the leases of the
    /// worker's running tasks. False for an unknown worker.
    pub async fn update_worker_heartbeat(
        &self,
        worker_id: &str,
        status: Option<WorkerStatus>,
    ) -> Result<bool> {
        let id = WorkerId::parse(worker_id)?;
        let change = status.map(WorkerStatusChange::to);
        Ok(self.store.heartbeat(&id, change).await?.is_some())
    }

    /// Moves a worker to `status`, keeping `reason` as its `status_reason` (`None` clears
    /// an earlier one): how a worker marked `error` says what went wrong. Counts as a
    /// heartbeat. False for an unknown worker.
    pub async fn set_worker_status(
        &self,
        worker_id: &str,
        status: WorkerStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        let id = WorkerId::parse(worker_id)?;
        if let Some(reason) = reason {
            hive_models::check_no_nul("reason", reason)?;
        }
        let change = WorkerStatusChange {
            status,
            reason: reason.map(str::to_owned),
        };
        Ok(self.store.heartbeat(&id, Some(change)).await?.is_some())
    }

    /// Workers that are active or idle with a heartbeat within the configured timeout
    /// (on the database clock), optionally of one role.
    pub async fn get_active_workers(&self, role: Option<&str>) -> Result<Vec<Worker>> {
        let filter = WorkerFilter {
            role: role.map(str::to_owned),
            alive_within: Some(self.config.heartbeat_timeout),
        };
        Ok(self.store.list_workers(&filter).await?)
    }

    /// Every registered worker, optionally of one role, whatever its liveness.
    pub async fn list_workers(&self, role: Option<&str>) -> Result<Vec<Worker>> {
        let filter = WorkerFilter {
            role: role.map(str::to_owned),
            alive_within: None,
        };
        Ok(self.store.list_workers(&filter).await?)
    }

    pub async fn get_worker(&self, worker_id: &str) -> Result<Option<Worker>> {
        Ok(self.store.get_worker(&WorkerId::parse(worker_id)?).await?)
    }

    /// Removes a worker; the tasks it was running go back to the queue without using up a
    /// retry. False for an unknown worker.
    pub async fn unregister_worker(&self, worker_id: &str) -> Result<bool> {
        Ok(self.remove_worker(worker_id).await?.is_some())
    }

    /// [`Ops::unregister_worker`], returning the tasks that went back to the queue; `None`
    /// for an unknown worker.
    pub async fn remove_worker(&self, worker_id: &str) -> Result<Option<Vec<TaskId>>> {
        let id = WorkerId::parse(worker_id)?;
        Ok(self.store.unregister_worker(&id).await?)
    }

    /// Removes the workers silent for longer than `silent_for` (and than the heartbeat
    /// timeout), by their last heartbeat on the database clock: processes that died without
    /// unregistering, each leaving a row (a stopped worker unregisters itself), offline or
    /// not yet marked so. A worker still holding a run (its lease may hold — a long lease,
    /// or one its handler lengthened: it may be cut off, not dead — or have lapsed without
    /// the reaper yet taking the run back) is kept: pruning never gives a run back, the
    /// reaper does, counting the attempt. Each worker is checked and removed in one step
    /// ([`Store::prune_worker`]), so one that beats or claims meanwhile is kept, or, alive
    /// after all, registers anew at its next heartbeat. Returns the removed ids.
    pub async fn prune_workers(&self, silent_for: std::time::Duration) -> Result<Vec<WorkerId>> {
        let now = self.store.now().await?;
        let silent_for = silent_for.max(self.config.heartbeat_timeout);
        let before = chrono::Duration::from_std(silent_for)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut removed = Vec::new();
        for w in self.store.list_workers(&WorkerFilter::default()).await? {
            if w.last_heartbeat < before && self.store.prune_worker(&w.id, before).await? {
                removed.push(w.id);
            }
        }
        Ok(removed)
    }
}
