//! Tasks: inserts, reads, status changes, deletes, and the dependency and plan rules a task
//! reaching a terminal status applies.

use std::collections::{HashMap, HashSet};

use hive_models::{
    ExecutionPlan, NewPlan, NewTask, PlanId, PlanStatus, RunId, RunStatus, TaskId, TaskStatus,
};
use sqlx::{QueryBuilder, Sqlite};

use super::db::{self, Cols, Conn, R, json_list, to_json, us};
use crate::memory::{merge_metadata, run_status_on_leave};
use crate::{
    Error, Notification, Notifier, PruneParams, StatusChange, StatusChanged, StatusCounts,
    TaskFilter,
};

/// SQLite refuses statements with more than 32766 bound parameters.
const MAX_BINDS: usize = 32766;
/// Bound parameters per row of [`insert_rows`].
const TASK_BINDS: usize = 20;
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
}

/// Multi-row inserts, chunked under the bind limit. Rows whose idempotency key exists are
/// skipped; the caller resolves their ids.
pub(super) async fn insert_rows(c: &mut Conn, rows: &[TaskRow], at: i64) -> R<()> {
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
                })
            })
            .collect::<R<Vec<_>>>()?;
        let mut b = QueryBuilder::<Sqlite>::new(
            "INSERT INTO tasks (id, title, description, task_type, priority, current_phase, \
             workflow, payload, due_date, max_retries, parent_task_id, tags, metadata, run_at, \
             idempotency_key, plan_id, plan_subtask_id, pending_deps, created_at, updated_at) ",
        );
        b.push_values(chunk.iter().zip(encoded), |mut s, (r, e)| {
            let n = &r.new;
            s.push_bind(r.id.to_string())
                .push_bind(n.title.clone())
                .push_bind(n.description.clone())
                .push_bind(n.task_type.clone())
                .push_bind(i64::from(n.priority))
                .push_bind(n.current_phase.clone())
                .push_bind(e.workflow)
                .push_bind(e.payload)
                .push_bind(n.due_date.map(us))
                .push_bind(i64::from(n.max_retries))
                .push_bind(n.parent_task_id.map(|p| p.to_string()))
                .push_bind(e.tags)
                .push_bind(e.metadata)
                .push_bind(n.run_at.map(us))
                .push_bind(n.idempotency_key.clone());
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
            s.push_bind(at).push_bind(at);
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

pub(super) async fn insert(c: &mut Conn, new: Vec<NewTask>) -> R<Vec<TaskId>> {
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
    if by_key.is_empty() {
        return Ok(ids);
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
    Ok(ids)
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

/// Closes a task's current run if it is still running.
pub(super) async fn close_run(
    c: &mut Conn,
    run: Option<RunId>,
    status: RunStatus,
    at: i64,
) -> R<()> {
    let Some(run) = run else { return Ok(()) };
    sqlx::query(
        "UPDATE runs SET status = ?1, completed_at = ?2, lease_expires_at = NULL \
         WHERE id = ?3 AND status = 'running'",
    )
    .bind(status.as_str())
    .bind(at)
    .bind(run.to_string())
    .execute(&mut *c)
    .await?;
    Ok(())
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
    let previous = task.status;
    let to = change.status;
    let requeue = change.requeue && to == TaskStatus::Queued && previous.can_requeue();
    if !requeue {
        previous.check_transition(to)?;
    }
    let mut fx = Effects::default();
    if previous != to {
        if previous.is_active() {
            close_run(c, task.current_run_id, run_status_on_leave(to), at).await?;
        }
        let pending: i64 = if requeue && previous.is_terminal() {
            // Back in the queue it waits again for every dependency not completed now.
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
                 WHERE d.task_id = ?1 AND x.status <> 'completed'",
            )
            .bind(id.to_string())
            .fetch_one(&mut *c)
            .await?
        } else {
            i64::from(task.pending_dependencies)
        };
        let sql = if to == TaskStatus::Queued {
            "UPDATE tasks SET status = ?1, updated_at = ?2, pending_deps = ?3, \
             assigned_worker = NULL, run_at = NULL WHERE id = ?4"
        } else {
            "UPDATE tasks SET status = ?1, updated_at = ?2, pending_deps = ?3 WHERE id = ?4"
        };
        sqlx::query(sql)
            .bind(to.as_str())
            .bind(at)
            .bind(pending)
            .bind(id.to_string())
            .execute(&mut *c)
            .await?;
        notes.push(n.task_status(id, to));
        if to.is_terminal() {
            let mut plans = PlanBook::default();
            fx = on_terminal(c, n, notes, &mut plans, id, to, task.plan_id, at).await?;
            plans.save(c, at).await?;
        }
    }
    if let Some(patch) = &change.metadata {
        let mut metadata = task.metadata.clone();
        merge_metadata(&mut metadata, patch);
        sqlx::query("UPDATE tasks SET metadata = ?1, updated_at = ?2 WHERE id = ?3")
            .bind(to_json("metadata", &metadata)?)
            .bind(at)
            .bind(id.to_string())
            .execute(&mut *c)
            .await?;
    }
    let task = db::fetch_task(c, id)
        .await?
        .ok_or_else(|| Error::not_found("task", id))?;
    Ok(Some(StatusChanged {
        previous,
        task,
        cancelled_dependents: fx.cancelled,
        plan_transition: fx.plan_transition,
    }))
}

pub(super) async fn delete(c: &mut Conn, id: TaskId) -> R<bool> {
    let Some(task) = db::fetch_task(c, id).await? else {
        return Ok(false);
    };
    let row = sqlx::query(
        "SELECT (SELECT p.status FROM plans p WHERE p.id = ?2) AS plan_status, \
                (SELECT COUNT(*) FROM task_dependencies d JOIN tasks x ON x.id = d.task_id \
                 WHERE d.depends_on = ?1 \
                   AND x.status NOT IN ('completed', 'failed', 'cancelled')) AS open_dependents",
    )
    .bind(id.to_string())
    .bind(task.plan_id.map(|p| p.to_string()))
    .fetch_one(&mut *c)
    .await?;
    let cols = Cols::new(&row, "tasks");
    let plan_status: Option<PlanStatus> = cols.parse_opt("plan_status")?;
    let open: i64 = cols.get("open_dependents")?;
    task.check_deletable(plan_status, usize::try_from(open).unwrap_or(usize::MAX))?;
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

pub(super) async fn prune(c: &mut Conn, p: &PruneParams) -> R<u64> {
    let at = db::db_now(c).await?;
    let cutoff = db::sub_us(at, p.older_than);
    let statuses = json_list(p.statuses.iter().map(|s| s.as_str()));
    let rows = sqlx::query(
        "SELECT id, status FROM tasks \
         WHERE status IN (SELECT value FROM json_each(?1)) AND updated_at < ?2 \
         ORDER BY updated_at, id LIMIT ?3",
    )
    .bind(statuses)
    .bind(cutoff)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *c)
    .await?;
    let mut victims = Vec::with_capacity(rows.len());
    let mut unfinished = Vec::new();
    for row in &rows {
        let cols = Cols::new(row, "tasks");
        let id: TaskId = cols.parse("id")?;
        let status: TaskStatus = cols.parse("status")?;
        if status != TaskStatus::Completed {
            unfinished.push(id);
        }
        victims.push(id);
    }
    if victims.is_empty() {
        return Ok(0);
    }
    if !unfinished.is_empty() {
        decrement_dependents(c, &unfinished).await?;
    }
    let deleted = sqlx::query("DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1))")
        .bind(json_list(&victims))
        .execute(&mut *c)
        .await?;
    Ok(deleted.rows_affected())
}

pub(super) async fn dependencies_met(c: &mut Conn, ids: &[TaskId]) -> R<HashMap<TaskId, bool>> {
    let rows = sqlx::query(
        "SELECT t.id, NOT EXISTS (\
             SELECT 1 FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
             WHERE d.task_id = t.id AND x.status <> 'completed') AS met \
         FROM tasks t WHERE t.id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(ids))
    .fetch_all(&mut *c)
    .await?;
    rows.iter()
        .map(|row| {
            let cols = Cols::new(row, "tasks");
            Ok((cols.parse("id")?, cols.get::<i64>("met")? != 0))
        })
        .collect()
}

/// What a task reaching a terminal status did beyond the task itself.
#[derive(Debug, Default)]
pub(super) struct Effects {
    pub cancelled: Vec<TaskId>,
    /// The last plan transition it caused.
    pub plan_transition: Option<(PlanId, PlanStatus)>,
}

/// Applies the dependency and plan rules after `id` reached the terminal `status`, in the
/// memory store's order: the task's own plan first, then its dependents (each cancelled
/// dependent counting for its plan). Plan changes stay in `plans` until it is saved.
#[allow(clippy::too_many_arguments)]
pub(super) async fn on_terminal(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    plans: &mut PlanBook,
    id: TaskId,
    status: TaskStatus,
    plan_id: Option<PlanId>,
    at: i64,
) -> R<Effects> {
    let mut fx = Effects::default();
    if let Some(pid) = plan_id
        && let Some(to) = plans.step(c, pid, status).await?
    {
        notes.push(n.plan_status(pid, to));
        fx.plan_transition = Some((pid, to));
    }
    if status == TaskStatus::Completed {
        for d in decrement_dependents(c, &[id]).await? {
            notes.push(n.task_ready(d));
        }
        return Ok(fx);
    }
    for d in cascade_cancel(c, id, at).await? {
        notes.push(n.task_status(d.task, TaskStatus::Cancelled));
        fx.cancelled.push(d.task);
        if let Some(pid) = d.plan
            && let Some(to) = plans.step(c, pid, TaskStatus::Cancelled).await?
        {
            notes.push(n.plan_status(pid, to));
            fx.plan_transition = Some((pid, to));
        }
    }
    Ok(fx)
}

/// Each dependent of the given tasks waits for one dependency fewer per task listed, and
/// the queued ones left waiting for none are returned (now claimable unless delayed). One
/// statement; the `depends_on` index finds the dependents, so the cost follows their number.
pub(super) async fn decrement_dependents(c: &mut Conn, done: &[TaskId]) -> R<Vec<TaskId>> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "UPDATE tasks SET pending_deps = MAX(pending_deps - (\
             SELECT COUNT(*) FROM task_dependencies d \
             WHERE d.task_id = tasks.id AND d.depends_on IN (SELECT value FROM json_each(?1))), 0) \
         WHERE id IN (SELECT d.task_id FROM task_dependencies d \
                      WHERE d.depends_on IN (SELECT value FROM json_each(?1))) \
         RETURNING id, pending_deps = 0 AND status = 'queued' AS ready",
    )
    .bind(json_list(done))
    .fetch_all(&mut *c)
    .await?;
    let mut ready = Vec::new();
    for row in &rows {
        let cols = Cols::new(row, "tasks");
        if cols.get::<i64>("ready")? != 0 {
            ready.push(cols.parse("id")?);
        }
    }
    Ok(ready)
}

