//! Tasks on Postgres: inserts (one statement, or a short transaction with idempotency
//! keys), reads, status changes by the rules, deletes, pruning and dependency checks.

use std::collections::{HashMap, HashSet};

use hive_models::{Json, NewTask, PlanId, Task, TaskId, TaskStatus, Timestamp};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::replay::{self, state_from_row};
use super::sql::{end, micros, payload, server_now};
use super::{PostgresStore, rows};
use crate::rules::Loaded;
use crate::sql::R;
use crate::{
    Error, PruneParams, StatusChange, StatusChanged, StatusCounts, TaskFilter, TasksInserted,
};

/// Inserts rows given as parallel arrays; conflicting idempotency keys insert nothing.
/// Returns the ids inserted. `$21` is the notification payload, sent when not null (a plan's
/// materialization; task creation publishes its own after commit, `publish.rs`). A task
/// waiting for no dependency starts its delay now (see `NewTask::claimable_from`).
const INSERT_TASKS: &str = concat!(
    "\
WITH input AS ( \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], \
        $6::jsonb[], $7::bigint[], $8::text[], $9::jsonb[], $10::timestamptz[], $11::uuid[], \
        $12::jsonb[], $13::jsonb[], $14::timestamptz[], $15::text[], $16::uuid[], $17::text[], \
        $18::int[], $19::int[], $20::bigint[], $22::jsonb[], $23::text[], $24::int[]) \
        WITH ORDINALITY \
    AS x(id, title, description, task_type, priority, payload, max_retries, current_phase, \
        workflow, due_date, parent_task_id, tags, metadata, run_at, idempotency_key, plan_id, \
        plan_subtask_id, pending_deps, timeout_secs, delay_secs, retry_policy, \
        concurrency_key, concurrency_limit, ord) \
), ins AS ( \
    INSERT INTO tasks (id, title, description, task_type, priority, payload, max_retries, \
        current_phase, workflow, due_date, parent_task_id, tags, metadata, run_at, \
        idempotency_key, plan_id, plan_subtask_id, pending_deps, timeout_secs, delay_secs, \
        retry_policy, concurrency_key, concurrency_limit, created_at, updated_at) \
    SELECT x.id, x.title, x.description, x.task_type, x.priority, x.payload, x.max_retries, \
        x.current_phase, x.workflow, x.due_date, x.parent_task_id, \
        ARRAY(SELECT e.v FROM jsonb_array_elements_text(x.tags) WITH ORDINALITY AS e(v, i) \
              ORDER BY e.i), \
        x.metadata, \
        CASE WHEN x.pending_deps = 0 AND x.delay_secs > 0 \
            THEN greatest(x.run_at, now() + x.delay_secs * interval '1 second') \
            ELSE x.run_at END, \
        x.idempotency_key, x.plan_id, x.plan_subtask_id, x.pending_deps, x.timeout_secs, \
        x.delay_secs, x.retry_policy, x.concurrency_key, x.concurrency_limit, now(), now() \
    FROM input x ORDER BY x.ord \
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
    RETURNING id \
) \
SELECT ARRAY(SELECT id FROM ins) AS inserted, \
    (SELECT count(pg_notify(",
    channel_sql!(),
    ", $21::text)) WHERE $21::text IS NOT NULL) AS notified"
);

/// One task row to insert, in [`INSERT_TASKS`]'s column order.
#[derive(Debug, Default)]
pub(super) struct TaskRows {
    id: Vec<Uuid>,
    title: Vec<String>,
    description: Vec<String>,
    task_type: Vec<String>,
    priority: Vec<i32>,
    payload: Vec<Json>,
    max_retries: Vec<i64>,
    current_phase: Vec<String>,
    workflow: Vec<Option<Json>>,
    due_date: Vec<Option<Timestamp>>,
    parent_task_id: Vec<Option<Uuid>>,
    tags: Vec<Json>,
    metadata: Vec<Json>,
    run_at: Vec<Option<Timestamp>>,
    idempotency_key: Vec<Option<String>>,
    plan_id: Vec<Option<Uuid>>,
    plan_subtask_id: Vec<Option<String>>,
    pending_deps: Vec<i32>,
    timeout_secs: Vec<Option<i32>>,
    delay_secs: Vec<i64>,
    retry_policy: Vec<Option<Json>>,
    concurrency_key: Vec<Option<String>>,
    concurrency_limit: Vec<Option<i32>>,
}

impl TaskRows {
    pub fn len(&self) -> usize {
        self.id.len()
    }

    pub fn push(&mut self, id: TaskId, t: NewTask, plan: Option<(PlanId, String, usize)>) {
        self.max_retries.push(i64::from(t.retries()));
        self.retry_policy
            .push(t.retry_policy.and_then(|p| serde_json::to_value(p).ok()));
        self.id.push(id.0);
        self.title.push(t.title);
        self.description.push(t.description);
        self.task_type.push(t.task_type);
        self.priority.push(t.priority);
        self.payload.push(t.payload);
        self.current_phase.push(t.current_phase);
        self.workflow.push(t.workflow);
        self.due_date.push(t.due_date);
        self.parent_task_id.push(t.parent_task_id.map(|p| p.0));
        self.tags.push(Json::from(t.tags));
        self.metadata.push(t.metadata);
        self.run_at.push(t.run_at);
        self.idempotency_key.push(t.idempotency_key);
        let limit = t
            .concurrency_key
            .as_ref()
            .map(|_| t.concurrency_limit.unwrap_or(1));
        self.concurrency_limit
            .push(limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)));
        self.concurrency_key.push(t.concurrency_key);
        self.timeout_secs
            .push(t.timeout_secs.map(|s| i32::try_from(s).unwrap_or(i32::MAX)));
        self.delay_secs
            .push(i64::try_from(t.delay_secs).unwrap_or(i64::MAX));
        let (plan_id, subtask, pending) = match plan {
            Some((p, s, n)) => (Some(p.0), Some(s), i32::try_from(n).unwrap_or(i32::MAX)),
            None => (None, None, 0),
        };
        self.plan_id.push(plan_id);
        self.plan_subtask_id.push(subtask);
        self.pending_deps.push(pending);
    }

    /// Inserts the rows and returns the ids actually inserted.
    pub async fn insert(&self, conn: &mut PgConnection, note: Option<String>) -> R<Vec<Uuid>> {
        let row = sqlx::query(INSERT_TASKS)
            .bind(&self.id)
            .bind(&self.title)
            .bind(&self.description)
            .bind(&self.task_type)
            .bind(&self.priority)
            .bind(&self.payload)
            .bind(&self.max_retries)
            .bind(&self.current_phase)
            .bind(&self.workflow)
            .bind(&self.due_date)
            .bind(&self.parent_task_id)
            .bind(&self.tags)
            .bind(&self.metadata)
            .bind(&self.run_at)
            .bind(&self.idempotency_key)
            .bind(&self.plan_id)
            .bind(&self.plan_subtask_id)
            .bind(&self.pending_deps)
            .bind(&self.timeout_secs)
            .bind(&self.delay_secs)
            .bind(note)
            .bind(&self.retry_policy)
            .bind(&self.concurrency_key)
            .bind(&self.concurrency_limit)
            .fetch_one(conn)
            .await?;
        rows::get(&row, "inserted", "tasks")
    }
}

