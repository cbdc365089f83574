//! Plans: storing, listing, materializing into tasks, compare-and-set and cancelling.

use std::collections::HashMap;

use hive_models::{ExecutionPlan, NewPlan, PlanCounters, PlanId, PlanStatus, SubTask, TaskId};

use super::db::{self, Cols, Conn, R, to_json};
use super::replay::{self, state_columns};
use super::tasks::{self, PlanLink, TaskRow};
use crate::rules::Loaded;
use crate::{Notification, Notifier};

pub(super) async fn insert(c: &mut Conn, plan: NewPlan) -> R<PlanId> {
    let at = db::db_now(c).await?;
    let id = PlanId::new();
    let p = ExecutionPlan::from_new(id, plan, db::ts("plans", at)?);
    sqlx::query(
        "INSERT INTO plans (id, title, description, parent_task_id, status, total_subtasks, \
                            completed_subtasks, failed_subtasks, subtasks, materialized, \
                            created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, ?7, 0, ?8, ?8)",
    )
    .bind(id.to_string())
    .bind(p.title)
    .bind(p.description)
    .bind(p.parent_task_id.map(|t| t.to_string()))
    .bind(p.status.as_str())
    .bind(i64::from(p.total_subtasks))
    .bind(to_json("subtasks", &p.subtasks)?)
    .bind(at)
    .execute(&mut *c)
    .await?;
    Ok(id)
}

pub(super) async fn get(c: &mut Conn, id: PlanId) -> R<Option<ExecutionPlan>> {
    let sql = concat!("SELECT ", plan_columns!(), " FROM plans WHERE id = ?1");
    db::one(c, sql, id, db::plan_from_row).await
}

pub(super) async fn list(
    c: &mut Conn,
    status: Option<PlanStatus>,
    limit: Option<u32>,
) -> R<Vec<ExecutionPlan>> {
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
    rows.iter().map(db::plan_from_row).collect()
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
pub(super) async fn materialize(c: &mut Conn, id: PlanId) -> R<Materialized> {
    let row = sqlx::query("SELECT materialized, subtasks, parent_task_id FROM plans WHERE id = ?1")
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
    let subtasks: Vec<SubTask> = cols.json("subtasks")?;
    let parent: Option<TaskId> = cols.parse_opt("parent_task_id")?;
    let at = db::db_now(c).await?;
    sqlx::query("UPDATE plans SET materialized = 1, updated_at = ?1 WHERE id = ?2")
        .bind(at)
        .bind(id.to_string())
        .execute(&mut *c)
        .await?;
    let ids: HashMap<&str, TaskId> = subtasks
        .iter()
        .map(|st| (st.id.as_str(), TaskId::new()))
        .collect();
    let mut rows = Vec::with_capacity(subtasks.len());
    let mut deps = Vec::new();
    for st in &subtasks {
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
    Ok(Materialized::Created(rows.len() as u64))
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
    let cols = Cols::new(&row, "plans");
    let status: PlanStatus = cols.parse("status")?;
    if status.is_terminal() {
        return Ok(Some(Vec::new()));
    }
    let at = db::db_now(c).await?;
    let mut view = Loaded::default();
    view.plans.insert(
        id,
        PlanCounters {
            status,
            total: cols.u32("total_subtasks")?,
            completed: cols.u32("completed_subtasks")?,
            failed: cols.u32("failed_subtasks")?,
            cancelled: cols.u32("cancelled_subtasks")?,
        },
    );
    let rows = sqlx::query(concat!(
        "SELECT ",
        state_columns!(),
        " FROM tasks t WHERE t.plan_id = ?1 AND t.status NOT IN ('completed', 'failed', 'cancelled') \
         ORDER BY t.seq"
    ))
    .bind(id.to_string())
    .fetch_all(&mut *c)
    .await?;
    let mut open = Vec::with_capacity(rows.len());
    for row in &rows {
        let (task, state) = replay::state_from_row(row)?;
        view.add_task(task, state);
        open.push(task);
    }
    let (cancelled, batch_notes) =
        replay::replay(c, n, &view, at, |ch| ch.cancel_plan(id, &open)).await?;
    notes.extend(batch_notes);
    Ok(Some(cancelled))
}