/// A dependent a failure or cancellation cancelled.
#[derive(Debug)]
pub(super) struct Cancelled {
    pub task: TaskId,
    /// The run it held, closed as cancelled if it was running.
    pub run: Option<RunId>,
    pub plan: Option<PlanId>,
}

/// Cancels every transitive dependent of `root` that is not terminal (closing its running
/// run), walking breadth-first one level per query in the memory store's order: each
/// task's dependents in insertion order, never through a terminal task. Returns them in
/// that order.
pub(super) async fn cascade_cancel(c: &mut Conn, root: TaskId, at: i64) -> R<Vec<Cancelled>> {
    let mut seen: HashSet<TaskId> = HashSet::new();
    let mut cancelled: Vec<Cancelled> = Vec::new();
    let mut level = vec![root];
    while !level.is_empty() {
        let rows = sqlx::query(
            "SELECT d.depends_on AS parent, t.id, t.status, t.current_run_id, t.plan_id \
             FROM task_dependencies d JOIN tasks t ON t.id = d.task_id \
             WHERE d.depends_on IN (SELECT value FROM json_each(?1)) ORDER BY t.seq",
        )
        .bind(json_list(&level))
        .fetch_all(&mut *c)
        .await?;
        let mut children: HashMap<TaskId, Vec<(TaskStatus, Cancelled)>> = HashMap::new();
        for row in &rows {
            let cols = Cols::new(row, "tasks");
            children.entry(cols.parse("parent")?).or_default().push((
                cols.parse("status")?,
                Cancelled {
                    task: cols.parse("id")?,
                    run: cols.parse_opt("current_run_id")?,
                    plan: cols.parse_opt("plan_id")?,
                },
            ));
        }
        let mut next = Vec::new();
        for parent in &level {
            for (status, child) in children.remove(parent).unwrap_or_default() {
                if !seen.insert(child.task) || status.is_terminal() {
                    continue;
                }
                next.push(child.task);
                cancelled.push(child);
            }
        }
        level = next;
    }
    if cancelled.is_empty() {
        return Ok(cancelled);
    }
    sqlx::query(
        "UPDATE runs SET status = 'cancelled', completed_at = ?1, lease_expires_at = NULL \
         WHERE status = 'running' AND id IN (SELECT value FROM json_each(?2))",
    )
    .bind(at)
    .bind(json_list(cancelled.iter().filter_map(|d| d.run)))
    .execute(&mut *c)
    .await?;
    sqlx::query(
        "UPDATE tasks SET status = 'cancelled', updated_at = ?1 \
         WHERE id IN (SELECT value FROM json_each(?2))",
    )
    .bind(at)
    .bind(json_list(cancelled.iter().map(|d| d.task)))
    .execute(&mut *c)
    .await?;
    Ok(cancelled)
}

