//! Plans: storing, listing, materializing into tasks, compare-and-set, cancelling and
//! retrying, and pruning.

use std::collections::HashMap;

use hive_models::{
    ExecutionPlan, NewPlan, PlanCounters, PlanHeader, PlanId, PlanStatus, SubTask, TaskId,
};
use sqlx::sqlite::SqliteRow;

use super::db::{self, Cols, Conn, R, json_list, to_json};
use super::replay::{self, state_columns};
use super::tasks::{self, PlanLink, TaskRow};
use crate::rules::Loaded;
use crate::{Notification, Notifier};

pub(super) async fn insert(c: &mut Conn, plan: &NewPlan) -> R<PlanId> {
    Ok(match keyed(c, plan).await? {
        Some(first) => first,
        None => insert_new(c, plan).await?,
    })
}

/// The plan already submitted with `plan`'s idempotency key. Writers take turns on SQLite,
/// so nothing can insert the key between this read and the insert that follows it.
async fn keyed(c: &mut Conn, plan: &NewPlan) -> R<Option<PlanId>> {
    let Some(key) = &plan.idempotency_key else {
        return Ok(None);
    };
    let row = sqlx::query("SELECT id FROM plans WHERE idempotency_key = ?1")
        .bind(key)
        .fetch_optional(&mut *c)
        .await?;
    row.map(|r| Cols::new(&r, "plans").parse("id")).transpose()
}

async fn insert_new(c: &mut Conn, plan: &NewPlan) -> R<PlanId> {
    let at = db::db_now(c).await?;
    let id = PlanId::new();
    let total = i64::try_from(plan.subtasks.len()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO plans (id, title, description, parent_task_id, status, total_subtasks, \
                            completed_subtasks, failed_subtasks, materialized, metadata, \
                            idempotency_key, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, 0, 0, 0, ?7, ?8, ?6, ?6)",
    )
    .bind(id.to_string())
    .bind(&plan.title)
    .bind(&plan.description)
    .bind(plan.parent_task_id.map(|t| t.to_string()))
    .bind(total)
    .bind(at)
    .bind(to_json("metadata", &plan.metadata)?)
    .bind(&plan.idempotency_key)
    .execute(&mut *c)
    .await?;
    insert_specs(c, id, &plan.subtasks, 0).await?;
    Ok(id)
}

