//! The original Python SDK's names, kept for its users: each is a thin name over one
//! operation of [`hive_ops::Ops`] (callable on [`Client`] directly), documented with the
//! operation it maps to. The Rust-native API keeps one name per concept; these exist so that
//! code ported from `hive_orchestration` reads the same (docs/MIGRATING.md).
//!
//! ```no_run
//! use hive_client::{NewPlan, SubTask, get_client};
//!
//! # async fn demo() -> Result<(), hive_client::Error> {
//! let client = get_client().await?; // an `OrchestrationClient`
//! let plan = client
//!     .create_execution_plan(NewPlan::new("Release", vec![
//!         SubTask::new("build", "Build", "shell"),
//!         SubTask::new("test", "Test", "shell").depends_on(["build"]),
//!     ]))
//!     .await?;
//! assert_eq!(client.create_subtasks_from_plan(plan).await?, 2);
//! client.start_plan_execution(plan).await?;
//! let status = client.get_plan_status(plan).await?;
//! if let Some(next) = client.get_next_subtask(plan).await? {
//!     assert!(client.check_dependencies(next.id).await?);
//! }
//! let deployers = client.get_available_workers(Some("deployer")).await?;
//! let pending = client.get_pending_tasks(Some("deployment")).await?;
//! # let _ = (status, deployers, pending);
//! # Ok(())
//! # }
//! ```

use hive_models::{PlanId, PlanStatus, Task, TaskId, Worker, WorkerStatus};

use crate::{Client, Result};

/// The original SDK's name for [`Client`].
pub type OrchestrationClient = Client;

/// [`Client::from_env`], the original SDK's entry point.
pub async fn get_client() -> Result<Client> {
    Client::from_env().await
}

/// How many tasks [`Client::get_pending_tasks`] returns at most: the original's, which
/// called `get_queued_tasks` with its default limit.
pub const PENDING_TASKS_LIMIT: u32 = hive_ops::DEFAULT_QUEUED_LIMIT;

impl Client {
    /// Queued tasks, optionally of one type, best first: [`hive_ops::Ops::get_queued_tasks`]
    /// with a limit of [`PENDING_TASKS_LIMIT`] (10, as in the original).
    pub async fn get_pending_tasks(&self, task_type: Option<&str>) -> Result<Vec<Task>> {
        Ok(self
            .ops()
            .get_queued_tasks(PENDING_TASKS_LIMIT, task_type)
            .await?)
    }

    /// A worker heartbeat, optionally with a new status; false for an unknown worker:
    /// [`hive_ops::Ops::update_worker_heartbeat`]. To give a reason with a status (a worker
    /// marked `error`), use [`hive_ops::Ops::set_worker_status`].
    pub async fn heartbeat(&self, worker_id: &str, status: Option<WorkerStatus>) -> Result<bool> {
        Ok(self
            .ops()
            .update_worker_heartbeat(worker_id, status)
            .await?)
    }

    /// Marks a plan started (pending → in_progress); false otherwise:
    /// [`hive_ops::Ops::mark_plan_execution_started`].
    pub async fn start_plan_execution(&self, plan_id: PlanId) -> Result<bool> {
        Ok(self.ops().mark_plan_execution_started(plan_id).await?)
    }

    /// The plan's best ready subtask, without claiming it:
    /// [`hive_ops::Ops::get_next_planned_subtask`].
    pub async fn get_next_subtask(&self, plan_id: PlanId) -> Result<Option<Task>> {
        Ok(self.ops().get_next_planned_subtask(plan_id).await?)
    }

    /// Workers that are active or idle with a recent heartbeat, optionally of one role:
    /// [`hive_ops::Ops::get_active_workers`]. (A worker busy with a task is listed too; see
    /// [`Worker::is_available`] for one that is not.)
    pub async fn get_available_workers(&self, role: Option<&str>) -> Result<Vec<Worker>> {
        Ok(self.ops().get_active_workers(role).await?)
    }

    /// A plan's status, `None` for an unknown plan:
    /// [`hive_ops::Ops::get_execution_plan_status`] (read from the store, not the cache).
    pub async fn get_plan_status(&self, plan_id: PlanId) -> Result<Option<PlanStatus>> {
        Ok(self.ops().get_execution_plan_status(plan_id).await?)
    }

    /// Whether every dependency of a task is completed; `NotFound` for an unknown task:
    /// [`hive_ops::Ops::check_subtask_dependencies`].
    pub async fn check_dependencies(&self, task_id: TaskId) -> Result<bool> {
        Ok(self.ops().check_subtask_dependencies(task_id).await?)
    }

    /// Turns a plan's subtasks into tasks and returns how many were created (0 when done
    /// before); `NotFound` for an unknown plan:
    /// [`hive_ops::Ops::create_planned_subtasks_from_plan`].
    pub async fn create_subtasks_from_plan(&self, plan_id: PlanId) -> Result<u64> {
        Ok(self
            .ops()
            .create_planned_subtasks_from_plan(plan_id)
            .await?)
    }
}
