//! Plans on Postgres: storing, reading, materializing into tasks (one insert of the tasks,
//! one of their dependency rows), compare-and-set of the status, and cancelling by the rules.

use std::collections::HashMap;

use hive_models::{ExecutionPlan, Json, NewPlan, PlanId, PlanStatus, SubTask, TaskId};
use uuid::Uuid;

use super::replay::{self, state_from_row};
use super::sql::{payload, server_now};
use super::tasks::TaskRows;
use super::{PostgresStore, rows};
use crate::Error;
use crate::rules::Loaded;
use crate::sql::{Fail, R};

/// A plan's open tasks, locked in id order (the order every writer locks tasks in).
const LOCK_PLAN_TASKS: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tasks t WHERE t.plan_id = $1 AND t.status NOT IN ",
    terminal_statuses!(),
    " ORDER BY t.id FOR UPDATE"
);

impl PostgresStore {
    pub(super) async fn insert_plan_row(&self, plan: &NewPlan) -> R<PlanId> {
        let id = PlanId::new();
        let subtasks = serde_json::to_value(&plan.subtasks)
            .map_err(|e| Fail::Store(Error::Database(format!("subtasks: {e}"))))?;
        let total = i64::try_from(plan.subtasks.len()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO plans (id, title, description, parent_task_id, status, \
                 total_subtasks, subtasks, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, now(), now())",
        )
        .bind(id.0)
        .bind(&plan.title)
        .bind(&plan.description)
        .bind(plan.parent_task_id.map(|p| p.0))
        .bind(total)
        .bind(subtasks)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    pub(super) async fn read_plan(&self, id: PlanId) -> R<Option<ExecutionPlan>> {
        let row = sqlx::query("SELECT * FROM plans WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::plan).transpose()
    }

    pub(super) async fn read_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> R<Vec<ExecutionPlan>> {
        let found = sqlx::query(
            "SELECT * FROM plans WHERE ($1::text IS NULL OR status = $1::text) \
             ORDER BY created_at DESC, id DESC LIMIT $2::bigint",
        )
        .bind(status.map(PlanStatus::as_str))
        .bind(limit.map(i64::from))
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::plan).collect()
    }

    pub(super) async fn materialize_once(&self, id: PlanId) -> R<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT materialized, subtasks, parent_task_id FROM plans WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        if rows::get::<bool>(&row, "materialized", "plans")? {
            return Ok(Some(0));
        }
        let subtasks: Json = rows::get(&row, "subtasks", "plans")?;
        let subtasks: Vec<SubTask> = serde_json::from_value(subtasks)
            .map_err(|e| rows::corrupt("plans", format!("column `subtasks`: {e}")))?;
        let parent = rows::get::<Option<Uuid>>(&row, "parent_task_id", "plans")?.map(TaskId);
        let ids: HashMap<&str, TaskId> = subtasks
            .iter()
            .map(|st| (st.id.as_str(), TaskId::new()))
            .collect();
        let mut batch = TaskRows::default();
        let (mut child, mut parent_of, mut position) = (Vec::new(), Vec::new(), Vec::new());
        for st in &subtasks {
            let Some(&tid) = ids.get(st.id.as_str()) else {
                continue;
            };
            let deps: Vec<TaskId> = hive_models::unique_dependencies(st)
                .into_iter()
                .filter_map(|d| ids.get(d).copied())
                .collect();
            for (i, d) in deps.iter().enumerate() {
                child.push(tid.0);
                parent_of.push(d.0);
                position.push(i32::try_from(i).unwrap_or(i32::MAX));
            }
            let new = st.to_new_task(parent);
            batch.push(tid, new, Some((id, st.id.clone(), deps.len())));
        }
        let created = batch.len() as u64;
        let note = payload(&self.notifier.task_created(None, created))?;
        batch.insert(&mut tx, Some(note)).await?;
        sqlx::query(
            "WITH deps AS ( \
                 INSERT INTO task_dependencies (task_id, depends_on, position) \
                 SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::int[])) \
             UPDATE plans SET materialized = true, updated_at = now() WHERE id = $1",
        )
        .bind(id.0)
        .bind(child)
        .bind(parent_of)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    pub(super) async fn transition_once(
        &self,
        id: PlanId,
        from: PlanStatus,
        to: PlanStatus,
    ) -> R<bool> {
        let note = payload(&self.notifier.plan_status(id, to))?;
        let n: i64 = sqlx::query_scalar(concat!(
            "WITH moved AS ( \
                 UPDATE plans SET status = $3, updated_at = now() \
                 WHERE id = $1 AND status = $2 RETURNING id) \
             SELECT count(pg_notify(",
            channel_sql!(),
            ", $4::text)) FROM moved"
        ))
        .bind(id.0)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(note)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Cancels a plan and its open tasks by the rules.
    pub(super) async fn cancel_plan_once(&self, id: PlanId) -> R<Option<Vec<TaskId>>> {
        let mut tx = self.pool.begin().await?;
        // Tasks before the plan: the order every other writer locks them in.
        sqlx::query(LOCK_PLAN_TASKS)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        let Some(plan) =
            sqlx::query("SELECT status, now() AS now FROM plans WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        if rows::plan_status(&plan, "status")?.is_terminal() {
            return Ok(Some(Vec::new()));
        }
        let at = server_now(&plan)?;
        let mut view = Loaded::default();
        replay::load_plans(&mut tx, &mut view, &[id]).await?;
        // Again, now that the plan is locked: tasks materialized meanwhile are included.
        let open = sqlx::query(LOCK_PLAN_TASKS)
            .bind(id.0)
            .fetch_all(&mut *tx)
            .await?;
        let mut tasks = Vec::with_capacity(open.len());
        for row in &open {
            let (task, state) = state_from_row(row)?;
            tasks.push((state.seq, task));
            view.add_task(task, state);
        }
        tasks.sort();
        let order: Vec<TaskId> = tasks.into_iter().map(|(_, t)| t).collect();
        let (cancelled, _) = replay::replay(&mut tx, &self.notifier, &view, at, true, |ch| {
            ch.cancel_plan(id, &order)
        })
        .await?;
        tx.commit().await?;
        Ok(Some(cancelled))
    }
}
