//! Plans on Postgres: storing, reading, materializing into tasks (one insert of the tasks,
//! one of their dependency rows), compare-and-set of the status, cancelling and retrying by
//! the rules, and pruning.

use std::collections::HashMap;

use hive_models::{
    ExecutionPlan, Json, NewPlan, PlanCounters, PlanHeader, PlanId, PlanStatus, SubTask, TaskId,
};
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::replay::{self, state_from_row};
use super::sql::{end, micros, payload, server_now};
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

/// What a retry of a plan (`$1`) locks, in id order: the failed and cancelled tasks it
/// requeues, and the running ones. A running task that fails meanwhile either commits first
/// (and is requeued with the others) or waits for the retry, then reads the plan in progress
/// and fails it again. Otherwise its finish, having read the plan failed, would leave it
/// unmoved, in progress with a failed subtask.
const LOCK_RETRIED_PLAN_TASKS: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tasks t WHERE t.plan_id = $1 \
     AND t.status IN ('failed', 'cancelled', 'assigned', 'in_progress') \
     ORDER BY t.id FOR UPDATE"
);

impl PostgresStore {
    pub(super) async fn insert_plan_row(&self, plan: &NewPlan) -> R<PlanId> {
        let mut tx = self.pool.begin().await?;
        let out = insert_plan(&mut tx, plan).await.map(|(id, _)| id);
        end(tx, out).await
    }

    /// Stores a plan and materializes it in the same transaction, from the subtasks in hand
    /// rather than read back: a crash leaves either nothing or the whole plan with its tasks.
    pub(super) async fn submit_once(&self, plan: &NewPlan) -> R<(PlanId, u64)> {
        let mut tx = self.pool.begin().await?;
        let out: R<_> = async {
            let (id, new) = insert_plan(&mut tx, plan).await?;
            if !new {
                // The first plan may have been stored by `insert_plan` alone: a submit
                // leaves no plan that nothing will run.
                let created = self.materialize_in(&mut tx, id, false).await?;
                return Ok((id, created.unwrap_or(0)));
            }
            let created = self
                .create_tasks(&mut tx, id, plan.parent_task_id, &plan.subtasks)
                .await?;
            Ok((id, created))
        }
        .await;
        end(tx, out).await
    }

    pub(super) async fn read_plan(&self, id: PlanId) -> R<Option<ExecutionPlan>> {
        let mut tx = self.snapshot().await?;
        let found = sqlx::query("SELECT * FROM plans_counted WHERE id = $1")
            .bind(id.0)
            .fetch_all(&mut *tx)
            .await?;
        let plans = with_specs(&mut tx, &found).await;
        tx.rollback().await?;
        Ok(plans?.pop())
    }

    /// A read-only transaction whose statements all see one snapshot: a plan's row and its
    /// subtasks read apart could disagree (a spawn or a prune committing between them).
    pub(super) async fn snapshot(&self) -> R<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    pub(super) async fn read_plan_counters(&self, id: PlanId) -> R<Option<PlanCounters>> {
        self.plan_row(id, rows::plan_counters).await
    }

    pub(super) async fn read_plan_header(&self, id: PlanId) -> R<Option<PlanHeader>> {
        self.plan_row(id, rows::plan_header).await
    }

