//! Small builders the tests of every crate share: ids, claim parameters, outcomes, plans
//! and batches of tasks.

use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewPlan, NewTask, RetryPolicy, RunId, SubTask, TaskId, TaskStatus, WorkerId};
use serde_json::json;

use crate::{
    ClaimParams, Finished, Outcome, ReapParams, RunOutcome, StatusChange, StatusChanged, Store,
    TaskFilter, WorkerRegistration,
};

/// A worker id; panics on an invalid name (a test's own constant).
pub fn worker(name: &str) -> WorkerId {
    WorkerId::parse(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Claim up to `limit` tasks of any type for `worker`, under a minute's lease.
pub fn claim_params(worker_name: &str, limit: u32) -> ClaimParams {
    ClaimParams {
        worker_id: worker(worker_name),
        task_types: vec![],
        limit,
        lease: Duration::from_secs(60),
    }
}

/// Claim up to `limit` tasks for `worker` under this lease.
pub fn leased(worker_name: &str, limit: u32, lease: Duration) -> ClaimParams {
    ClaimParams {
        lease,
        ..claim_params(worker_name, limit)
    }
}

/// A worker of role `r` with no capabilities.
pub fn registration(name: &str) -> WorkerRegistration {
    WorkerRegistration {
        id: worker(name),
        role: "r".into(),
        capabilities: vec![],
        metadata: json!({}),
    }
}

/// Reap up to 100 expired leases; no worker goes offline by the clock during a test.
pub fn reap_params() -> ReapParams {
    ReapParams {
        heartbeat_timeout: Duration::from_secs(3600),
        retry: RetryPolicy::IMMEDIATE,
        limit: 100,
    }
}

/// The ids of the tasks `filter` lists, in the order the store lists them.
pub async fn listed(s: &dyn Store, filter: TaskFilter) -> Vec<TaskId> {
    let tasks = s
        .list_tasks(&filter)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tasks.iter().map(|t| t.id).collect()
}

/// Moves an existing task to `to`, which must be legal from where it is.
pub async fn set_status(s: &dyn Store, id: TaskId, to: TaskStatus) -> StatusChanged {
    let changed = s.set_task_status(id, StatusChange::to(to)).await;
    let changed = changed.unwrap_or_else(|e| panic!("set {id} to {to}: {e}"));
    changed.unwrap_or_else(|| panic!("no task {id}"))
}

/// A success with a small result and log.
pub fn success(run_id: RunId) -> RunOutcome {
    RunOutcome {
        run_id,
        outcome: Outcome::success(Some(json!({"ok": true}))),
        output_log: Some("done".into()),
        waited: std::time::Duration::ZERO,
    }
}

/// A failure (`boom`), retried under `retry` while retries remain.
pub fn failure(run_id: RunId, retry: Option<RetryPolicy>) -> RunOutcome {
    RunOutcome {
        run_id,
        outcome: Outcome::Failure {
            error: "boom".into(),
            retry,
        },
        output_log: None,
        waited: std::time::Duration::ZERO,
    }
}

/// A plan of these subtasks.
pub fn plan(subtasks: Vec<SubTask>) -> NewPlan {
    NewPlan::new("plan", subtasks).description("a plan")
}

/// A subtask of type `test` waiting for `deps`.
pub fn node(id: &str, deps: &[&str]) -> SubTask {
    SubTask::new(id, format!("node {id}"), "test").depends_on(deps.iter().copied())
}

/// `n` tasks of `task_type` titled `{prefix}0`, `{prefix}1`, ….
pub fn tasks(prefix: &str, task_type: &str, n: usize) -> Vec<NewTask> {
    (0..n)
        .map(|i| NewTask::new(format!("{prefix}{i}"), task_type))
        .collect()
}

/// Claims up to `batch` tasks at a time as `worker` and completes them, until nothing is
/// claimable; returns the tasks it took (each must complete, not be stale).
pub async fn drain(s: Arc<dyn Store>, worker_name: String, batch: u32) -> Vec<TaskId> {
    let mut mine = Vec::new();
    loop {
        let claims = s
            .claim_tasks(&claim_params(&worker_name, batch))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if claims.is_empty() {
            return mine;
        }
        let outcomes: Vec<RunOutcome> = claims.iter().map(|c| success(c.run.id)).collect();
        for r in s
            .finish_runs(&outcomes)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
        {
            assert_eq!(r.finished, Finished::Completed);
        }
        mine.extend(claims.into_iter().map(|c| c.task.id));
    }
}

/// An app's own SQLite database at `path`: one `customers` table and no Hive schema.
#[cfg(feature = "sqlite")]
pub async fn foreign_sqlite(path: &std::path::Path) -> sqlx::SqlitePool {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=rwc", path.display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("CREATE TABLE customers (id INTEGER)")
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    pool
}

/// Moves `s` back as if no scheduler had run for `secs` seconds before its `done_until`.
pub fn schedule_behind(s: &hive_models::Schedule, secs: i64) -> crate::ScheduleAdvance {
    crate::ScheduleAdvance {
        name: s.name.clone(),
        from: s.done_until,
        to: s.done_until - chrono::Duration::seconds(secs),
        last_fired: None,
        next_slot: Some(s.done_until - chrono::Duration::seconds(secs - 1)),
        enabled: None,
    }
}
