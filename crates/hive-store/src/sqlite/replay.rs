//! The SQLite adapter of the rules: load the rows a batch can touch into a
//! [`Loaded`] view, replay the batch with [`Changes`], and write its [`Patches`] with one
//! statement per table, whatever the batch's size.

use std::collections::HashMap;

use hive_models::{PlanCounters, PlanId, RunId, RunStatus, TaskId};
use serde_json::json;
use sqlx::sqlite::SqliteRow;

use super::db::{self, Cols, Conn, R, json_list, to_json};
use crate::rules::{Changes, Loaded, Patches, TaskState};
use crate::{Notification, Notifier};

/// The columns [`state_from_row`] reads, from `tasks t`.
macro_rules! state_columns {
    () => {
        "t.id AS task_id, t.status AS task_status, t.seq, t.current_run_id, t.plan_id, \
         t.attempts, t.max_retries"
    };
}
pub(super) use state_columns;

/// A task's [`TaskState`] from the [`state_columns`] of a row; whether its run runs is
/// assumed (see [`TaskState::run_running`]) until a read of the run says.
pub(super) fn state_from_row(row: &SqliteRow) -> R<(TaskId, TaskState)> {
    let c = Cols::new(row, "tasks");
    let current_run: Option<RunId> = c.parse_opt("current_run_id")?;
    Ok((
        c.parse("task_id")?,
        TaskState {
            status: c.parse("task_status")?,
            seq: c.get("seq")?,
            plan_id: c.parse_opt("plan_id")?,
            attempts: c.u32("attempts")?,
            max_retries: c.u32("max_retries")?,
            current_run,
            run_running: current_run.is_some(),
        },
    ))
}

/// The named runs' tasks into `view`, with each run's liveness exact; returns each known
/// run's task and the database clock (`None` when no run is known: nothing to write).
pub(super) async fn load_runs(
    c: &mut Conn,
    view: &mut Loaded,
    runs: &[RunId],
) -> R<(Option<i64>, HashMap<RunId, TaskId>)> {
    let rows = sqlx::query(concat!(
        "SELECT r.id AS run_id, r.status AS run_status, ",
        state_columns!(),
        ", ",
        now_us!(),
        " AS now_us FROM runs r JOIN tasks t ON t.id = r.task_id \
         WHERE r.id IN (SELECT value FROM json_each(?1))"
    ))
    .bind(json_list(runs))
    .fetch_all(&mut *c)
    .await?;
    load_run_rows(view, &rows)
}

/// [`load_runs`] for rows the caller selected (the reaper's expired runs).
pub(super) fn load_run_rows(
    view: &mut Loaded,
    rows: &[SqliteRow],
) -> R<(Option<i64>, HashMap<RunId, TaskId>)> {
    let mut at = None;
    let mut run_task = HashMap::with_capacity(rows.len());
    for row in rows {
        let cols = Cols::new(row, "runs");
        at = Some(cols.get::<i64>("now_us")?);
        let (task, state) = state_from_row(row)?;
        let run: RunId = cols.parse("run_id")?;
        let status: RunStatus = cols.parse("run_status")?;
        view.add_task(task, state);
        view.set_running(task, run, status == RunStatus::Running);
        run_task.insert(run, task);
    }
    Ok((at, run_task))
}

/// Loads the unfinished transitive dependents of `roots` — what their failures may cancel —
/// into `view`, walking one recursive query (never through a finished task).
pub(super) async fn load_cascade(c: &mut Conn, view: &mut Loaded, roots: &[TaskId]) -> R<()> {
    if roots.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(concat!(
        "WITH RECURSIVE walk(parent, child) AS ( \
             SELECT d.depends_on, d.task_id FROM task_dependencies d \
             WHERE d.depends_on IN (SELECT value FROM json_each(?1)) \
             UNION \
             SELECT d.depends_on, d.task_id FROM walk w \
             JOIN tasks x ON x.id = w.child \
                 AND x.status NOT IN ('completed', 'failed', 'cancelled') \
             JOIN task_dependencies d ON d.depends_on = w.child) \
         SELECT w.parent, ",
        state_columns!(),
        " FROM walk w JOIN tasks t ON t.id = w.child"
    ))
    .bind(json_list(roots))
    .fetch_all(&mut *c)
    .await?;
    let mut edges = Vec::with_capacity(rows.len());
    for row in &rows {
        let (child, state) = state_from_row(row)?;
        view.add_task(child, state);
        edges.push((Cols::new(row, "tasks").parse("parent")?, child));
    }
    view.add_edges(edges);
    Ok(())
}

/// Loads the plans of every task in `view` (those the batch may count against).
pub(super) async fn load_plans(c: &mut Conn, view: &mut Loaded) -> R<()> {
    let ids: Vec<PlanId> = view
        .plan_ids()
        .into_iter()
        .filter(|p| !view.plans.contains_key(p))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT id, status, total_subtasks, completed_subtasks, failed_subtasks, \
                cancelled_subtasks FROM plans WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(&ids))
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let cols = Cols::new(row, "plans");
        view.plans.insert(
            cols.parse("id")?,
            PlanCounters {
                status: cols.parse("status")?,
                total: cols.u32("total_subtasks")?,
                completed: cols.u32("completed_subtasks")?,
                failed: cols.u32("failed_subtasks")?,
                cancelled: cols.u32("cancelled_subtasks")?,
            },
        );
    }
    Ok(())
}

