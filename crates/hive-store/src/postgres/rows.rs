//! Turning Postgres rows into the models, refusing anything the models cannot represent.

use hive_models::{
    ExecutionPlan, PlanCounters, PlanHeader, PlanId, PlanStatus, Run, RunId, RunStatus, SubTask,
    Task, TaskId, TaskStatus, Worker, WorkerId, WorkerStatus,
};
use sqlx::Row;
use sqlx::postgres::{PgRow, Postgres};
use uuid::Uuid;

use super::Fail;
use crate::Error;

/// Reads one column; a value the Rust type cannot hold means the row is corrupt.
pub(super) fn get<'r, T>(row: &'r PgRow, column: &str, table: &'static str) -> Result<T, Fail>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| corrupt(table, format!("column `{column}`: {e}")))
}

/// The notifications a statement returned for its caller to publish (`publish.rs`): the
/// `notes` column of the one row that carries it.
pub(super) fn notes(rows: &[PgRow]) -> Result<Vec<String>, Fail> {
    for row in rows {
        if let Some(notes) = get::<Option<Vec<String>>>(row, "notes", "tasks")? {
            return Ok(notes);
        }
    }
    Ok(Vec::new())
}

pub(super) fn corrupt(table: &'static str, reason: impl Into<String>) -> Fail {
    Fail::Store(Error::Corrupt {
        table,
        reason: reason.into(),
    })
}

