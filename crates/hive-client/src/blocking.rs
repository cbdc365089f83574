//! A synchronous facade over [`crate::Client`], for callers without an async runtime
//! (feature `blocking`), in the manner of reqwest's `blocking` module.
//!
//! ```no_run
//! # fn demo() -> Result<(), hive_client::Error> {
//! let client = hive_client::blocking::Client::connect("sqlite:hive.db")?;
//! let id = client.create_task(hive_client::NewTask::new("Deploy", "deployment"))?;
//! assert!(client.get_task(id)?.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! It owns a small Tokio runtime. Do not call it from inside an async context (blocking
//! a runtime thread on another runtime panics); use the async [`crate::Client`] there.

use std::future::Future;
use std::sync::Arc;

use hive_models::{
    Json, NewPlan, NewTask, PlanId, PlanStatus, Task, TaskId, TaskStatus, WorkerStatus,
};

use crate::Result;

/// The blocking client. Cheap to clone; clones share the runtime and the pool.
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hive-blocking")
        .enable_all()
        .build()
        .map_err(|e| {
            hive_store::Error::Unavailable {
                target: "tokio runtime".into(),
                reason: e.to_string(),
            }
            .into()
        })
}

impl Client {
    /// Opens `memory:`, `sqlite:PATH` or `postgres://…`, applying migrations.
    pub fn connect(url: &str) -> Result<Client> {
        let runtime = runtime()?;
        let inner = runtime.block_on(crate::Client::connect(url))?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// `HIVE_DATABASE_URL`, else `sqlite:hive.db`.
    pub fn from_env() -> Result<Client> {
        let runtime = runtime()?;
        let inner = runtime.block_on(crate::Client::from_env())?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// Runs any async operation of the async client to completion, for everything this
    /// facade does not wrap: `client.block_on(|c| c.list_plans(None, None))`.
    pub fn block_on<'a, F, Fut>(&'a self, f: F) -> Fut::Output
    where
        F: FnOnce(&'a crate::Client) -> Fut,
        Fut: Future + 'a,
    {
        self.runtime.block_on(f(&self.inner))
    }

    /// The async client this facade drives.
    pub fn async_client(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`hive_ops::Ops::create_task`].
    pub fn create_task(&self, task: NewTask) -> Result<TaskId> {
        Ok(self.block_on(|c| c.create_task(task))?)
    }

    /// See [`hive_ops::Ops::get_task`].
    pub fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.block_on(|c| c.get_task(id))?)
    }

    /// See [`hive_ops::Ops::update_task_status`].
    pub fn update_task_status(
        &self,
        id: TaskId,
        status: TaskStatus,
        metadata: Option<Json>,
    ) -> Result<bool> {
        Ok(self.block_on(|c| c.update_task_status(id, status, metadata))?)
    }

    /// See [`crate::Client::get_pending_tasks`].
    pub fn get_pending_tasks(&self, task_type: Option<&str>) -> Result<Vec<Task>> {
        self.block_on(|c| c.get_pending_tasks(task_type))
    }

    /// See [`hive_ops::Ops::register_worker`].
    pub fn register_worker(
        &self,
        worker_id: &str,
        role: &str,
        capabilities: Vec<String>,
    ) -> Result<bool> {
        Ok(self.block_on(|c| c.register_worker(worker_id, role, capabilities))?)
    }

    /// See [`crate::Client::heartbeat`].
    pub fn heartbeat(&self, worker_id: &str, status: Option<WorkerStatus>) -> Result<bool> {
        self.block_on(|c| c.heartbeat(worker_id, status))
    }

    /// See [`hive_ops::Ops::submit_plan`].
    pub fn submit_plan(&self, plan: NewPlan) -> Result<PlanId> {
        Ok(self.block_on(|c| c.submit_plan(plan))?)
    }

    /// See [`crate::Client::start_plan_execution`].
    pub fn start_plan_execution(&self, plan_id: PlanId) -> Result<bool> {
        self.block_on(|c| c.start_plan_execution(plan_id))
    }

    /// See [`crate::Client::get_next_subtask`].
    pub fn get_next_subtask(&self, plan_id: PlanId) -> Result<Option<Task>> {
        self.block_on(|c| c.get_next_subtask(plan_id))
    }

    /// See [`hive_ops::Ops::get_execution_plan_status`].
    pub fn get_execution_plan_status(&self, plan_id: PlanId) -> Result<Option<PlanStatus>> {
        Ok(self.block_on(|c| c.get_execution_plan_status(plan_id))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_round_trip_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("hive-blocking-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let client = Client::connect(&format!("sqlite:{}", dir.join("b.db").display())).unwrap();
        let id = client.create_task(NewTask::new("t", "x")).unwrap();
        assert!(
            client
                .update_task_status(id, TaskStatus::Cancelled, None)
                .unwrap()
        );
        assert_eq!(
            client.get_task(id).unwrap().unwrap().status,
            TaskStatus::Cancelled
        );
        assert!(client.register_worker("w", "r", vec![]).unwrap());
        assert!(client.heartbeat("w", None).unwrap());
        let plans = client.block_on(|c| c.list_plans(None, None)).unwrap();
        assert!(plans.is_empty());
        std::fs::remove_dir_all(dir).ok();
    }
}