/// Stores subtask definitions, numbered from `first` in the plan's order.
pub(super) async fn insert_specs(
    c: &mut Conn,
    plan: PlanId,
    subtasks: &[SubTask],
    first: i64,
) -> R<()> {
    sqlx::query(
        "INSERT INTO plan_subtasks (plan_id, subtask_id, position, spec) \
         SELECT ?1, j.value ->> 'id', ?3 + j.key, j.value FROM json_each(?2) AS j",
    )
    .bind(plan.to_string())
    .bind(to_json("subtasks", subtasks)?)
    .bind(first)
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// The subtasks of each plan in `ids`, in the plans' order.
pub(super) async fn specs(c: &mut Conn, ids: &[PlanId]) -> R<HashMap<PlanId, Vec<SubTask>>> {
    let rows = sqlx::query(
        "SELECT plan_id, spec FROM plan_subtasks \
         WHERE plan_id IN (SELECT value FROM json_each(?1)) ORDER BY plan_id, position",
    )
    .bind(json_list(ids))
    .fetch_all(&mut *c)
    .await?;
    let mut out: HashMap<PlanId, Vec<SubTask>> = HashMap::with_capacity(ids.len());
    for row in &rows {
        let cols = Cols::new(row, "plan_subtasks");
        out.entry(cols.parse("plan_id")?)
            .or_default()
            .push(cols.json("spec")?);
    }
    Ok(out)
}

/// Plan rows with their subtasks.
async fn assemble(c: &mut Conn, rows: &[SqliteRow]) -> R<Vec<ExecutionPlan>> {
    let ids = rows
        .iter()
        .map(|r| Cols::new(r, "plans").parse::<PlanId>("id"))
        .collect::<R<Vec<_>>>()?;
    let mut specs = specs(c, &ids).await?;
    rows.iter()
        .zip(&ids)
        .map(|(row, id)| db::plan_from_row(row, specs.remove(id).unwrap_or_default()))
        .collect()
}

pub(super) async fn get(c: &mut Conn, id: PlanId) -> R<Option<ExecutionPlan>> {
    let sql = concat!("SELECT ", plan_columns!(), " FROM plans WHERE id = ?1");
    let rows = sqlx::query(sql)
        .bind(id.to_string())
        .fetch_all(&mut *c)
        .await?;
    Ok(assemble(c, &rows).await?.pop())
}

/// A plan's status and counters, without its subtasks.
pub(super) async fn counters(c: &mut Conn, id: PlanId) -> R<Option<PlanCounters>> {
    let sql = concat!("SELECT ", plan_columns!(), " FROM plans WHERE id = ?1");
    db::one(c, sql, id, |row| {
        db::plan_counters(&Cols::new(row, "plans"))
    })
    .await
}

pub(super) async fn header(c: &mut Conn, id: PlanId) -> R<Option<PlanHeader>> {
    let sql = concat!("SELECT ", plan_columns!(), " FROM plans WHERE id = ?1");
    db::one(c, sql, id, db::plan_header).await
}

pub(super) async fn list(
    c: &mut Conn,
    status: Option<PlanStatus>,
    limit: Option<u32>,
) -> R<Vec<ExecutionPlan>> {
    let rows = listed(c, status, limit).await?;
    assemble(c, &rows).await
}

/// The plans [`list`] lists, without their subtasks.
pub(super) async fn list_headers(
    c: &mut Conn,
    status: Option<PlanStatus>,
    limit: Option<u32>,
) -> R<Vec<PlanHeader>> {
    listed(c, status, limit)
        .await?
        .iter()
        .map(db::plan_header)
        .collect()
}

/// How many plans there are of `status` (all: `None`).
pub(super) async fn count(c: &mut Conn, status: Option<PlanStatus>) -> R<u64> {
    let n: i64 = match status {
        Some(s) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM plans WHERE status = ?1")
                .bind(s.as_str())
                .fetch_one(&mut *c)
                .await?
        }
        None => {
            sqlx::query_scalar("SELECT COUNT(*) FROM plans")
                .fetch_one(&mut *c)
                .await?
        }
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The rows of the plans a listing shows, newest first.
async fn listed(c: &mut Conn, status: Option<PlanStatus>, limit: Option<u32>) -> R<Vec<SqliteRow>> {
    // LIMIT -1 is SQLite's "no limit". Two statements rather than `?1 IS NULL OR …`, which
    // would keep SQLite from the status index.
    let limit = limit.map_or(-1, i64::from);
    let rows = match status {
        Some(s) => {
            let sql = concat!(
                "SELECT ",
                plan_columns!(),
                " FROM plans WHERE status = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2"
            );
            sqlx::query(sql)
                .bind(s.as_str())
                .bind(limit)
                .fetch_all(&mut *c)
                .await?
        }
        None => {
            let sql = concat!(
                "SELECT ",
                plan_columns!(),
                " FROM plans ORDER BY created_at DESC, id DESC LIMIT ?1"
            );
            sqlx::query(sql).bind(limit).fetch_all(&mut *c).await?
        }
    };
    Ok(rows)
}

/// What [`materialize`] found.
#[derive(Debug)]
pub(super) enum Materialized {
    Unknown,
    Already,
    Created(u64),
}

/// One multi-row insert of the tasks and one of their dependency rows (each chunked under
/// the bind limit), in the transaction that marks the plan materialized.
/// A plan that finished before it was materialized is refused when `refuse_finished`, else
/// left as it is (`Already`).
pub(super) async fn materialize(
    c: &mut Conn,
    id: PlanId,
    refuse_finished: bool,
) -> R<Materialized> {
    let row = sqlx::query("SELECT materialized, status, parent_task_id FROM plans WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(&mut *c)
        .await?;
    let Some(row) = row else {
        return Ok(Materialized::Unknown);
    };
    let cols = Cols::new(&row, "plans");
    if cols.get::<i64>("materialized")? != 0 {
        return Ok(Materialized::Already);
    }
    if let Err(e) = cols.parse::<PlanStatus>("status")?.check_materialize() {
        return if refuse_finished {
            Err(e.into())
        } else {
            Ok(Materialized::Already)
        };
    }
    let parent: Option<TaskId> = cols.parse_opt("parent_task_id")?;
    let subtasks = specs(c, &[id]).await?.remove(&id).unwrap_or_default();
    Ok(Materialized::Created(
        create_tasks(c, id, parent, &subtasks).await?,
    ))
}

/// Stores a plan and materializes it in the same transaction, from the subtasks in hand
/// rather than read back: a crash leaves either nothing or the whole plan with its tasks.
pub(super) async fn submit(c: &mut Conn, plan: &NewPlan) -> R<(PlanId, u64)> {
    if let Some(first) = keyed(c, plan).await? {
        // The first plan may have been stored by `insert` alone: a submit leaves no plan
        // that nothing will run.
        return Ok(match materialize(c, first, false).await? {
            Materialized::Created(n) => (first, n),
            Materialized::Already | Materialized::Unknown => (first, 0),
        });
    }
    let id = insert_new(c, plan).await?;
    Ok((
        id,
        create_tasks(c, id, plan.parent_task_id, &plan.subtasks).await?,
    ))
}

/// The tasks of the plan `id`'s `subtasks`, and the plan marked materialized: how many.
async fn create_tasks(
    c: &mut Conn,
    id: PlanId,
    parent: Option<TaskId>,
    subtasks: &[SubTask],
) -> R<u64> {
    let at = db::db_now(c).await?;
    sqlx::query("UPDATE plans SET materialized = 1, updated_at = ?1 WHERE id = ?2")
        .bind(at)
        .bind(id.to_string())
        .execute(&mut *c)
        .await?;
    let (order, ids) = hive_models::tasks_in_layers(subtasks);
    let mut rows = Vec::with_capacity(subtasks.len());
    let mut deps = Vec::new();
    for st in order {
        let Some(tid) = ids.get(st.id.as_str()).copied() else {
            continue;
        };
        let mine: Vec<TaskId> = hive_models::unique_dependencies(st)
            .into_iter()
            .filter_map(|d| ids.get(d).copied())
            .collect();
        for (pos, d) in mine.iter().enumerate() {
            deps.push((tid, *d, i64::try_from(pos).unwrap_or(i64::MAX)));
        }
        rows.push(TaskRow {
            id: tid,
            new: st.to_new_task(parent),
            plan: Some(PlanLink {
                plan_id: id,
                subtask_id: st.id.clone(),
                pending: u32::try_from(mine.len()).unwrap_or(u32::MAX),
            }),
        });
    }
    tasks::insert_rows(c, &rows, at).await?;
    tasks::insert_dependencies(c, &deps).await?;
    Ok(rows.len() as u64)
}

pub(super) async fn transition(
    c: &mut Conn,
    id: PlanId,
    from: PlanStatus,
    to: PlanStatus,
) -> R<bool> {
    let at = db::db_now(c).await?;
    let done =
        sqlx::query("UPDATE plans SET status = ?1, updated_at = ?2 WHERE id = ?3 AND status = ?4")
            .bind(to.as_str())
            .bind(at)
            .bind(id.to_string())
            .bind(from.as_str())
            .execute(&mut *c)
            .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn cancel(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    id: PlanId,
) -> R<Option<Vec<TaskId>>> {
    let cancelled = replay_over_tasks(
        c,
        n,
        notes,
        id,
        OPEN_TASKS,
        |counters| counters.status.may_cancel(),
        |ch, open| ch.cancel_plan(id, open),
    )
    .await?;
    Ok(cancelled.map(Option::unwrap_or_default))
}

pub(super) async fn retry(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    id: PlanId,
) -> R<Option<Vec<TaskId>>> {
    let requeued = replay_over_tasks(
        c,
        n,
        notes,
        id,
        CLOSED_TASKS,
        |counters| counters.check_retry().is_ok(),
        |ch, closed| ch.retry_plan(id, closed),
    )
    .await?;
    Ok(requeued.flatten().flatten())
}

/// A plan's unfinished tasks (`?1`), in insertion order.
const OPEN_TASKS: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tasks t WHERE t.plan_id = ?1 \
     AND t.status NOT IN ('completed', 'failed', 'cancelled') ORDER BY t.seq"
);

/// A plan's failed and cancelled tasks (`?1`), in insertion order.
const CLOSED_TASKS: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tasks t WHERE t.plan_id = ?1 AND t.status IN ('failed', 'cancelled') \
     ORDER BY t.seq"
);

/// Replays `rule` over a plan and those of its tasks `tasks_sql` selects (in insertion
/// order). `None` for an unknown plan; `Some(None)` when `applies` refuses the plan's
/// counters, and nothing else is read or written.
async fn replay_over_tasks<T>(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    id: PlanId,
    tasks_sql: &'static str,
    applies: impl FnOnce(&PlanCounters) -> bool,
    rule: impl FnOnce(&mut crate::rules::Changes<'_, Loaded>, &[TaskId]) -> T,
) -> R<Option<Option<T>>> {
    let Some(row) = sqlx::query(
        "SELECT id, status, total_subtasks, completed_subtasks, failed_subtasks, \
                cancelled_subtasks FROM plans WHERE id = ?1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *c)
    .await?
    else {
        return Ok(None);
    };
    let counters = replay::plan_counters(&Cols::new(&row, "plans"))?;
    if !applies(&counters) {
        return Ok(Some(None));
    }
    let at = db::db_now(c).await?;
    let mut view = Loaded::default();
    view.plans.insert(id, counters);
    let rows = sqlx::query(tasks_sql)
        .bind(id.to_string())
        .fetch_all(&mut *c)
        .await?;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        let (task, state) = replay::state_from_row(row)?;
        view.add_task(task, state);
        tasks.push(task);
    }
    let (out, batch_notes) = replay::replay(c, n, &view, at, |ch| rule(ch, &tasks)).await?;
    notes.extend(batch_notes);
    Ok(Some(Some(out)))
}

/// Finished plans whose tasks are all finished, oldest first, deleted with their tasks
/// (runs and dependency rows go with those, subtask definitions with the plan).
pub(super) async fn prune(c: &mut Conn, p: &crate::PlanPruneParams) -> R<crate::PlansPruned> {
    let at = db::db_now(c).await?;
    let cutoff = db::sub_us(at, p.older_than);
    let statuses = json_list(p.statuses.iter().map(|s| s.as_str()));
    let ids: Vec<String> = sqlx::query_scalar(concat!(
        "SELECT p.id FROM plans p \
         WHERE p.status IN (SELECT value FROM json_each(?1)) AND p.updated_at < ?2 \
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.plan_id = p.id \
                           AND t.status NOT IN ('completed', 'failed', 'cancelled')) \
         ORDER BY p.updated_at, p.id",
        limit!("?3")
    ))
    .bind(statuses)
    .bind(cutoff)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *c)
    .await?;
    if ids.is_empty() {
        return Ok(crate::PlansPruned::default());
    }
    let ids = json_list(&ids);
    let tasks = sqlx::query("DELETE FROM tasks WHERE plan_id IN (SELECT value FROM json_each(?1))")
        .bind(&ids)
        .execute(&mut *c)
        .await?
        .rows_affected();
    let plans = sqlx::query("DELETE FROM plans WHERE id IN (SELECT value FROM json_each(?1))")
        .bind(&ids)
        .execute(&mut *c)
        .await?
        .rows_affected();
    Ok(crate::PlansPruned { plans, tasks })
}

/// Adds what the running task `spawner` spawned to its plan (see
/// [`crate::rules::growth`]), in the transaction that then finishes it; returns how many
/// tasks it created. `Ok(Err(_))`: the plan cannot take the spawn (a finished plan takes
/// none), and nothing was written.
pub(super) async fn grow(
    c: &mut Conn,
    spawner: TaskId,
    spawn: &[SubTask],
    at: i64,
) -> R<Result<u64, hive_models::Error>> {
    let row = sqlx::query(
        "SELECT t.plan_id, t.plan_subtask_id, p.status AS plan_status, p.parent_task_id \
         FROM tasks t LEFT JOIN plans p ON p.id = t.plan_id WHERE t.id = ?1",
    )
    .bind(spawner.to_string())
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = row else { return Ok(Ok(0)) };
    let cols = Cols::new(&row, "tasks");
    let plan: Option<PlanId> = cols.parse_opt("plan_id")?;
    let subtask: Option<String> = cols.get("plan_subtask_id")?;
    let (Some(plan), Some(subtask)) = (plan, subtask) else {
        return Ok(Err(hive_models::Error::InvalidField {
            field: "spawn".into(),
            reason: format!("task {spawner} belongs to no plan"),
        }));
    };
    let status: PlanStatus = cols.parse("plan_status")?;
    let parent: Option<TaskId> = cols.parse_opt("parent_task_id")?;
    let existing = specs(c, &[plan]).await?.remove(&plan).unwrap_or_default();
    let growth = match crate::rules::growth::growth(plan, status, &existing, &subtask, spawn) {
        Ok(Some(g)) => g,
        Ok(None) => return Ok(Ok(0)),
        Err(e) => return Ok(Err(e)),
    };
    let rows = sqlx::query("SELECT id, plan_subtask_id, status FROM tasks WHERE plan_id = ?1")
        .bind(plan.to_string())
        .fetch_all(&mut *c)
        .await?;
    let mut tasks_by_subtask = HashMap::with_capacity(rows.len());
    for row in &rows {
        let cols = Cols::new(row, "tasks");
        if let Some(s) = cols.get::<Option<String>>("plan_subtask_id")? {
            let status = cols.parse::<hive_models::TaskStatus>("status")?;
            tasks_by_subtask.insert(s, (cols.parse::<TaskId>("id")?, status));
        }
    }
    let status_of = |id: &str| tasks_by_subtask.get(id).map(|t| t.1);
    if let Err(e) = crate::rules::growth::dependencies_can_complete(&growth, status_of) {
        return Ok(Err(e));
    }
    let placed = crate::rules::growth::place(&growth, &existing, &tasks_by_subtask);
    let first = i64::try_from(existing.len()).unwrap_or(i64::MAX);
    insert_specs(c, plan, &growth.added, first).await?;
    let new_rows: Vec<TaskRow> = placed
        .tasks
        .iter()
        .map(|(id, st, pending)| TaskRow {
            id: *id,
            new: st.to_new_task(parent),
            plan: Some(PlanLink {
                plan_id: plan,
                subtask_id: st.id.clone(),
                pending: *pending,
            }),
        })
        .collect();
    tasks::insert_rows(c, &new_rows, at).await?;
    for (_, grown) in &placed.rewired {
        sqlx::query("UPDATE plan_subtasks SET spec = ?1 WHERE plan_id = ?2 AND subtask_id = ?3")
            .bind(to_json("subtask", grown)?)
            .bind(plan.to_string())
            .bind(&grown.id)
            .execute(&mut *c)
            .await?;
    }
    tasks::insert_dependencies(c, &placed.deps).await?;
    sqlx::query(
        "UPDATE tasks SET pending_deps = pending_deps + ?1, updated_at = ?2 \
         WHERE id IN (SELECT value FROM json_each(?3))",
    )
    .bind(i64::try_from(placed.sinks.len()).unwrap_or(i64::MAX))
    .bind(at)
    .bind(json_list(placed.rewired.iter().map(|(t, _)| t)))
    .execute(&mut *c)
    .await?;
    sqlx::query(
        "UPDATE plans SET total_subtasks = total_subtasks + ?1, updated_at = ?2 WHERE id = ?3",
    )
    .bind(i64::try_from(new_rows.len()).unwrap_or(i64::MAX))
    .bind(at)
    .bind(plan.to_string())
    .execute(&mut *c)
    .await?;
    Ok(Ok(new_rows.len() as u64))
}
