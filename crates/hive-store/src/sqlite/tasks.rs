//! Tasks: inserts, reads, status changes (by the rules), deletes, pruning, and the
//! dependents' countdown a completion writes.

use std::collections::HashMap;

use hive_models::{NewTask, PlanId, PlanStatus, TaskId, TaskStatus};
use sqlx::{QueryBuilder, Sqlite};

use super::db::{self, Cols, Conn, R, json_list, to_json, us};
use super::replay::{self, state_columns};
use crate::rules::Loaded;
use crate::{
    Error, Notification, Notifier, PruneParams, StatusChange, StatusChanged, StatusCounts,
    TaskFilter, TasksInserted,
};

/// SQLite refuses statements with more than 32766 bound parameters.
const MAX_BINDS: usize = 32766;
/// Bound parameters per row of [`insert_rows`].
const TASK_BINDS: usize = 25;
const TASK_ROWS_PER_INSERT: usize = MAX_BINDS / TASK_BINDS;
const DEP_ROWS_PER_INSERT: usize = MAX_BINDS / 3;

/// Links a task created from a plan's subtask to its plan.
pub(super) struct PlanLink {
    pub plan_id: PlanId,
    pub subtask_id: String,
    pub pending: u32,
}

/// A task to insert with its id chosen.
pub(super) struct TaskRow {
    pub id: TaskId,
    pub new: NewTask,
    pub plan: Option<PlanLink>,
}

/// A row's JSON columns, serialised before building the statement so a failure is an
/// error rather than a panic inside the builder.
struct Encoded {
    workflow: Option<String>,
    payload: String,
    tags: String,
    metadata: String,
    retry_policy: Option<String>,
}

/// Multi-row inserts, chunked under the bind limit. Rows whose idempotency key exists are
/// skipped; the caller resolves their ids.
pub(super) async fn insert_rows(c: &mut Conn, rows: &[TaskRow], at: i64) -> R<()> {
    let now = db::ts("tasks", at)?;
    for chunk in rows.chunks(TASK_ROWS_PER_INSERT) {
        let encoded = chunk
            .iter()
            .map(|r| {
                Ok(Encoded {
                    workflow: r
                        .new
                        .workflow
                        .as_ref()
                        .map(|w| to_json("workflow", w))
                        .transpose()?,
                    payload: to_json("payload", &r.new.payload)?,
                    tags: to_json("tags", &r.new.tags)?,
                    metadata: to_json("metadata", &r.new.metadata)?,
                    retry_policy: r
                        .new
                        .retry_policy
                        .as_ref()
                        .map(|p| to_json("retry_policy", p))
                        .transpose()?,
                })
            })
            .collect::<R<Vec<_>>>()?;
        let mut b = QueryBuilder::<Sqlite>::new(
            "INSERT INTO tasks (id, title, description, task_type, priority, current_phase, \
             workflow, payload, due_date, max_retries, parent_task_id, tags, metadata, run_at, \
             idempotency_key, timeout_secs, delay_secs, plan_id, plan_subtask_id, pending_deps, \
             retry_policy, concurrency_key, concurrency_limit, created_at, updated_at) ",
        );
        b.push_values(chunk.iter().zip(encoded), |mut s, (r, e)| {
            let n = &r.new;
            let waits = r.plan.as_ref().is_some_and(|l| l.pending > 0);
            let run_at = n.claimable_from(now, waits);
            s.push_bind(r.id.to_string())
                .push_bind(n.title.clone())
                .push_bind(n.description.clone())
                .push_bind(n.task_type.clone())
                .push_bind(i64::from(n.priority))
                .push_bind(n.current_phase.clone())
                .push_bind(e.workflow)
                .push_bind(e.payload)
                .push_bind(n.due_date.map(us))
                .push_bind(i64::from(n.retries()))
                .push_bind(n.parent_task_id.map(|p| p.to_string()))
                .push_bind(e.tags)
                .push_bind(e.metadata)
                .push_bind(run_at.map(us))
                .push_bind(n.idempotency_key.clone())
                .push_bind(n.timeout_secs.map(i64::from))
                .push_bind(i64::try_from(n.delay_secs).unwrap_or(i64::MAX));
            match &r.plan {
                Some(l) => s
                    .push_bind(l.plan_id.to_string())
                    .push_bind(l.subtask_id.clone())
                    .push_bind(i64::from(l.pending)),
                None => s
                    .push_bind(None::<String>)
                    .push_bind(None::<String>)
                    .push_bind(0_i64),
            };
            let limit = n
                .concurrency_key
                .as_ref()
                .map(|_| n.concurrency_limit.unwrap_or(1));
            s.push_bind(e.retry_policy)
                .push_bind(n.concurrency_key.clone())
                .push_bind(limit.map(i64::from))
                .push_bind(at)
                .push_bind(at);
        });
        b.push(" ON CONFLICT (idempotency_key) DO NOTHING");
        b.build().execute(&mut *c).await?;
    }
    Ok(())
}