/// The columns [`PlanBook`] reads.
macro_rules! plan_state_sql {
    () => {
        "SELECT id, status, total_subtasks, completed_subtasks, failed_subtasks, \
         cancelled_subtasks FROM plans"
    };
}

/// Plans a transaction changes, read once, changed in memory by the models' own plan rules
/// and written back in one statement by [`PlanBook::save`]. Only status and counters are
/// loaded: a plan's subtasks can be large and the rules never need them.
#[derive(Debug, Default)]
pub(super) struct PlanBook {
    plans: HashMap<PlanId, ExecutionPlan>,
    touched: HashSet<PlanId>,
}

impl PlanBook {
    /// Reads the plans not read yet, in one query.
    pub async fn load(&mut self, c: &mut Conn, ids: impl IntoIterator<Item = PlanId>) -> R<()> {
        let missing: HashSet<PlanId> = ids
            .into_iter()
            .filter(|id| !self.plans.contains_key(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = sqlx::query(concat!(
            plan_state_sql!(),
            " WHERE id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(json_list(&missing))
        .fetch_all(&mut *c)
        .await?;
        for row in &rows {
            let cols = Cols::new(row, "plans");
            let id: PlanId = cols.parse("id")?;
            let mut plan = ExecutionPlan::from_new(
                id,
                NewPlan {
                    title: String::new(),
                    description: String::new(),
                    parent_task_id: None,
                    subtasks: Vec::new(),
                },
                chrono::DateTime::UNIX_EPOCH,
            );
            plan.status = cols.parse("status")?;
            plan.total_subtasks = cols.u32("total_subtasks")?;
            plan.completed_subtasks = cols.u32("completed_subtasks")?;
            plan.failed_subtasks = cols.u32("failed_subtasks")?;
            plan.cancelled_subtasks = cols.u32("cancelled_subtasks")?;
            self.plans.insert(id, plan);
        }
        Ok(())
    }

    /// The plan rules after one of the plan's tasks reached `status`, as the memory store's
    /// `update_plan`: count it, then move the plan if the models say so. `None` for an
    /// unknown plan or no move.
    pub async fn step(
        &mut self,
        c: &mut Conn,
        pid: PlanId,
        status: TaskStatus,
    ) -> R<Option<PlanStatus>> {
        self.load(c, [pid]).await?;
        let Some(plan) = self.plans.get_mut(&pid) else {
            return Ok(None);
        };
        self.touched.insert(pid);
        match status {
            TaskStatus::Completed => plan.increment_completed(),
            TaskStatus::Failed => plan.increment_failed(),
            TaskStatus::Cancelled => plan.increment_cancelled(),
            _ => {}
        }
        let Some(to) = plan.status_after(status) else {
            return Ok(None);
        };
        plan.status = to;
        Ok(Some(to))
    }

    /// Writes every plan a step touched (its `updated_at` too, as a step always sets it).
    pub async fn save(&mut self, c: &mut Conn, at: i64) -> R<()> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let rows: Vec<serde_json::Value> = self
            .touched
            .drain()
            .filter_map(|id| self.plans.get(&id))
            .map(|p| {
                serde_json::json!([
                    p.id.to_string(),
                    p.status.as_str(),
                    p.completed_subtasks,
                    p.failed_subtasks,
                    p.cancelled_subtasks
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
        Ok(())
    }
}