/// The advisory lock class of idempotency keys' buckets (`HIVE` in ASCII).
const KEY_LOCK_CLASS: i32 = 0x4849_5645;
/// How many buckets idempotency keys hash into for their locks.
const KEY_LOCK_BUCKETS: i64 = 4096;

impl PostgresStore {
    pub(super) async fn insert_tasks_once(&self, tasks: Vec<NewTask>) -> R<TasksInserted> {
        let mut ids = Vec::with_capacity(tasks.len());
        let mut first_of_key: HashMap<String, TaskId> = HashMap::new();
        let mut keyed = Vec::new();
        let mut batch = TaskRows::default();
        for t in tasks {
            if let Some(key) = &t.idempotency_key {
                // A key repeated within the batch names the batch's first task with it.
                if let Some(id) = first_of_key.get(key) {
                    ids.push(*id);
                    continue;
                }
                let id = TaskId::new();
                first_of_key.insert(key.clone(), id);
                keyed.push((key.clone(), id));
                ids.push(id);
                batch.push(id, t, None);
            } else {
                let id = TaskId::new();
                ids.push(id);
                batch.push(id, t, None);
            }
        }
        if keyed.is_empty() {
            let done = TasksInserted {
                ids,
                new_tasks: batch.len() as u64,
            };
            let note = self.notifier.tasks_inserted(&done).map(|n| payload(&n));
            let note = note.transpose()?;
            let mut conn = self.pool.acquire().await?;
            batch.insert(&mut conn, None).await?;
            drop(conn);
            self.publish(note.into_iter().collect()).await;
            return Ok(done);
        }
        // A task holding a key may be deleted between our insert and our read of it (and a
        // lock may still be lost, to a writer of those rows outside this path): tried
        // again, a few times, as a plan's submission is.
        let mut attempt = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let out = (self.insert_keyed(&mut tx, &batch, &keyed, ids.clone())).await;
            let failed = match out {
                Ok(Some(out)) => {
                    let (done, note) = end(tx, Ok(out)).await?;
                    self.publish(note.into_iter().collect()).await;
                    return Ok(done);
                }
                Ok(None) => {
                    Error::Contended("an idempotency key's task changed concurrently".into()).into()
                }
                Err(f) => f,
            };
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rolling back a keyed insert");
            }
            let again = attempt < super::RETRIES
                && (failed.is_retryable()
                    || matches!(&failed, crate::sql::Fail::Store(Error::Contended(_))));
            if !again {
                return Err(failed);
            }
            attempt += 1;
            let jitter = (Uuid::new_v4().as_u128() % 8) as u64;
            tokio::time::sleep(std::time::Duration::from_millis(
                4 * u64::from(attempt) + jitter,
            ))
            .await;
        }
    }

    /// One try of a batch with idempotency keys in `tx`: `None` when a key's task was
    /// deleted after it blocked ours (try again).
    async fn insert_keyed(
        &self,
        tx: &mut PgConnection,
        batch: &TaskRows,
        keyed: &[(String, TaskId)],
        mut ids: Vec<TaskId>,
    ) -> R<Option<(TasksInserted, Option<String>)>> {
        // The keys taken in one order by every batch: inserted in each batch's own order,
        // two batches holding each other's keys uncommitted would deadlock. By bucket, at
        // most KEY_LOCK_BUCKETS locks however large the batch (advisory locks share the
        // server's lock table), in a class of their own (the two-key form).
        let keys: Vec<&str> = keyed.iter().map(|(k, _)| k.as_str()).collect();
        sqlx::query(
            "SELECT count(pg_advisory_xact_lock($2, b)) FROM ( \
                 SELECT DISTINCT (hashtextextended(k, 0) & $3)::int AS b \
                 FROM unnest($1::text[]) k ORDER BY 1 \
             ) s",
        )
        .bind(keys)
        .bind(KEY_LOCK_CLASS)
        .bind(KEY_LOCK_BUCKETS - 1)
        .execute(&mut *tx)
        .await?;
        let inserted: HashSet<Uuid> = batch.insert(tx, None).await?.into_iter().collect();
        let lost: Vec<&(String, TaskId)> = keyed
            .iter()
            .filter(|(_, id)| !inserted.contains(&id.0))
            .collect();
        if !lost.is_empty() {
            let keys: Vec<&str> = lost.iter().map(|(k, _)| k.as_str()).collect();
            let found = sqlx::query(
                "SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
            let mut existing = HashMap::with_capacity(found.len());
            for row in &found {
                let key: String = rows::get(row, "idempotency_key", "tasks")?;
                existing.insert(key, TaskId(rows::get(row, "id", "tasks")?));
            }
            for (key, generated) in lost {
                let Some(id) = existing.get(key) else {
                    return Ok(None);
                };
                for slot in ids.iter_mut().filter(|i| *i == generated) {
                    *slot = *id;
                }
            }
        }
        let done = TasksInserted {
            ids,
            new_tasks: inserted.len() as u64,
        };
        let note = self.notifier.tasks_inserted(&done).map(|n| payload(&n));
        Ok(Some((done, note.transpose()?)))
    }

    pub(super) async fn read_task(&self, id: TaskId) -> R<Option<Task>> {
        let row = sqlx::query(concat!(select_tasks!(), "WHERE t.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::task).transpose()
    }

    pub(super) async fn read_tasks_by_id(&self, ids: &[TaskId]) -> R<Vec<Task>> {
        let ids: Vec<Uuid> = ids.iter().map(|t| t.0).collect();
        let found = sqlx::query(concat!(
            select_tasks!(),
            "WHERE t.id = ANY($1) ORDER BY t.seq"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::task).collect()
    }

    pub(super) async fn read_tasks(&self, f: &TaskFilter) -> R<Vec<Task>> {
        let found = sqlx::query(concat!(
            select_tasks!(),
            "WHERE ($1::text IS NULL OR t.status = $1::text) \
               AND ($2::text IS NULL OR t.task_type = $2::text) \
               AND ($3::uuid IS NULL OR t.plan_id = $3::uuid) \
               AND (NOT $4::bool OR (t.status = 'queued' AND t.pending_deps = 0 \
                    AND (t.run_at IS NULL OR t.run_at <= now()))) \
               AND ($6::timestamptz IS NULL OR t.updated_at <= $6::timestamptz) \
               AND ($7::uuid IS NULL OR t.id IN \
                    (SELECT d.task_id FROM task_dependencies d WHERE d.depends_on = $7::uuid)) \
             ORDER BY t.priority DESC, t.seq LIMIT $5::bigint"
        ))
        .bind(f.status.map(TaskStatus::as_str))
        .bind(f.task_type.as_deref())
        .bind(f.plan_id.map(|p| p.0))
        .bind(f.ready_only)
        .bind(f.limit.map(i64::from))
        .bind(f.updated_not_after)
        .bind(f.depending_on.map(|d| d.0))
        // Planned for the filters given: a generic plan cannot use an index for any of
        // them, and Postgres picks one once the custom plans' average cost (a large
        // history's listings) exceeds its own.
        .persistent(false)
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::task).collect()
    }

    pub(super) async fn count(&self, plan_id: Option<PlanId>) -> R<StatusCounts> {
        // Two statements: one taking `$1 IS NULL OR plan_id = $1` is planned once for both
        // uses, and a generic plan scans every task to count one plan's.
        let found = match plan_id {
            Some(plan) => sqlx::query(
                "SELECT status, count(*) AS n FROM tasks WHERE plan_id = $1 GROUP BY status",
            )
            .bind(plan.0),
            None => sqlx::query("SELECT status, count(*) AS n FROM tasks GROUP BY status"),
        }
        .fetch_all(&self.pool)
        .await?;
        let mut counts = StatusCounts::new();
        for row in &found {
            let n: i64 = rows::get(row, "n", "tasks")?;
            counts.insert(rows::task_status(row, "status")?, n.unsigned_abs());
        }
        Ok(counts)
    }

    /// A status change by the rules: locks the task, the dependents a failure or
    /// cancellation may cancel and the plans involved, replays, writes.
    pub(super) async fn set_status_once(
        &self,
        id: TaskId,
        change: &StatusChange,
    ) -> R<Option<StatusChanged>> {
        let mut tx = self.pool.begin().await?;
        let out: R<_> = async {
            let Some(row) = sqlx::query(concat!(
                "SELECT t.*, ",
                task_dependencies!(),
                ", t.id AS task_id, t.status AS task_status, now() AS now \
                 FROM tasks t WHERE t.id = $1 FOR UPDATE"
            ))
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(None);
            };
            let task = rows::task(&row)?;
            let at = server_now(&row)?;
            let mut view = Loaded::default();
            view.add_task(id, state_from_row(&row)?.1);
            if change.status.is_terminal() && change.status != TaskStatus::Completed {
                replay::load_cascade(&mut tx, &mut view, &[id]).await?;
            }
            if change.loads_dependencies(&task) {
                replay::load_dependencies(&mut tx, &mut view, &task).await?;
            }
            if let Some(plan) = task.plan_id.filter(|_| task.status.is_terminal()) {
                // Out of its plan's finished count: wait for a settle that may have read
                // the count with this task in it, then read the plan as it left it.
                sqlx::query("SELECT 1 FROM plans WHERE id = $1 FOR NO KEY UPDATE")
                    .bind(plan.0)
                    .execute(&mut *tx)
                    .await?;
            }
            replay::load_plans(&mut tx, &mut view, &[]).await?;
            let (outcome, written) =
                replay::replay(&mut tx, &self.notifier, &mut view, at, true, |ch| {
                    ch.change_status(&task, change)
                })
                .await?;
            let outcome = outcome?;
            let task = self
                .read_task_in(&mut tx, id)
                .await?
                .ok_or_else(|| Error::not_found("task", id))?;
            Ok(Some((outcome, written, task)))
        }
        .await;
        let Some((outcome, written, task)) = end(tx, out).await? else {
            return Ok(None);
        };
        self.after_commit(written).await?;
        Ok(Some(StatusChanged {
            previous: outcome.previous,
            task,
            cancelled_dependents: outcome.effects.cancelled,
            plan_transition: outcome.effects.plan_transition,
        }))
    }

    async fn read_task_in(&self, conn: &mut PgConnection, id: TaskId) -> R<Option<Task>> {
        let row = sqlx::query(concat!(select_tasks!(), "WHERE t.id = $1"))
            .bind(id.0)
            .fetch_optional(conn)
            .await?;
        row.as_ref().map(rows::task).transpose()
    }

    pub(super) async fn delete_once(&self, id: TaskId) -> R<bool> {
        let mut tx = self.pool.begin().await?;
        let out = self.delete_in(&mut tx, id).await;
        end(tx, out).await
    }

    /// Deletes a task the rules let go, counting its dependents down as if it had completed
    /// unless it had; the caller ends the transaction, also when the rules refused.
    async fn delete_in(&self, tx: &mut PgConnection, id: TaskId) -> R<bool> {
        let Some(row) = sqlx::query(concat!(select_tasks!(), "WHERE t.id = $1 FOR UPDATE"))
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let task = rows::task(&row)?;
        let check = sqlx::query(concat!(
            "SELECT (SELECT p.status FROM plans p WHERE p.id = $2) AS plan_status, \
                    count(*) FILTER (WHERE x.status NOT IN ",
            terminal_statuses!(),
            ") AS open_dependents, \
                    count(*) FILTER (WHERE x.status <> 'completed') AS not_completed \
             FROM task_dependencies d JOIN tasks x ON x.id = d.task_id WHERE d.depends_on = $1"
        ))
        .bind(id.0)
        .bind(task.plan_id.map(|p| p.0))
        .fetch_one(&mut *tx)
        .await?;
        let plan_status = rows::get::<Option<String>>(&check, "plan_status", "plans")?
            .map(|s| s.parse())
            .transpose()
            .map_err(|e: hive_models::Error| rows::corrupt("plans", e.to_string()))?;
        let count = |col| -> R<usize> {
            let n: i64 = rows::get(&check, col, "tasks")?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        };
        let dependents = hive_models::DependentsLeft {
            unfinished: count("open_dependents")?,
            not_completed: count("not_completed")?,
        };
        task.check_deletable(plan_status, dependents)?;
        let n: i64 = sqlx::query_scalar(concat!(
            "WITH gone AS (DELETE FROM tasks WHERE id = $1 RETURNING id, status), \
             unblocked AS ( \
                 UPDATE tasks t SET ",
            count_down!("1"),
            " FROM task_dependencies d, gone g \
                 WHERE d.depends_on = g.id AND t.id = d.task_id AND g.status <> 'completed' \
                   AND t.pending_deps > 0) \
             SELECT count(*) FROM gone"
        ))
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await?;
        Ok(n > 0)
    }

    pub(super) async fn prune_once(&self, p: &PruneParams, statuses: &[&str]) -> R<u64> {
        // No dependency rule to apply: only plan subtasks have dependents, and they are
        // pruned with their plan.
        let n: i64 = sqlx::query_scalar(concat!(
            "WITH old AS ( \
                 SELECT id FROM tasks \
                 WHERE status = ANY($1::text[]) AND plan_id IS NULL AND status IN ",
            terminal_statuses!(),
            "      AND updated_at < now() - $2::bigint * interval '1 microsecond' \
                 ORDER BY updated_at, id LIMIT $3::bigint \
                 FOR UPDATE SKIP LOCKED \
             ), gone AS ( \
                 DELETE FROM tasks WHERE id IN (SELECT id FROM old) RETURNING 1 \
             ) \
             SELECT count(*) FROM gone"
        ))
        .bind(statuses)
        .bind(micros(p.older_than))
        .bind(i64::from(p.limit))
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unsigned_abs())
    }

    pub(super) async fn read_subtask_ids(&self, ids: &[TaskId]) -> R<HashMap<TaskId, String>> {
        let ids: Vec<Uuid> = ids.iter().map(|t| t.0).collect();
        let found = sqlx::query(
            "SELECT id, plan_subtask_id FROM tasks \
             WHERE id = ANY($1) AND plan_subtask_id IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        found
            .iter()
            .map(|row| {
                Ok((
                    TaskId(rows::get(row, "id", "tasks")?),
                    rows::get(row, "plan_subtask_id", "tasks")?,
                ))
            })
            .collect()
    }

    pub(super) async fn deps_met(&self, ids: &[TaskId]) -> R<HashMap<TaskId, bool>> {
        let ids: Vec<Uuid> = ids.iter().map(|t| t.0).collect();
        let found = sqlx::query(
            "SELECT t.id, NOT EXISTS ( \
                 SELECT 1 FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
                 WHERE d.task_id = t.id AND x.status <> 'completed') AS met \
             FROM tasks t WHERE t.id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut met = HashMap::with_capacity(found.len());
        for row in &found {
            met.insert(
                TaskId(rows::get(row, "id", "tasks")?),
                rows::get(row, "met", "tasks")?,
            );
        }
        Ok(met)
    }
}
