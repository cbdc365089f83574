//! [`Client`]: the facade apps hold, over the operations of one store.

use std::ops::Deref;
use std::sync::Arc;

use hive_models::{PlanId, Task, WorkerStatus};
use hive_ops::{Ops, OpsConfig};
use hive_store::{ConnectOptions, Store};

use crate::Result;

/// The environment variable naming the database.
pub const DATABASE_URL_ENV: &str = "HIVE_DATABASE_URL";
/// The database used when `HIVE_DATABASE_URL` is unset: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:hive.db";

/// The original SDK's name for [`Client`].
pub type OrchestrationClient = Client;

/// A handle on one Hive store. Cheap to clone; clones share the connection pool and the
/// event bus. Every [`Ops`] method is callable on it directly.
#[derive(Debug, Clone)]
pub struct Client {
    ops: Ops<dyn Store>,
}

impl Deref for Client {
    type Target = Ops<dyn Store>;

    fn deref(&self) -> &Self::Target {
        &self.ops
    }
}

/// [`Client::from_env`], the original SDK's entry point.
pub async fn get_client() -> Result<Client> {
    Client::from_env().await
}

impl Client {
    /// Opens `memory:`, `sqlite:PATH` or `postgres://…`, applying migrations.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, &ConnectOptions::default(), OpsConfig::default()).await
    }

    /// [`Client::connect`] with pool and operation settings.
    pub async fn connect_with(
        url: &str,
        options: &ConnectOptions,
        config: OpsConfig,
    ) -> Result<Client> {
        let store = hive_store::connect_with(url, options).await?;
        Ok(Self::from_store(store, config))
    }

    /// `HIVE_DATABASE_URL`, else `sqlite:hive.db` (created and migrated on first use).
    pub async fn from_env() -> Result<Client> {
        let url =
            std::env::var(DATABASE_URL_ENV).unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        Self::connect(&url).await
    }

    /// A client over a store you opened yourself.
    pub fn from_store(store: Arc<dyn Store>, config: OpsConfig) -> Client {
        Client {
            ops: Ops::with_config(store, config),
        }
    }

    /// The operations, for code generic over them.
    pub fn ops(&self) -> &Ops<dyn Store> {
        &self.ops
    }

    /// Queued tasks, optionally of one type, best first (at most 100).
    pub async fn get_pending_tasks(&self, task_type: Option<&str>) -> Result<Vec<Task>> {
        Ok(self.ops.get_queued_tasks(100, task_type).await?)
    }

    /// A worker heartbeat, optionally with a new status; false for an unknown worker.
    pub async fn heartbeat(&self, worker_id: &str, status: Option<WorkerStatus>) -> Result<bool> {
        Ok(self.ops.update_worker_heartbeat(worker_id, status).await?)
    }

    /// Marks a plan started (pending → in_progress); false otherwise.
    pub async fn start_plan_execution(&self, plan_id: PlanId) -> Result<bool> {
        Ok(self.ops.mark_plan_execution_started(plan_id).await?)
    }

    /// The plan's best ready subtask, without claiming it.
    pub async fn get_next_subtask(&self, plan_id: PlanId) -> Result<Option<Task>> {
        Ok(self.ops.get_next_planned_subtask(plan_id).await?)
    }
}
