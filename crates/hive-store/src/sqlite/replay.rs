//! The SQLite adapter of the rules: load the rows a batch can touch into a
//! [`Loaded`] view, replay the batch with [`Changes`], and write its [`Patches`] with one
//! statement per table, whatever the batch's size, all sent to the writer as one text.

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
         t.attempts, t.max_retries, t.retry_policy, t.snoozes"
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
            snoozes: c.u32("snoozes")?,
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
    // Their plans' rows come along, so a finish needs no second read for them (each read
    // is a hand-off to the writer's thread).
    let rows = sqlx::query(concat!(
        "SELECT r.id AS run_id, r.status AS run_status, ",
        state_columns!(),
        ", ",
        now_us!(),
        " AS now_us, p.status, p.total_subtasks, p.completed_subtasks, p.failed_subtasks, \
             p.cancelled_subtasks \
         FROM runs r JOIN tasks t ON t.id = r.task_id LEFT JOIN plans p ON p.id = t.plan_id \
         WHERE r.id IN (SELECT value FROM json_each(?1))"
    ))
    .bind(json_list(runs))
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let cols = Cols::new(row, "plans");
        if let Some(plan) = cols.parse_opt::<PlanId>("plan_id")? {
            view.plans.insert(plan, plan_counters(&cols)?);
        }
    }
    load_run_rows(view, &rows)
}

/// A plan's counters from the columns `status`, `total_subtasks`, `completed_subtasks`,
/// `failed_subtasks` and `cancelled_subtasks` of a row.
pub(super) fn plan_counters(cols: &Cols<'_>) -> R<PlanCounters> {
    Ok(PlanCounters {
        status: cols.parse("status")?,
        total: cols.u32("total_subtasks")?,
        completed: cols.u32("completed_subtasks")?,
        failed: cols.u32("failed_subtasks")?,
        cancelled: cols.u32("cancelled_subtasks")?,
    })
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

/// Loads the dependencies of a task a change requeues
/// ([`crate::StatusChange::loads_dependencies`]).
pub(super) async fn load_dependencies(
    c: &mut Conn,
    view: &mut Loaded,
    task: &hive_models::Task,
) -> R<()> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        state_columns!(),
        " FROM tasks t WHERE t.id IN (SELECT value FROM json_each(?1))"
    ))
    .bind(json_list(&task.dependencies))
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let (id, state) = state_from_row(row)?;
        view.add_task(id, state);
    }
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
        view.plans.insert(cols.parse("id")?, plan_counters(&cols)?);
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