/// Dependency rows `(task, depends_on, position)`, chunked under the bind limit.
pub(super) async fn insert_dependencies(c: &mut Conn, deps: &[(TaskId, TaskId, i64)]) -> R<()> {
    for chunk in deps.chunks(DEP_ROWS_PER_INSERT) {
        let mut b = QueryBuilder::<Sqlite>::new(
            "INSERT INTO task_dependencies (task_id, depends_on, position) ",
        );
        b.push_values(chunk, |mut s, (task, dep, pos)| {
            s.push_bind(task.to_string())
                .push_bind(dep.to_string())
                .push_bind(*pos);
        });
        b.build().execute(&mut *c).await?;
    }
    Ok(())
}

pub(super) async fn insert(c: &mut Conn, new: Vec<NewTask>) -> R<TasksInserted> {
    let at = db::db_now(c).await?;
    let mut ids = Vec::with_capacity(new.len());
    let mut rows = Vec::with_capacity(new.len());
    // A key repeated inside the batch maps to the id of its first occurrence.
    let mut by_key: HashMap<String, TaskId> = HashMap::new();
    for n in new {
        let id = match &n.idempotency_key {
            Some(k) => match by_key.get(k) {
                Some(first) => {
                    ids.push(*first);
                    continue;
                }
                None => {
                    let id = TaskId::new();
                    by_key.insert(k.clone(), id);
                    id
                }
            },
            None => TaskId::new(),
        };
        ids.push(id);
        rows.push(TaskRow {
            id,
            new: n,
            plan: None,
        });
    }
    insert_rows(c, &rows, at).await?;
    let rows = rows.len() as u64;
    if by_key.is_empty() {
        return Ok(TasksInserted {
            ids,
            new_tasks: rows,
        });
    }
    // Keys that already existed were skipped by ON CONFLICT: their tasks keep their ids.
    let stored = sqlx::query(
        "SELECT idempotency_key, id FROM tasks \
         WHERE idempotency_key IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(by_key.keys()))
    .fetch_all(&mut *c)
    .await?;
    let mut replace: HashMap<TaskId, TaskId> = HashMap::new();
    for row in &stored {
        let cols = Cols::new(row, "tasks");
        let key: String = cols.get("idempotency_key")?;
        let existing: TaskId = cols.parse("id")?;
        if let Some(mine) = by_key.get(&key)
            && *mine != existing
        {
            replace.insert(*mine, existing);
        }
    }
    for id in &mut ids {
        if let Some(existing) = replace.get(id) {
            *id = *existing;
        }
    }
    Ok(TasksInserted {
        ids,
        new_tasks: rows - replace.len() as u64,
    })
}

pub(super) async fn list(c: &mut Conn, f: &TaskFilter) -> R<Vec<hive_models::Task>> {
    let mut b = QueryBuilder::<Sqlite>::new(concat!("SELECT ", task_columns!(), " FROM tasks t"));
    if f.ready_only && f.plan_id.is_none() {
        // As for claims: walk the ready index in queue order instead of sorting.
        b.push(" INDEXED BY tasks_ready");
    }
    b.push(" WHERE 1 = 1");
    if let Some(st) = f.status {
        b.push(" AND t.status = ").push_bind(st.as_str());
    }
    if let Some(ty) = &f.task_type {
        b.push(" AND t.task_type = ").push_bind(ty.clone());
    }
    if let Some(p) = f.plan_id {
        b.push(" AND t.plan_id = ").push_bind(p.to_string());
    }
    if f.ready_only {
        b.push(concat!(
            " AND t.status = 'queued' AND t.pending_deps = 0 AND (t.run_at IS NULL OR t.run_at <= ",
            now_us!(),
            ")"
        ));
    }
    if let Some(at) = f.updated_not_after {
        b.push(" AND t.updated_at <= ").push_bind(us(at));
    }
    if let Some(d) = f.depending_on {
        b.push(" AND t.id IN (SELECT td.task_id FROM task_dependencies td WHERE td.depends_on = ")
            .push_bind(d.to_string())
            .push(")");
    }
    b.push(" ORDER BY t.priority DESC, t.seq");
    if let Some(l) = f.limit {
        b.push(" LIMIT ").push_bind(i64::from(l));
    }
    let rows = b.build().fetch_all(&mut *c).await?;
    rows.iter().map(db::task_from_row).collect()
}

pub(super) async fn count(c: &mut Conn, plan_id: Option<PlanId>) -> R<StatusCounts> {
    let rows = match plan_id {
        Some(p) => {
            sqlx::query(
                "SELECT status, COUNT(*) AS n FROM tasks WHERE plan_id = ?1 GROUP BY status",
            )
            .bind(p.to_string())
            .fetch_all(&mut *c)
            .await?
        }
        None => {
            sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
                .fetch_all(&mut *c)
                .await?
        }
    };
    let mut counts = StatusCounts::new();
    for row in &rows {
        let cols = Cols::new(row, "tasks");
        let n: i64 = cols.get("n")?;
        counts.insert(cols.parse("status")?, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

pub(super) async fn set_status(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    id: TaskId,
    change: StatusChange,
) -> R<Option<StatusChanged>> {
    let Some(task) = db::fetch_task(c, id).await? else {
        return Ok(None);
    };
    let at = db::db_now(c).await?;
    let mut view = Loaded::default();
    let row = sqlx::query(concat!(
        "SELECT ",
        state_columns!(),
        " FROM tasks t WHERE t.id = ?1"
    ))
    .bind(id.to_string())
    .fetch_one(&mut *c)
    .await?;
    let (_, state) = replay::state_from_row(&row)?;
    view.add_task(id, state);
    if change.status.is_terminal() && change.status != TaskStatus::Completed {
        replay::load_cascade(c, &mut view, &[id]).await?;
    }
    if change.loads_dependencies(&task) {
        replay::load_dependencies(c, &mut view, &task).await?;
    }
    replay::load_plans(c, &mut view).await?;
    let (outcome, batch_notes) =
        replay::replay(c, n, &view, at, |ch| ch.change_status(&task, &change)).await?;
    let outcome = outcome?;
    notes.extend(batch_notes);
    let task = db::fetch_task(c, id)
        .await?
        .ok_or_else(|| Error::not_found("task", id))?;
    Ok(Some(StatusChanged {
        previous: outcome.previous,
        task,
        cancelled_dependents: outcome.effects.cancelled,
        plan_transition: outcome.effects.plan_transition,
    }))
}

pub(super) async fn delete(c: &mut Conn, id: TaskId) -> R<bool> {
    let Some(task) = db::fetch_task(c, id).await? else {
        return Ok(false);
    };
    let row = sqlx::query(
        "SELECT (SELECT p.status FROM plans p WHERE p.id = ?2) AS plan_status, \
                COUNT(*) FILTER (WHERE x.status NOT IN ('completed', 'failed', 'cancelled')) \
                    AS open_dependents, \
                COUNT(*) FILTER (WHERE x.status <> 'completed') AS not_completed \
         FROM task_dependencies d JOIN tasks x ON x.id = d.task_id WHERE d.depends_on = ?1",
    )
    .bind(id.to_string())
    .bind(task.plan_id.map(|p| p.to_string()))
    .fetch_one(&mut *c)
    .await?;
    let cols = Cols::new(&row, "tasks");
    let plan_status: Option<PlanStatus> = cols.parse_opt("plan_status")?;
    let count = |col| -> R<usize> {
        let n: i64 = cols.get(col)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    };
    let dependents = hive_models::DependentsLeft {
        unfinished: count("open_dependents")?,
        not_completed: count("not_completed")?,
    };
    task.check_deletable(plan_status, dependents)?;
    // A completed dependency was already counted off its dependents.
    if task.status != TaskStatus::Completed {
        decrement_dependents(c, &[id]).await?;
    }
    // Runs and dependency rows go with the task (ON DELETE CASCADE).
    sqlx::query("DELETE FROM tasks WHERE id = ?1")
        .bind(id.to_string())
        .execute(&mut *c)
        .await?;
    Ok(true)
}

/// Deletes finished tasks outside plans (see [`crate::Store::prune_tasks`]). No dependency
/// rule to apply: only plan subtasks have dependents, and they are pruned with their plan.
pub(super) async fn prune(c: &mut Conn, p: &PruneParams) -> R<u64> {
    let at = db::db_now(c).await?;
    let cutoff = db::sub_us(at, p.older_than);
    let statuses = json_list(p.statuses.iter().map(|s| s.as_str()));
    let deleted = sqlx::query(concat!(
        "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
         WHERE status IN (SELECT value FROM json_each(?1)) AND updated_at < ?2 \
           AND plan_id IS NULL \
         ORDER BY updated_at, id",
        limit!("?3"),
        ")"
    ))
    .bind(statuses)
    .bind(cutoff)
    .bind(i64::from(p.limit))
    .execute(&mut *c)
    .await?;
    Ok(deleted.rows_affected())
}

pub(super) async fn subtask_ids(c: &mut Conn, ids: &[TaskId]) -> R<HashMap<TaskId, String>> {
    per_task(
        c,
        "SELECT id, plan_subtask_id AS v FROM tasks \
         WHERE id IN (SELECT value FROM json_each(?1)) AND plan_subtask_id IS NOT NULL",
        ids,
        |cols| cols.get("v"),
    )
    .await
}

pub(super) async fn dependencies_met(c: &mut Conn, ids: &[TaskId]) -> R<HashMap<TaskId, bool>> {
    per_task(
        c,
        "SELECT t.id, NOT EXISTS (\
             SELECT 1 FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
             WHERE d.task_id = t.id AND x.status <> 'completed') AS v \
         FROM tasks t WHERE t.id IN (SELECT value FROM json_each(?1))",
        ids,
        |cols| Ok(cols.get::<i64>("v")? != 0),
    )
    .await
}

/// `sql`'s rows for the tasks in the JSON list bound to its one parameter, as task `id` →
/// `value` of the row.
async fn per_task<T>(
    c: &mut Conn,
    sql: &'static str,
    ids: &[TaskId],
    value: fn(&Cols<'_>) -> R<T>,
) -> R<HashMap<TaskId, T>> {
    let rows = sqlx::query(sql)
        .bind(json_list(ids))
        .fetch_all(&mut *c)
        .await?;
    rows.iter()
        .map(|row| {
            let cols = Cols::new(row, "tasks");
            Ok((cols.parse("id")?, value(&cols)?))
        })
        .collect()
}

/// How many of the tasks in the JSON list bound to its one parameter each dependent waits
/// for, as `per_dep (id, n)`; the `depends_on` index finds the dependents, so the cost
/// follows their number, and the counts are gathered once, not per dependent row.
macro_rules! per_dependent {
    () => {
        "WITH per_dep AS ( \
             SELECT d.task_id AS id, COUNT(*) AS n FROM task_dependencies d \
             WHERE d.depends_on IN (SELECT value FROM json_each(?)) GROUP BY d.task_id) "
    };
}
pub(super) use per_dependent;

/// Each dependent of the listed tasks ([`per_dependent`]) waits for one dependency fewer per
/// task listed; returns the dependents' ids and whether each is ready now (queued, waiting
/// for none, no delay). One waiting for none already is left as it is (the memory store's
/// rule); a dependent left waiting for nothing starts its delay now.
macro_rules! count_dependents_down {
    () => {
        concat!(
            $crate::sqlite::tasks::per_dependent!(),
            "UPDATE tasks SET pending_deps = MAX(pending_deps - per_dep.n, 0), \
                 updated_at = CASE WHEN status = 'queued' THEN ",
            now_us!(),
            " ELSE updated_at END, run_at = CASE WHEN delay_secs > 0 AND pending_deps <= per_dep.n THEN ",
            now_us!(),
            " + MIN(delay_secs, 31622400) * 1000000 ELSE run_at END \
             FROM per_dep WHERE tasks.id = per_dep.id AND pending_deps > 0 \
             RETURNING id, pending_deps = 0 AND status = 'queued' AND delay_secs = 0 AS ready"
        )
    };
}
pub(super) use count_dependents_down;

/// Each queued dependent of the listed tasks ([`per_dependent`]: completed tasks back in
/// the queue) waits for one dependency more per task listed.
macro_rules! count_dependents_up {
    () => {
        concat!(
            $crate::sqlite::tasks::per_dependent!(),
            "UPDATE tasks SET pending_deps = pending_deps + per_dep.n \
             FROM per_dep WHERE tasks.id = per_dep.id AND status = 'queued'"
        )
    };
}
pub(super) use count_dependents_up;

/// The dependents [`count_dependents_down`] returned that are ready now.
pub(super) fn ready_dependents(rows: &[sqlx::sqlite::SqliteRow]) -> R<Vec<TaskId>> {
    let mut ready = Vec::new();
    for row in rows {
        let cols = Cols::new(row, "tasks");
        if cols.get::<i64>("ready")? != 0 {
            ready.push(cols.parse("id")?);
        }
    }
    Ok(ready)
}

/// [`count_dependents_down`] for `done`; returns the dependents it made ready.
pub(super) async fn decrement_dependents(c: &mut Conn, done: &[TaskId]) -> R<Vec<TaskId>> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(count_dependents_down!())
        .bind(json_list(done))
        .fetch_all(&mut *c)
        .await?;
    ready_dependents(&rows)
}