/// Replays `f` on `view` and writes the result; returns `f`'s value and the notifications
/// to send after commit (the dependents freed announced `TaskReady`).
pub(super) async fn replay<T>(
    c: &mut Conn,
    n: &Notifier,
    view: &Loaded,
    at: i64,
    f: impl FnOnce(&mut Changes<'_, Loaded>) -> T,
) -> R<(T, Vec<Notification>)> {
    let mut ch = Changes::new(view, n, db::ts("tasks", at)?);
    let out = f(&mut ch);
    let patches = ch.into_patches();
    let notes = write(c, n, patches, at).await?;
    Ok((out, notes))
}

/// Writes a batch's patches, each table in one statement.
pub(super) async fn write(c: &mut Conn, n: &Notifier, p: Patches, at: i64) -> R<Vec<Notification>> {
    let Patches {
        runs,
        tasks,
        completed,
        plans,
        mut notes,
    } = p;
    if !runs.is_empty() {
        let rows = runs
            .iter()
            .map(|r| {
                let result = match &r.result {
                    Some(Some(v)) => Some(to_json("result", v)?),
                    _ => None,
                };
                Ok(json!([
                    r.id.to_string(),
                    r.status.as_str(),
                    r.result.is_some(),
                    result,
                    r.error.is_some(),
                    r.error.clone().flatten(),
                    r.log.is_some(),
                    r.log.clone().flatten()
                ]))
            })
            .collect::<R<Vec<_>>>()?;
        sqlx::query(
            "UPDATE runs SET status = j.value ->> 1, completed_at = ?1, lease_expires_at = NULL, \
                 result_data = CASE WHEN j.value ->> 2 THEN j.value ->> 3 ELSE result_data END, \
                 error_message = CASE WHEN j.value ->> 4 THEN j.value ->> 5 ELSE error_message END, \
                 output_log = CASE WHEN j.value ->> 6 THEN j.value ->> 7 ELSE output_log END \
             FROM json_each(?2) AS j WHERE runs.id = j.value ->> 0 AND runs.status = 'running'",
        )
        .bind(at)
        .bind(to_json("runs", &rows)?)
        .execute(&mut *c)
        .await?;
    }
    if !tasks.is_empty() {
        let rows = tasks
            .iter()
            .map(|t| {
                let result = match &t.result {
                    Some(Some(v)) => Some(to_json("result", v)?),
                    _ => None,
                };
                let metadata = t
                    .metadata
                    .as_ref()
                    .map(|m| to_json("metadata", m))
                    .transpose()?;
                Ok(json!([
                    t.id.to_string(),
                    t.status.as_str(),
                    t.result.is_some(),
                    result,
                    t.error.is_some(),
                    t.error,
                    t.requeue.is_some(),
                    t.requeue.flatten().map(db::us),
                    t.attempts_delta,
                    t.recount_pending,
                    metadata.is_some(),
                    metadata
                ]))
            })
            .collect::<R<Vec<_>>>()?;
        sqlx::query(
            "UPDATE tasks SET status = j.value ->> 1, updated_at = ?1, \
                 result = CASE WHEN j.value ->> 2 THEN j.value ->> 3 ELSE result END, \
                 last_error = CASE WHEN j.value ->> 4 THEN j.value ->> 5 ELSE last_error END, \
                 assigned_worker = CASE WHEN j.value ->> 6 THEN NULL ELSE assigned_worker END, \
                 run_at = CASE WHEN j.value ->> 6 THEN j.value ->> 7 ELSE run_at END, \
                 attempts = MAX(attempts + (j.value ->> 8), 0), \
                 pending_deps = CASE WHEN j.value ->> 9 THEN ( \
                     SELECT COUNT(*) FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
                     WHERE d.task_id = tasks.id AND x.status <> 'completed') \
                     ELSE pending_deps END, \
                 metadata = CASE WHEN j.value ->> 10 THEN j.value ->> 11 ELSE metadata END \
             FROM json_each(?2) AS j WHERE tasks.id = j.value ->> 0",
        )
        .bind(at)
        .bind(to_json("tasks", &rows)?)
        .execute(&mut *c)
        .await?;
    }
    for task in super::tasks::decrement_dependents(c, &completed).await? {
        notes.push(n.task_ready(task));
    }
    if !plans.is_empty() {
        let rows: Vec<serde_json::Value> = plans
            .iter()
            .map(|(id, p)| {
                json!([
                    id.to_string(),
                    p.status.as_str(),
                    p.completed,
                    p.failed,
                    p.cancelled
                ])
            })
            .collect();
        sqlx::query(
            "UPDATE plans SET status = j.value ->> 1, completed_subtasks = j.value ->> 2, \
                 failed_subtasks = j.value ->> 3, cancelled_subtasks = j.value ->> 4, \
                 updated_at = ?1 \
             FROM json_each(?2) AS j WHERE plans.id = j.value ->> 0",
        )
        .bind(at)
        .bind(to_json("plans", &rows)?)
        .execute(&mut *c)
        .await?;
    }
    Ok(notes)
}