/// A batch's patches: each table in one statement, all of them sent to the writer's thread
/// as one text, because on a loaded machine the hand-off to that thread and back costs more
/// than one of these statements. A part with nothing to write is an empty JSON list, which
/// writes nothing. Only the countdown returns rows.
///
/// The parameters are positional (`?`), bound in the order they appear across the text:
/// sqlx binds a numbered one (`?N`) by its number, but stops binding a statement at the
/// first slot below its highest number that the statement does not name, so a statement
/// naming only `?1` and `?6` would run with `?6` NULL.
const WRITE_PATCHES: &str = concat!(
    "UPDATE runs SET status = j.value ->> 'status', completed_at = ?, updated_at = ?, \
         lease_expires_at = NULL, \
         started_at = MIN(started_at + (j.value ->> 'waited_us'), ?), \
         result_data = CASE WHEN j.value ->> 'set_result' \
             THEN j.value ->> 'result' ELSE result_data END, \
         error_message = CASE WHEN j.value ->> 'set_error' \
             THEN j.value ->> 'error' ELSE error_message END, \
         output_log = CASE WHEN j.value ->> 'set_log' \
             THEN j.value ->> 'log' ELSE output_log END \
     FROM jsonb_each(?) AS j \
     WHERE runs.id = j.value ->> 'id' AND runs.status = 'running'; \
     UPDATE tasks SET status = j.value ->> 'status', updated_at = ?, \
         result = CASE WHEN j.value ->> 'set_result' THEN j.value ->> 'result' \
             ELSE result END, \
         last_error = CASE WHEN j.value ->> 'set_error' THEN j.value ->> 'error' \
             ELSE last_error END, \
         assigned_worker = CASE WHEN j.value ->> 'requeue' THEN NULL \
             ELSE assigned_worker END, \
         run_at = CASE WHEN j.value ->> 'requeue' THEN j.value ->> 'run_at_us' \
             ELSE run_at END, \
         attempts = MAX(attempts + (j.value ->> 'attempts_delta'), 0), \
         snoozes = MAX(snoozes + (j.value ->> 'snoozes_delta'), 0), \
         pending_deps = CASE WHEN j.value ->> 'recount' THEN ( \
             SELECT COUNT(*) FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
             WHERE d.task_id = tasks.id AND x.status <> 'completed') \
             ELSE pending_deps END, \
         metadata = CASE WHEN j.value ->> 'set_metadata' THEN j.value ->> 'metadata' \
             ELSE metadata END \
     FROM jsonb_each(?) AS j WHERE tasks.id = j.value ->> 'id'; ",
    super::tasks::count_dependents_down!(),
    "; ",
    super::tasks::count_dependents_up!(),
    "; UPDATE plans SET status = j.value ->> 'status', \
         completed_subtasks = j.value ->> 'completed', \
         failed_subtasks = j.value ->> 'failed', \
         cancelled_subtasks = j.value ->> 'cancelled', updated_at = ? \
     FROM jsonb_each(?) AS j WHERE plans.id = j.value ->> 'id'"
);

/// Writes a batch's patches ([`WRITE_PATCHES`]).
pub(super) async fn write(c: &mut Conn, n: &Notifier, p: Patches, at: i64) -> R<Vec<Notification>> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let json = |what: &str, r: Result<String, serde_json::Error>| {
        r.map_err(|e| db::corrupt("patches", format!("{what}: {e}")))
    };
    let freed = sqlx::query(WRITE_PATCHES)
        .bind(at)
        .bind(at)
        .bind(at)
        .bind(json("runs", rules::runs_json(&p.runs))?)
        .bind(at)
        .bind(json("tasks", rules::tasks_json(&p.tasks))?)
        .bind(json_list(&p.completed))
        .bind(json_list(&p.reopened))
        .bind(at)
        .bind(json("plans", rules::plans_json(&p.plans))?)
        .fetch_all(&mut *c)
        .await?;
    let mut notes = p.notes;
    for task in super::tasks::ready_dependents(&freed)? {
        notes.push(n.task_ready(task));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sqlx::Row;

    /// What [`super::WRITE_PATCHES`] and the claim's writes rely on: sqlx's SQLite driver
    /// runs every statement of a text and binds positional parameters across them in order
    /// (behaviour sqlx calls deprecated, launchbadge/sqlx#3108). If an upgrade drops it,
    /// this fails first; split the texts back into one query per statement.
    #[tokio::test]
    async fn sqlx_runs_every_statement_of_a_text_with_its_parameters_in_order() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (a INTEGER, b TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let rows = sqlx::query(
            "INSERT INTO t VALUES (?, ?); UPDATE t SET b = b || ? WHERE a = ?; \
             SELECT a, b FROM t",
        )
        .bind(1)
        .bind("x")
        .bind("y")
        .bind(1)
        .fetch_all(&pool)
        .await
        .unwrap();
        let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(got, [(1, "xy".to_string())]);
    }

    /// Numbered parameters would not do in these texts (see [`super::WRITE_PATCHES`]).
    #[test]
    fn the_multi_statement_texts_use_positional_parameters_only() {
        for text in [super::WRITE_PATCHES, super::super::runs::CLAIM_WRITES] {
            let numbered = text
                .as_bytes()
                .windows(2)
                .any(|w| w[0] == b'?' && w[1].is_ascii_digit());
            assert!(!numbered, "{text}");
        }
    }
}