fn parse<T>(row: &PgRow, column: &str, table: &'static str) -> Result<T, Fail>
where
    T: std::str::FromStr<Err = hive_models::Error>,
{
    let text: String = get(row, column, table)?;
    text.parse()
        .map_err(|e: hive_models::Error| corrupt(table, e.to_string()))
}

fn unsigned<S>(row: &PgRow, column: &str, table: &'static str) -> Result<u32, Fail>
where
    S: for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + TryInto<u32>
        + Copy
        + std::fmt::Display,
{
    let n: S = get(row, column, table)?;
    n.try_into().map_err(|_| {
        corrupt(
            table,
            format!("column `{column}`: {n} is not a valid count"),
        )
    })
}

pub(super) fn task_status(row: &PgRow, column: &str) -> Result<TaskStatus, Fail> {
    parse(row, column, "tasks")
}

pub(super) fn plan_status(row: &PgRow, column: &str) -> Result<PlanStatus, Fail> {
    parse(row, column, "plans")
}

pub(super) fn run_status(row: &PgRow, column: &str) -> Result<RunStatus, Fail> {
    parse(row, column, "runs")
}

/// The `u32` counters stored as `integer`.
pub(super) fn count(row: &PgRow, column: &str, table: &'static str) -> Result<u32, Fail> {
    unsigned::<i32>(row, column, table)
}

/// The `u32` counters stored as `bigint`.
pub(super) fn big_count(row: &PgRow, column: &str, table: &'static str) -> Result<u32, Fail> {
    unsigned::<i64>(row, column, table)
}

pub(super) fn task(row: &PgRow) -> Result<Task, Fail> {
    const T: &str = "tasks";
    let dependencies: Vec<Uuid> = get(row, "dependencies", T)?;
    Ok(Task {
        id: TaskId(get(row, "id", T)?),
        title: get(row, "title", T)?,
        description: get(row, "description", T)?,
        task_type: get(row, "task_type", T)?,
        priority: get(row, "priority", T)?,
        status: task_status(row, "status")?,
        current_phase: get(row, "current_phase", T)?,
        workflow: get(row, "workflow", T)?,
        payload: get(row, "payload", T)?,
        assigned_worker: get::<Option<String>>(row, "assigned_worker", T)?.map(WorkerId),
        due_date: get(row, "due_date", T)?,
        max_retries: big_count(row, "max_retries", T)?,
        retry_policy: policy(row)?,
        parent_task_id: get::<Option<Uuid>>(row, "parent_task_id", T)?.map(TaskId),
        plan_id: get::<Option<Uuid>>(row, "plan_id", T)?.map(PlanId),
        plan_subtask_id: get(row, "plan_subtask_id", T)?,
        dependencies: dependencies.into_iter().map(TaskId).collect(),
        pending_dependencies: count(row, "pending_deps", T)?,
        tags: get(row, "tags", T)?,
        metadata: get(row, "metadata", T)?,
        run_at: get(row, "run_at", T)?,
        timeout_secs: get::<Option<i32>>(row, "timeout_secs", T)?.map(|t| t.max(1).unsigned_abs()),
        delay_secs: get::<i64>(row, "delay_secs", T)?.max(0).unsigned_abs(),
        attempts: count(row, "attempts", T)?,
        current_run_id: get::<Option<Uuid>>(row, "current_run_id", T)?.map(RunId),
        idempotency_key: get(row, "idempotency_key", T)?,
        concurrency_key: get(row, "concurrency_key", T)?,
        concurrency_limit: get::<Option<i32>>(row, "concurrency_limit", T)?
            .map(|n| n.max(1).unsigned_abs()),
        result: get(row, "result", T)?,
        last_error: get(row, "last_error", T)?,
        created_at: get(row, "created_at", T)?,
        updated_at: get(row, "updated_at", T)?,
    })
}

/// A task's own retry policy, stored as JSON.
pub(super) fn policy(row: &PgRow) -> Result<Option<hive_models::RetryPolicy>, Fail> {
    get::<Option<serde_json::Value>>(row, "retry_policy", "tasks")?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| corrupt("tasks", format!("retry_policy: {e}")))
}

pub(super) fn run(row: &PgRow) -> Result<Run, Fail> {
    const T: &str = "runs";
    Ok(Run {
        id: RunId(get(row, "id", T)?),
        task_id: TaskId(get(row, "task_id", T)?),
        worker_id: WorkerId(get(row, "worker_id", T)?),
        run_number: count(row, "run_number", T)?,
        status: run_status(row, "status")?,
        phase: get(row, "phase", T)?,
        started_at: get(row, "started_at", T)?,
        completed_at: get(row, "completed_at", T)?,
        lease_expires_at: get(row, "lease_expires_at", T)?,
        result_data: get(row, "result_data", T)?,
        error_message: get(row, "error_message", T)?,
        output_log: get(row, "output_log", T)?,
        transcript: get(row, "transcript", T)?,
        progress: match get::<Option<f64>>(row, "progress", T)? {
            Some(fraction) => Some(hive_models::Progress {
                fraction,
                message: get(row, "progress_message", T)?,
                at: get(row, "progress_at", T)?,
            }),
            None => None,
        },
        created_at: get(row, "created_at", T)?,
        updated_at: get(row, "updated_at", T)?,
    })
}

pub(super) fn worker(row: &PgRow) -> Result<Worker, Fail> {
    const T: &str = "workers";
    Ok(Worker {
        id: WorkerId(get(row, "id", T)?),
        role: get(row, "role", T)?,
        status: parse::<WorkerStatus>(row, "status", T)?,
        last_heartbeat: get(row, "last_heartbeat", T)?,
        capabilities: get(row, "capabilities", T)?,
        current_task_id: get::<Option<Uuid>>(row, "current_task_id", T)?.map(TaskId),
        registered_at: get(row, "registered_at", T)?,
        metadata: get(row, "metadata", T)?,
        status_reason: get(row, "status_reason", T)?,
    })
}

/// A plan row and its subtasks as one [`ExecutionPlan`].
pub(super) fn plan(row: &PgRow, subtasks: Vec<SubTask>) -> Result<ExecutionPlan, Fail> {
    Ok(ExecutionPlan::from_header(plan_header(row)?, subtasks))
}

/// A plan row without its subtasks.
pub(super) fn plan_header(row: &PgRow) -> Result<PlanHeader, Fail> {
    const T: &str = "plans";
    let c = plan_counters(row)?;
    Ok(PlanHeader {
        id: PlanId(get(row, "id", T)?),
        title: get(row, "title", T)?,
        description: get(row, "description", T)?,
        parent_task_id: get::<Option<Uuid>>(row, "parent_task_id", T)?.map(TaskId),
        status: c.status,
        total_subtasks: c.total,
        completed_subtasks: c.completed,
        failed_subtasks: c.failed,
        cancelled_subtasks: c.cancelled,
        materialized: get(row, "materialized", T)?,
        metadata: get(row, "metadata", T)?,
        idempotency_key: get(row, "idempotency_key", T)?,
        created_at: get(row, "created_at", T)?,
        updated_at: get(row, "updated_at", T)?,
    })
}

/// A plan row's status and counters.
pub(super) fn plan_counters(row: &PgRow) -> Result<PlanCounters, Fail> {
    const T: &str = "plans";
    Ok(PlanCounters {
        status: plan_status(row, "status")?,
        total: big_count(row, "total_subtasks", T)?,
        completed: big_count(row, "completed_subtasks", T)?,
        failed: big_count(row, "failed_subtasks", T)?,
        cancelled: big_count(row, "cancelled_subtasks", T)?,
    })
}
