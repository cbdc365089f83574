//! The SQLite adapter of the rules: load the rows a batch can touch into a
//! [`Loaded`] view, replay the batch with [`Changes`], and write its [`Patches`] with one
//! statement per table, whatever the batch's size.

use std::collections::HashMap;

use hive_models::{PlanCounters, PlanId, RunId, RunStatus, TaskId};
use sqlx::sqlite::SqliteRow;

use super::db::{self, Cols, Conn, R, json_list};
use crate::rules::{self, Changes, Loaded, Patches, TaskState};
use crate::{Notification, Notifier};

/// The columns [`state_from_row`] reads, from `tasks t`.
macro_rules! state_columns {
    () => {
        "t.id AS task_id, t.status AS task_status, t.seq, t.current_run_id, t.plan_id, \
         t.attempts, t.max_retries, t.retry_policy, t.run_count"
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
            retry_policy: c.json_opt("retry_policy")?,
            runs: c.u32("run_count")?,
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
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let json = |what: &str, r: Result<String, serde_json::Error>| {
        r.map_err(|e| db::corrupt("patches", format!("{what}: {e}")))
    };
    if !p.runs.is_empty() {
        sqlx::query(
            "UPDATE runs SET status = j.value ->> 'status', completed_at = ?1, updated_at = ?1, \
                 lease_expires_at = NULL, \
                 result_data = CASE WHEN j.value ->> 'set_result' \
                     THEN j.value ->> 'result' ELSE result_data END, \
                 error_message = CASE WHEN j.value ->> 'set_error' \
                     THEN j.value ->> 'error' ELSE error_message END, \
                 output_log = CASE WHEN j.value ->> 'set_log' \
                     THEN j.value ->> 'log' ELSE output_log END \
             FROM json_each(?2) AS j \
             WHERE runs.id = j.value ->> 'id' AND runs.status = 'running'",
        )
        .bind(at)
        .bind(json("runs", rules::runs_json(&p.runs))?)
        .execute(&mut *c)
        .await?;
    }
    if !p.tasks.is_empty() {
        sqlx::query(
            "UPDATE tasks SET status = j.value ->> 'status', updated_at = ?1, \
                 result = CASE WHEN j.value ->> 'set_result' THEN j.value ->> 'result' \
                     ELSE result END, \
                 last_error = CASE WHEN j.value ->> 'set_error' THEN j.value ->> 'error' \
                     ELSE last_error END, \
                 assigned_worker = CASE WHEN j.value ->> 'requeue' THEN NULL \
                     ELSE assigned_worker END, \
                 run_at = CASE WHEN j.value ->> 'requeue' THEN j.value ->> 'run_at_us' \
                     ELSE run_at END, \
                 attempts = MAX(attempts + (j.value ->> 'attempts_delta'), 0), \
                 pending_deps = CASE WHEN j.value ->> 'recount' THEN ( \
                     SELECT COUNT(*) FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
                     WHERE d.task_id = tasks.id AND x.status <> 'completed') \
                     ELSE pending_deps END, \
                 metadata = CASE WHEN j.value ->> 'set_metadata' THEN j.value ->> 'metadata' \
                     ELSE metadata END \
             FROM json_each(?2) AS j WHERE tasks.id = j.value ->> 'id'",
        )
        .bind(at)
        .bind(json("tasks", rules::tasks_json(&p.tasks))?)
        .execute(&mut *c)
        .await?;
    }
    let mut notes = p.notes;
    for task in super::tasks::decrement_dependents(c, &p.completed).await? {
        notes.push(n.task_ready(task));
    }
    super::tasks::increment_dependents(c, &p.reopened).await?;
    if !p.plans.is_empty() {
        sqlx::query(
            "UPDATE plans SET status = j.value ->> 'status', \
                 completed_subtasks = j.value ->> 'completed', \
                 failed_subtasks = j.value ->> 'failed', \
                 cancelled_subtasks = j.value ->> 'cancelled', updated_at = ?1 \
             FROM json_each(?2) AS j WHERE plans.id = j.value ->> 'id'",
        )
        .bind(at)
        .bind(json("plans", rules::plans_json(&p.plans))?)
        .execute(&mut *c)
        .await?;
    }
    Ok(notes)
}