    /// One plan's row with its counters, without its subtasks, decoded.
    async fn plan_row<T>(&self, id: PlanId, decode: fn(&PgRow) -> R<T>) -> R<Option<T>> {
        let row = sqlx::query("SELECT * FROM plans_counted WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    pub(super) async fn read_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> R<Vec<ExecutionPlan>> {
        let mut tx = self.snapshot().await?;
        let found = listed_plans(&mut tx, status, limit).await;
        let plans = match found {
            Ok(found) => with_specs(&mut tx, &found).await,
            Err(e) => Err(e),
        };
        tx.rollback().await?;
        plans
    }

    /// The plans [`Self::read_plans`] reads, without their subtasks.
    pub(super) async fn read_plan_headers(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> R<Vec<PlanHeader>> {
        let mut conn = self.pool.acquire().await?;
        let found = listed_plans(&mut conn, status, limit).await?;
        found.iter().map(rows::plan_header).collect()
    }

    /// How many plans there are of `status` (all: `None`). One statement per case rather
    /// than `$1 IS NULL OR …`, whose generic plan may not use the status index.
    pub(super) async fn count_plans_of(&self, status: Option<PlanStatus>) -> R<u64> {
        let n: i64 = match status {
            Some(s) => {
                sqlx::query_scalar("SELECT count(*) FROM plans WHERE status = $1")
                    .bind(s.as_str())
                    .fetch_one(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_scalar("SELECT count(*) FROM plans")
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(super) async fn materialize_once(&self, id: PlanId) -> R<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let out = self.materialize_in(&mut tx, id, true).await;
        end(tx, out).await
    }

    /// Materializes the plan `id` in the caller's transaction; see
    /// [`crate::Store::materialize_plan`]. A plan that finished before it was materialized
    /// is refused when `refuse_finished`, else left as it is.
    async fn materialize_in(
        &self,
        tx: &mut PgConnection,
        id: PlanId,
        refuse_finished: bool,
    ) -> R<Option<u64>> {
        let Some(row) = sqlx::query(
            "SELECT materialized, status, parent_task_id FROM plans WHERE id = $1 FOR UPDATE",
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
        if let Err(e) = rows::plan_status(&row, "status")?.check_materialize() {
            return if refuse_finished {
                Err(crate::Error::from(e).into())
            } else {
                Ok(Some(0))
            };
        }
        let subtasks = specs(tx, &[id]).await?.remove(&id).unwrap_or_default();
        let parent = rows::get::<Option<Uuid>>(&row, "parent_task_id", "plans")?.map(TaskId);
        Ok(Some(self.create_tasks(tx, id, parent, &subtasks).await?))
    }

    /// The tasks of the plan `id`'s `subtasks` (one insert of the tasks, one of their
    /// dependency rows), and the plan marked materialized: how many.
    async fn create_tasks(
        &self,
        tx: &mut PgConnection,
        id: PlanId,
        parent: Option<TaskId>,
        subtasks: &[SubTask],
    ) -> R<u64> {
        let (order, ids) = hive_models::tasks_in_layers(subtasks);
        let mut batch = TaskRows::default();
        let (mut child, mut parent_of, mut position) = (Vec::new(), Vec::new(), Vec::new());
        for st in order {
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
        batch.insert(&mut *tx, Some(note)).await?;
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
        Ok(created)
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
        let cancelled = self
            .replay_over_tasks(id, LOCK_PLAN_TASKS, PlanStatus::may_cancel, |ch, open| {
                ch.cancel_plan(id, open)
            })
            .await?;
        Ok(cancelled.map(Option::unwrap_or_default))
    }

    /// Requeues a failed or cancelled plan's failed and cancelled tasks by the rules (a
    /// completed one's too, which the rules retry when a subtask failed since).
    pub(super) async fn retry_plan_once(&self, id: PlanId) -> R<Option<Vec<TaskId>>> {
        let requeued = self
            .replay_over_tasks(
                id,
                LOCK_RETRIED_PLAN_TASKS,
                |status| {
                    matches!(
                        status,
                        PlanStatus::Failed | PlanStatus::Cancelled | PlanStatus::Completed
                    )
                },
                |ch, closed| ch.retry_plan(id, closed),
            )
            .await?;
        Ok(requeued.flatten().flatten())
    }

    /// Finished plans whose tasks are all finished, oldest first, deleted with their tasks
    /// in one statement (runs and dependency rows go with the tasks; subtask definitions
    /// and tallies with the plan). A plan another transaction holds is skipped. The tasks
    /// are locked before their plans, the order every other writer takes, and checked again
    /// once locked: a subtask requeued (or claimed) since the statement's snapshot keeps
    /// its plan, and the plan is not deleted from under it.
    pub(super) async fn prune_plans_once(
        &self,
        p: &crate::PlanPruneParams,
        statuses: &[&str],
    ) -> R<crate::PlansPruned> {
        let row = sqlx::query(concat!(
            "WITH cand AS ( \
                 SELECT p.id FROM plans p \
                 WHERE p.status = ANY($1::text[]) \
                   AND p.updated_at < now() - $2::bigint * interval '1 microsecond' \
                   AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.plan_id = p.id \
                                   AND t.status NOT IN ",
            terminal_statuses!(),
            ") \
                 ORDER BY p.updated_at, p.id LIMIT $3::bigint \
             ), locked AS ( \
                 /* Locked rows are read as they are now, not as the snapshot saw them. */ \
                 SELECT t.plan_id, t.status FROM tasks t \
                 WHERE t.plan_id = ANY(ARRAY(SELECT id FROM cand)) ORDER BY t.id FOR UPDATE \
             ), open AS ( \
                 /* Aggregated, so every task is locked before any plan. */ \
                 SELECT plan_id FROM locked GROUP BY plan_id \
                 HAVING bool_or(status NOT IN ",
            terminal_statuses!(),
            ") \
             ), old AS ( \
                 SELECT p.id FROM plans p \
                 WHERE p.id = ANY(ARRAY(SELECT id FROM cand)) AND p.status = ANY($1::text[]) \
                   AND p.id NOT IN (SELECT plan_id FROM open) \
                 FOR UPDATE SKIP LOCKED \
             ), gone_tasks AS ( \
                 DELETE FROM tasks WHERE plan_id = ANY(ARRAY(SELECT id FROM old)) RETURNING 1 \
             ), gone AS ( \
                 DELETE FROM plans WHERE id = ANY(ARRAY(SELECT id FROM old)) RETURNING 1 \
             ) \
             SELECT (SELECT count(*) FROM gone) AS plans, \
                    (SELECT count(*) FROM gone_tasks) AS tasks"
        ))
        .bind(statuses)
        .bind(micros(p.older_than))
        .bind(i64::from(p.limit))
        .fetch_one(&self.pool)
        .await?;
        let count = |name| rows::get::<i64>(&row, name, "plans").map(i64::unsigned_abs);
        Ok(crate::PlansPruned {
            plans: count("plans")?,
            tasks: count("tasks")?,
        })
    }

    /// Replays `rule` over a plan and those of its tasks `lock_tasks` selects and locks,
    /// passed in insertion order, in one transaction. `None` for an unknown plan;
    /// `Some(None)` when `applies` refuses the plan's status, and nothing is written.
    async fn replay_over_tasks<T>(
        &self,
        id: PlanId,
        lock_tasks: &'static str,
        applies: impl Fn(PlanStatus) -> bool,
        mut rule: impl FnMut(&mut crate::rules::Changes<'_, Loaded>, &[TaskId]) -> T,
    ) -> R<Option<Option<T>>> {
        let mut tx = self.pool.begin().await?;
        let out = async {
            // Tasks before the plan: the order every other writer locks them in.
            sqlx::query(lock_tasks).bind(id.0).execute(&mut *tx).await?;
            let Some(plan) =
                sqlx::query("SELECT status, now() AS now FROM plans WHERE id = $1 FOR UPDATE")
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await?
            else {
                return Ok(None);
            };
            if !applies(rows::plan_status(&plan, "status")?) {
                return Ok(Some(None));
            }
            let at = server_now(&plan)?;
            let mut view = Loaded::default();
            replay::load_plans(&mut tx, &mut view, &[id]).await?;
            // Again, now that the plan is locked: tasks materialized meanwhile are included.
            let locked = sqlx::query(lock_tasks)
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await?;
            let mut tasks = Vec::with_capacity(locked.len());
            for row in &locked {
                let (task, state) = state_from_row(row)?;
                tasks.push((state.seq, task));
                view.add_task(task, state);
            }
            tasks.sort();
            let order: Vec<TaskId> = tasks.into_iter().map(|(_, t)| t).collect();
            let done = replay::replay(&mut tx, &self.notifier, &mut view, at, true, |ch| {
                rule(ch, &order)
            })
            .await?;
            Ok(Some(Some(done)))
        }
        .await;
        // Ended whatever the outcome: a refused plan's rows are locked too.
        match end(tx, out).await? {
            Some(Some((out, written))) => {
                self.after_commit(written).await?;
                Ok(Some(Some(out)))
            }
            Some(None) => Ok(Some(None)),
            None => Ok(None),
        }
    }
}

/// A new plan's row and subtask definitions, `pending` and not materialized, and `true`;
/// or, when a plan was submitted with its idempotency key before, that plan and `false`.
async fn insert_plan(conn: &mut PgConnection, plan: &NewPlan) -> R<(PlanId, bool)> {
    let id = PlanId::new();
    let total = i64::try_from(plan.subtasks.len()).unwrap_or(i64::MAX);
    // A concurrent submission of the same key makes the insert wait for its commit, then
    // insert nothing; the read that follows, a new statement, sees the committed plan,
    // unless a prune deleted it in between: the key is free then, and the insert is tried
    // again (each statement sees what committed before it).
    for _ in 0..3 {
        let inserted = sqlx::query(
            "INSERT INTO plans (id, title, description, parent_task_id, status, \
                 total_subtasks, metadata, idempotency_key, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, now(), now()) \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(id.0)
        .bind(&plan.title)
        .bind(&plan.description)
        .bind(plan.parent_task_id.map(|p| p.0))
        .bind(total)
        .bind(&plan.metadata)
        .bind(&plan.idempotency_key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 1 {
            insert_specs(conn, id, &plan.subtasks, 0).await?;
            return Ok((id, true));
        }
        let first: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM plans WHERE idempotency_key = $1")
                .bind(&plan.idempotency_key)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(first) = first {
            return Ok((PlanId(first), false));
        }
    }
    Err(Fail::Store(Error::Database(
        "the plan with this idempotency key was deleted by every read of it; try again".into(),
    )))
}

/// Stores subtask definitions, numbered from `first` in the plan's order.
pub(super) async fn insert_specs(
    conn: &mut PgConnection,
    plan: PlanId,
    subtasks: &[SubTask],
    first: i32,
) -> R<()> {
    let specs = serde_json::to_value(subtasks)
        .map_err(|e| Fail::Store(Error::Database(format!("subtasks: {e}"))))?;
    sqlx::query(
        "INSERT INTO plan_subtasks (plan_id, subtask_id, position, spec) \
         SELECT $1, e.value ->> 'id', $3 + (e.ordinality - 1)::int, e.value \
         FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS e(value, ordinality)",
    )
    .bind(plan.0)
    .bind(specs)
    .bind(first)
    .execute(conn)
    .await?;
    Ok(())
}

/// The subtasks of each plan in `ids`, in the plans' order.
pub(super) async fn specs(
    conn: &mut PgConnection,
    ids: &[PlanId],
) -> R<HashMap<PlanId, Vec<SubTask>>> {
    let uuids: Vec<Uuid> = ids.iter().map(|p| p.0).collect();
    let found = sqlx::query(
        "SELECT plan_id, spec FROM plan_subtasks WHERE plan_id = ANY($1) \
         ORDER BY plan_id, position",
    )
    .bind(uuids)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<PlanId, Vec<SubTask>> = HashMap::with_capacity(ids.len());
    for row in &found {
        let plan = PlanId(rows::get(row, "plan_id", "plan_subtasks")?);
        let spec: Json = rows::get(row, "spec", "plan_subtasks")?;
        let subtask = serde_json::from_value(spec)
            .map_err(|e| rows::corrupt("plan_subtasks", format!("column `spec`: {e}")))?;
        out.entry(plan).or_default().push(subtask);
    }
    Ok(out)
}

/// Adds what the running task `spawner` spawned to its plan (see
/// [`crate::rules::growth`]), in the transaction that then finishes it. `Ok(Err(_))`: the
/// plan cannot take the spawn (a finished plan takes none), and none of it was written
/// (the running subtasks it named may be marked, which only sends their finish down the
/// replay).
pub(super) async fn grow(
    conn: &mut PgConnection,
    notifier: &crate::Notifier,
    spawner: TaskId,
    spawn: &[SubTask],
) -> R<Result<(), hive_models::Error>> {
    const T: &str = "tasks";
    let Some(row) = sqlx::query("SELECT plan_id, plan_subtask_id FROM tasks WHERE id = $1")
        .bind(spawner.0)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(Ok(()));
    };
    let plan = rows::get::<Option<Uuid>>(&row, "plan_id", T)?.map(PlanId);
    let subtask: Option<String> = rows::get(&row, "plan_subtask_id", T)?;
    let (Some(plan), Some(subtask)) = (plan, subtask) else {
        return Ok(Err(hive_models::Error::InvalidField {
            field: "spawn".into(),
            reason: format!("task {spawner} belongs to no plan"),
        }));
    };
    // Unfinished subtasks the spawn makes dependencies of are marked (and so locked) before
    // their status is read: a running one finishing meanwhile either committed first (read
    // below as completed) or waits for this commit, then sees the mark and counts its
    // dependents down in a statement that sees the new ones (`FINISH_SUCCESSES`); a queued
    // one is passed over by claims (`SKIP LOCKED`) until this commits, so it cannot be
    // claimed and finished unseen in between. Before the plan's lock: tasks first, then the
    // plan, the order every writer keeps.
    let depended: Vec<&str> = spawn
        .iter()
        .flat_map(hive_models::unique_dependencies)
        .filter(|d| *d != subtask.as_str())
        .collect();
    if !depended.is_empty() {
        sqlx::query(
            // Locked in id order, as other writers lock tasks, before the update.
            "UPDATE tasks t SET late_dependents = true FROM ( \
                 SELECT id FROM tasks WHERE plan_id = $1 AND plan_subtask_id = ANY($2) \
                   AND status NOT IN ('completed', 'failed', 'cancelled') \
                 ORDER BY id FOR NO KEY UPDATE) x \
             WHERE t.id = x.id",
        )
        .bind(plan.0)
        .bind(&depended)
        .execute(&mut *conn)
        .await?;
    }
    // Spawns into one plan take turns: two checked against the same definition could each
    // be acyclic and together close a cycle. The lock the plan's total takes at the end
    // anyway, which a finish's tally (a key share) does not wait for.
    let locked =
        sqlx::query("SELECT status, parent_task_id FROM plans WHERE id = $1 FOR NO KEY UPDATE")
            .bind(plan.0)
            .fetch_one(&mut *conn)
            .await?;
    let status = rows::plan_status(&locked, "status")?;
    let parent = rows::get::<Option<Uuid>>(&locked, "parent_task_id", "plans")?.map(TaskId);
    let existing = specs(&mut *conn, &[plan])
        .await?
        .remove(&plan)
        .unwrap_or_default();
    let growth = match crate::rules::growth::growth(plan, status, &existing, &subtask, spawn) {
        Ok(Some(g)) => g,
        Ok(None) => return Ok(Ok(())),
        Err(e) => return Ok(Err(e)),
    };
    let found = sqlx::query("SELECT id, plan_subtask_id, status FROM tasks WHERE plan_id = $1")
        .bind(plan.0)
        .fetch_all(&mut *conn)
        .await?;
    let mut tasks_by_subtask = HashMap::with_capacity(found.len());
    for row in &found {
        if let Some(s) = rows::get::<Option<String>>(row, "plan_subtask_id", T)? {
            let status = rows::task_status(row, "status")?;
            tasks_by_subtask.insert(s, (TaskId(rows::get(row, "id", T)?), status));
        }
    }
    let status_of = |id: &str| tasks_by_subtask.get(id).map(|t| t.1);
    if let Err(e) = crate::rules::growth::dependencies_can_complete(&growth, status_of) {
        return Ok(Err(e));
    }
    let placed = crate::rules::growth::place(&growth, &existing, &tasks_by_subtask);
    let first = i32::try_from(existing.len()).unwrap_or(i32::MAX);
    insert_specs(&mut *conn, plan, &growth.added, first).await?;
    let mut batch = TaskRows::default();
    for (id, st, pending) in &placed.tasks {
        let link = (plan, st.id.clone(), *pending as usize);
        batch.push(*id, st.to_new_task(parent), Some(link));
    }
    let created = batch.len() as u64;
    batch
        .insert(
            &mut *conn,
            Some(payload(&notifier.task_created(None, created))?),
        )
        .await?;
    let mut specs_out: Vec<(String, Json)> = Vec::with_capacity(placed.rewired.len());
    for (_, grown) in &placed.rewired {
        let spec = serde_json::to_value(grown)
            .map_err(|e| Fail::Store(Error::Database(format!("subtask: {e}"))))?;
        specs_out.push((grown.id.clone(), spec));
    }
    let (child, parent_of, position): (Vec<Uuid>, Vec<Uuid>, Vec<i32>) = placed
        .deps
        .iter()
        .map(|(t, d, p)| (t.0, d.0, i32::try_from(*p).unwrap_or(i32::MAX)))
        .fold((vec![], vec![], vec![]), |mut acc, (a, b, c)| {
            acc.0.push(a);
            acc.1.push(b);
            acc.2.push(c);
            acc
        });
    let rewired: Vec<Uuid> = placed.rewired.iter().map(|(t, _)| t.0).collect();
    let (spec_ids, spec_values): (Vec<String>, Vec<Json>) = specs_out.into_iter().unzip();
    sqlx::query(
        "WITH deps AS ( \
             INSERT INTO task_dependencies (task_id, depends_on, position) \
             SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::int[]) \
         ), waits AS ( \
             UPDATE tasks SET pending_deps = pending_deps + $6::int, updated_at = now() \
             WHERE id = ANY($5::uuid[]) \
         ), specs AS ( \
             UPDATE plan_subtasks s SET spec = x.spec \
             FROM unnest($7::text[], $8::jsonb[]) AS x(id, spec) \
             WHERE s.plan_id = $1 AND s.subtask_id = x.id \
         ) \
         UPDATE plans SET total_subtasks = total_subtasks + $9::bigint, updated_at = now() \
         WHERE id = $1",
    )
    .bind(plan.0)
    .bind(child)
    .bind(parent_of)
    .bind(position)
    .bind(rewired)
    .bind(i32::try_from(placed.sinks.len()).unwrap_or(i32::MAX))
    .bind(spec_ids)
    .bind(spec_values)
    .bind(i64::try_from(created).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

/// The plans [`PostgresStore::read_plans`] lists, newest first, as rows.
async fn listed_plans(
    conn: &mut PgConnection,
    status: Option<PlanStatus>,
    limit: Option<u32>,
) -> R<Vec<PgRow>> {
    Ok(sqlx::query(
        "SELECT * FROM plans_counted WHERE ($1::text IS NULL OR status = $1::text) \
         ORDER BY created_at DESC, id DESC LIMIT $2::bigint",
    )
    .bind(status.map(PlanStatus::as_str))
    .bind(limit.map(i64::from))
    .fetch_all(conn)
    .await?)
}

/// Plan rows with their subtasks, read on the same connection (in one snapshot when the
/// caller opened one).
async fn with_specs(conn: &mut PgConnection, found: &[PgRow]) -> R<Vec<ExecutionPlan>> {
    let ids = found
        .iter()
        .map(|r| rows::get::<Uuid>(r, "id", "plans").map(PlanId))
        .collect::<R<Vec<_>>>()?;
    let mut specs = specs(conn, &ids).await?;
    found
        .iter()
        .zip(&ids)
        .map(|(row, id)| rows::plan(row, specs.remove(id).unwrap_or_default()))
        .collect()
}
