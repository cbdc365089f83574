//! The consequences of task status changes, worked out in Rust and written in one statement.
//!
//! A batch (finishing runs, reaping leases) must behave exactly as if its items were applied
//! one after another: an earlier failure may cancel a task whose run a later outcome
//! finishes, plan counters move in order. So the transaction first locks and reads the rows
//! the batch can touch (its tasks and runs, the dependents a failure could cancel, the
//! plans), replays the batch against that snapshot here, and then writes every resulting
//! change — runs, tasks, dependents' counters, plans, notifications — with one
//! [`APPLY`] statement. Cost stays proportional to the rows touched: dependents are found
//! through the `depends_on` index, never by scanning a plan.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::DurationRound;
use hive_models::{
    ExecutionPlan, Json, NewPlan, PlanId, PlanStatus, RetryPolicy, RunId, RunStatus, TaskId,
    TaskStatus, Timestamp,
};
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::{Fail, rows};
use crate::{Finished, Notification, Notifier};

/// What the batch knows about one locked task.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub status: TaskStatus,
    pub seq: i64,
    pub current_run: Option<RunId>,
    /// Whether `current_run` may still be running. Exact once a locking read saw that run
    /// ([`Changes::set_running`]); otherwise assumed while there is a current run, which is
    /// safe: closing a run only changes it if it is still running when written.
    pub run_running: bool,
    pub plan_id: Option<PlanId>,
    pub attempts: u32,
    pub max_retries: u32,
}

impl Node {
    /// Reads the columns every locking query of this module selects.
    pub fn from_row(row: &PgRow) -> Result<(TaskId, Node), Fail> {
        const T: &str = "tasks";
        let id = TaskId(rows::get(row, "task_id", T)?);
        let current_run = rows::get::<Option<Uuid>>(row, "current_run_id", T)?.map(RunId);
        let node = Node {
            status: rows::task_status(row, "task_status")?,
            seq: rows::get(row, "seq", T)?,
            current_run,
            run_running: current_run.is_some(),
            plan_id: rows::get::<Option<Uuid>>(row, "plan_id", T)?.map(PlanId),
            attempts: rows::count(row, "attempts", T)?,
            max_retries: rows::big_count(row, "max_retries", T)?,
        };
        Ok((id, node))
    }
}

/// A locked plan's status and counters, as a model without its subtasks (reading those
/// would make every completion cost the size of its plan), so the model's own rules apply.
#[derive(Debug, Clone)]
struct PlanState {
    plan: ExecutionPlan,
    /// A task of the plan reached a terminal status: write the plan back (and stamp it).
    touched: bool,
}

/// A change to one task; every batch change sets the status.
#[derive(Debug)]
struct TaskPatch {
    id: TaskId,
    status: TaskStatus,
    result: Option<Option<Json>>,
    error: Option<String>,
    /// Back to the queue: the worker is cleared and `run_at` set to this.
    requeue: Option<Option<Timestamp>>,
    attempts_delta: i32,
}

/// Closing a running run.
#[derive(Debug)]
pub(super) struct RunPatch {
    pub id: RunId,
    pub status: RunStatus,
    pub result: Option<Option<Json>>,
    pub error: Option<Option<String>>,
    pub log: Option<Option<String>>,
}

impl RunPatch {
    pub fn close(id: RunId, status: RunStatus) -> Self {
        RunPatch {
            id,
            status,
            result: None,
            error: None,
            log: None,
        }
    }
}

/// What a terminal change did beyond the task itself.
#[derive(Debug, Default)]
pub(super) struct Effects {
    pub cancelled: Vec<TaskId>,
    pub plan_transition: Option<(PlanId, PlanStatus)>,
}

/// The batch being replayed: the locked state, and the changes to write.
#[derive(Debug)]
pub(super) struct Changes<'n> {
    notifier: &'n Notifier,
    /// The transaction's `now()`; every timestamp the batch writes derives from it.
    pub at: Timestamp,
    nodes: HashMap<TaskId, Node>,
    /// Dependents of the tasks a failure may cancel, in insertion order.
    children: HashMap<TaskId, Vec<TaskId>>,
    plans: HashMap<PlanId, PlanState>,
    tasks: Vec<TaskPatch>,
    task_index: HashMap<TaskId, usize>,
    runs: Vec<RunPatch>,
    completed: Vec<TaskId>,
    pub notes: Vec<Notification>,
}

/// The dependency edges below the tasks in `$1` through which a failure cancels: the
/// transitive dependents, not continuing past terminal ones.
const CASCADE: &str = concat!(
    "WITH RECURSIVE walk(parent, child) AS ( \
         SELECT d.depends_on, d.task_id FROM task_dependencies d WHERE d.depends_on = ANY($1) \
         UNION \
         SELECT d.depends_on, d.task_id FROM walk w \
         JOIN tasks x ON x.id = w.child AND x.status NOT IN ",
    terminal_statuses!(),
    " JOIN task_dependencies d ON d.depends_on = w.child \
     ) \
     SELECT parent, child FROM walk"
);

/// Locks and reads tasks by id. A statement of its own rather than a join with the walk
/// above: the walk's size is unknown to the planner, which may then scan all tasks.
const LOCK_TASKS: &str = "SELECT t.id AS task_id, t.status AS task_status, t.seq, \
     t.current_run_id, t.plan_id, t.attempts, t.max_retries \
     FROM tasks t WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE";

const LOCK_PLANS: &str = "SELECT id, status, total_subtasks, completed_subtasks, failed_subtasks, \
     cancelled_subtasks \
     FROM plans WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Writes a batch: closes runs, updates tasks (and the dependents of completed tasks),
/// plans, and sends the notifications, which Postgres delivers on commit. Returns the
/// dependents left waiting for nothing, announced as `task_ready` when `$26` is true.
const APPLY: &str = concat!(
    "WITH run_in AS ( \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::jsonb[], $5::bool[], \
                         $6::text[], $7::bool[], $8::text[]) \
        AS x(id, status, set_result, result, set_error, error, set_log, log) \
), run_upd AS ( \
    UPDATE runs r SET status = x.status, completed_at = now(), lease_expires_at = NULL, \
        result_data = CASE WHEN x.set_result THEN x.result ELSE r.result_data END, \
        error_message = CASE WHEN x.set_error THEN x.error ELSE r.error_message END, \
        output_log = CASE WHEN x.set_log THEN x.log ELSE r.output_log END \
    FROM run_in x WHERE r.id = x.id AND r.id = ANY($1::uuid[]) AND r.status = 'running' \
    RETURNING r.id \
), dec AS ( \
    SELECT d.task_id AS id, count(*)::int AS n FROM task_dependencies d \
    WHERE d.depends_on = ANY($18::uuid[]) GROUP BY d.task_id \
), task_in AS ( \
    SELECT * FROM unnest($9::uuid[], $10::text[], $11::bool[], $12::jsonb[], $13::bool[], \
                         $14::text[], $15::bool[], $16::timestamptz[], $17::int[]) \
        AS x(id, status, set_result, result, set_error, error, requeue, run_at, attempts_delta) \
), task_upd AS ( \
    UPDATE tasks t SET status = x.status, updated_at = now(), \
        result = CASE WHEN x.set_result THEN x.result ELSE t.result END, \
        last_error = CASE WHEN x.set_error THEN x.error ELSE t.last_error END, \
        assigned_worker = CASE WHEN x.requeue THEN NULL ELSE t.assigned_worker END, \
        run_at = CASE WHEN x.requeue THEN x.run_at ELSE t.run_at END, \
        attempts = greatest(t.attempts + x.attempts_delta, 0), \
        pending_deps = greatest(t.pending_deps - coalesce((SELECT n FROM dec WHERE dec.id = t.id), 0), 0) \
    FROM task_in x WHERE t.id = x.id AND t.id = ANY($9::uuid[]) \
    RETURNING t.id \
), dep_upd AS ( \
    UPDATE tasks t SET pending_deps = greatest(t.pending_deps - dec.n, 0) \
    FROM dec WHERE t.id = dec.id AND NOT (t.id = ANY($9::uuid[])) \
    RETURNING t.id, t.pending_deps = 0 AND t.status = 'queued' AS ready \
), freed AS ( \
    SELECT id FROM dep_upd WHERE ready \
), plan_in AS ( \
    SELECT * FROM unnest($19::uuid[], $20::text[], $21::bigint[], $22::bigint[], \
                         $23::bigint[]) \
        AS x(id, status, completed, failed, cancelled) \
), plan_upd AS ( \
    UPDATE plans p SET status = x.status, completed_subtasks = x.completed, \
        failed_subtasks = x.failed, cancelled_subtasks = x.cancelled, updated_at = now() \
    FROM plan_in x WHERE p.id = x.id AND p.id = ANY($19::uuid[]) \
    RETURNING p.id \
) \
SELECT (SELECT count(*) FROM run_upd) AS runs, (SELECT count(*) FROM task_upd) AS tasks, \
       (SELECT count(*) FROM dep_upd) AS dependents, (SELECT count(*) FROM plan_upd) AS plans, \
       (SELECT count(pg_notify('hive_events:' || left(current_schema(), 50), n)) FROM unnest($24::text[]) AS n) AS notified, \
       (",
    notify_rows!(
        "SELECT id FROM freed WHERE $26::bool",
        "json_build_object('origin', $25::uuid, 'kind', 'task_ready', 'task_id', x.id)"
    ),
    ") AS ready_notified, \
       ARRAY(SELECT id FROM freed) AS ready"
);

/// `at + d`, kept within the range Postgres timestamps hold and at microsecond precision
/// (what the database stores, so reports equal the rows).
pub(super) fn after(at: Timestamp, d: std::time::Duration) -> Timestamp {
    let d = chrono::Duration::from_std(d)
        .unwrap_or(chrono::Duration::MAX)
        .min(chrono::Duration::days(super::MAX_DAYS));
    let t = at.checked_add_signed(d).unwrap_or(at);
    t.duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or(t)
}

impl<'n> Changes<'n> {
    pub fn new(notifier: &'n Notifier, at: Timestamp) -> Self {
        Changes {
            notifier,
            at,
            nodes: HashMap::new(),
            children: HashMap::new(),
            plans: HashMap::new(),
            tasks: Vec::new(),
            task_index: HashMap::new(),
            runs: Vec::new(),
            completed: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn add_node(&mut self, id: TaskId, node: Node) {
        self.nodes.entry(id).or_insert(node);
    }

    pub fn node(&self, id: TaskId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Whether `run_id` is the task's current running run (the fence of every finish).
    pub fn is_live(&self, task_id: TaskId, run_id: RunId) -> bool {
        self.nodes
            .get(&task_id)
            .is_some_and(|n| n.current_run == Some(run_id) && n.run_running)
    }

    /// Marks a task's current run as running, from a row that read the run.
    pub fn set_running(&mut self, task_id: TaskId, run_id: RunId, running: bool) {
        if let Some(n) = self.nodes.get_mut(&task_id)
            && n.current_run == Some(run_id)
        {
            n.run_running = running;
        }
    }

    /// Loads (and locks) the dependents that failures of `roots` may cancel.
    pub async fn load_cascade(
        &mut self,
        conn: &mut PgConnection,
        roots: &[TaskId],
    ) -> Result<(), Fail> {
        if roots.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = roots.iter().map(|t| t.0).collect();
        let walked = sqlx::query(CASCADE)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        if walked.is_empty() {
            return Ok(());
        }
        let mut pairs = Vec::with_capacity(walked.len());
        for row in &walked {
            let parent = TaskId(rows::get(row, "parent", "task_dependencies")?);
            let child = TaskId(rows::get(row, "child", "task_dependencies")?);
            pairs.push((parent, child));
        }
        let mut children: Vec<Uuid> = pairs.iter().map(|(_, c)| c.0).collect();
        children.sort();
        children.dedup();
        let locked = sqlx::query(LOCK_TASKS)
            .bind(&children)
            .fetch_all(&mut *conn)
            .await?;
        for row in &locked {
            // Whether its run still runs is left to the write (see `Node::run_running`):
            // reading the run here could see a version older than the locked task row.
            let (id, node) = Node::from_row(row)?;
            self.add_node(id, node);
        }
        let mut edges: Vec<(TaskId, TaskId, i64)> = pairs
            .into_iter()
            .filter_map(|(p, c)| self.nodes.get(&c).map(|n| (p, c, n.seq)))
            .collect();
        // Dependents in insertion order, as the cancellation walk visits them.
        edges.sort_by_key(|(parent, _, seq)| (*parent, *seq));
        edges.dedup();
        for (parent, child, _) in edges {
            self.children.entry(parent).or_default().push(child);
        }
        Ok(())
    }

    /// Loads (and locks) the plans of every task loaded so far: the tasks a batch may
    /// finish or cancel.
    pub async fn load_plans(&mut self, conn: &mut PgConnection) -> Result<(), Fail> {
        let plans: Vec<PlanId> = self.nodes.values().filter_map(|n| n.plan_id).collect();
        self.load_plan_ids(conn, &plans).await
    }

    /// Loads (and locks, in id order) plans not loaded yet.
    pub async fn load_plan_ids(
        &mut self,
        conn: &mut PgConnection,
        plans: &[PlanId],
    ) -> Result<(), Fail> {
        let mut ids: Vec<Uuid> = plans
            .iter()
            .filter(|p| !self.plans.contains_key(p))
            .map(|p| p.0)
            .collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let found = sqlx::query(LOCK_PLANS).bind(&ids).fetch_all(conn).await?;
        for row in &found {
            const P: &str = "plans";
            let id = PlanId(rows::get(row, "id", P)?);
            let mut plan = ExecutionPlan::from_new(
                id,
                NewPlan {
                    title: String::new(),
                    description: String::new(),
                    parent_task_id: None,
                    subtasks: Vec::new(),
                },
                self.at,
            );
            plan.status = rows::plan_status(row, "status")?;
            plan.total_subtasks = rows::big_count(row, "total_subtasks", P)?;
            plan.completed_subtasks = rows::big_count(row, "completed_subtasks", P)?;
            plan.failed_subtasks = rows::big_count(row, "failed_subtasks", P)?;
            plan.cancelled_subtasks = rows::big_count(row, "cancelled_subtasks", P)?;
            let state = PlanState {
                plan,
                touched: false,
            };
            self.plans.insert(id, state);
        }
        Ok(())
    }

    /// Cancels a loaded plan, counting `cancelled` more cancelled subtasks.
    pub fn cancel_plan(&mut self, id: PlanId, cancelled: usize) {
        if let Some(p) = self.plans.get_mut(&id) {
            p.plan.status = PlanStatus::Cancelled;
            let n = u32::try_from(cancelled).unwrap_or(u32::MAX);
            p.plan.cancelled_subtasks = p.plan.cancelled_subtasks.saturating_add(n);
            p.touched = true;
        }
    }

    fn patch(&mut self, id: TaskId) -> &mut TaskPatch {
        let status = self.nodes.get(&id).map_or(TaskStatus::Queued, |n| n.status);
        let i = *self.task_index.entry(id).or_insert_with(|| {
            self.tasks.push(TaskPatch {
                id,
                status,
                result: None,
                error: None,
                requeue: None,
                attempts_delta: 0,
            });
            self.tasks.len() - 1
        });
        &mut self.tasks[i]
    }

    /// Sets a task's status, in the batch's view and in what will be written.
    pub fn set_status(&mut self, id: TaskId, status: TaskStatus) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.status = status;
        }
        self.patch(id).status = status;
    }

    /// Records a status the caller writes itself (the task `set_task_status` updates).
    pub fn note_status(&mut self, id: TaskId, status: TaskStatus) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.status = status;
            n.run_running = false;
        }
    }

    pub fn set_result(&mut self, id: TaskId, result: Option<Json>) {
        self.patch(id).result = Some(result);
    }

    /// Back to the queue, no worker, claimable from `run_at`.
    pub fn requeue(&mut self, id: TaskId, run_at: Option<Timestamp>) {
        self.set_status(id, TaskStatus::Queued);
        self.patch(id).requeue = Some(run_at);
    }

    pub fn add_attempts(&mut self, id: TaskId, delta: i32) {
        self.patch(id).attempts_delta += delta;
    }

    /// Closes the task's current run if it is running.
    pub fn close_run(&mut self, task_id: TaskId, patch: impl FnOnce(RunId) -> RunPatch) {
        let Some(node) = self.nodes.get_mut(&task_id) else {
            return;
        };
        let Some(run_id) = node.current_run.filter(|_| node.run_running) else {
            return;
        };
        node.run_running = false;
        self.runs.push(patch(run_id));
    }

    /// Closes a run the caller knows is running, whether or not the batch read it.
    pub fn close_known_run(&mut self, patch: RunPatch) {
        self.runs.push(patch);
    }

    pub fn note(&mut self, n: Notification) {
        self.notes.push(n);
    }

    /// Applies the dependency and plan rules after `id` reached a terminal status.
    pub fn on_terminal(&mut self, id: TaskId) -> Effects {
        let mut fx = Effects::default();
        let Some(node) = self.nodes.get(&id) else {
            return fx;
        };
        let status = node.status;
        if let Some(pid) = node.plan_id {
            // The task's own plan update counts first, so a failure's cancelled
            // descendants find the plan failed already.
            self.update_plan(pid, status, &mut fx);
        }
        if status == TaskStatus::Completed {
            // Dependents' counters drop in the write statement, through the depends_on index.
            self.completed.push(id);
            return fx;
        }
        let mut queue: VecDeque<TaskId> =
            self.children.get(&id).cloned().unwrap_or_default().into();
        let mut seen = HashSet::new();
        while let Some(d) = queue.pop_front() {
            if !seen.insert(d) {
                continue;
            }
            let Some(n) = self.nodes.get(&d) else {
                continue;
            };
            if n.status.is_terminal() {
                continue;
            }
            let plan_id = n.plan_id;
            self.close_run(d, |r| RunPatch::close(r, RunStatus::Cancelled));
            self.set_status(d, TaskStatus::Cancelled);
            self.notes
                .push(self.notifier.task_status(d, TaskStatus::Cancelled));
            fx.cancelled.push(d);
            if let Some(pid) = plan_id {
                self.update_plan(pid, TaskStatus::Cancelled, &mut fx);
            }
            queue.extend(self.children.get(&d).cloned().unwrap_or_default());
        }
        fx
    }

    /// Plan counters and status after one of its tasks reached `status`; a transition is
    /// announced and recorded in `fx` (the last one wins, as in the memory store).
    fn update_plan(&mut self, pid: PlanId, status: TaskStatus, fx: &mut Effects) {
        let Some(state) = self.plans.get_mut(&pid) else {
            return;
        };
        state.touched = true;
        let plan = &mut state.plan;
        match status {
            TaskStatus::Completed => plan.increment_completed(),
            TaskStatus::Failed => plan.increment_failed(),
            TaskStatus::Cancelled => plan.increment_cancelled(),
            _ => {}
        }
        if let Some(to) = plan.status_after(status) {
            plan.status = to;
            self.notes.push(self.notifier.plan_status(pid, to));
            fx.plan_transition = Some((pid, to));
        }
    }

    /// Fails or requeues a task after its run failed or timed out.
    pub fn fail_attempt(
        &mut self,
        id: TaskId,
        error: &str,
        retry: Option<RetryPolicy>,
    ) -> (Finished, Effects) {
        let Some(node) = self.nodes.get(&id) else {
            return (Finished::Stale, Effects::default());
        };
        let (attempts, max_retries) = (node.attempts, node.max_retries);
        self.patch(id).error = Some(error.to_owned());
        match retry {
            Some(policy) if attempts <= max_retries => {
                let run_at = after(self.at, policy.backoff(attempts));
                self.requeue(id, Some(run_at));
                self.notes
                    .push(self.notifier.task_status(id, TaskStatus::Queued));
                (Finished::Retrying { run_at }, Effects::default())
            }
            _ => {
                self.set_status(id, TaskStatus::Failed);
                self.notes
                    .push(self.notifier.task_status(id, TaskStatus::Failed));
                let fx = self.on_terminal(id);
                (Finished::Failed, fx)
            }
        }
    }

    /// Whether a failure of this task now would fail it for good (and so may cancel
    /// dependents): no retry, or no retries left.
    pub fn fails_for_good(&self, id: TaskId, retry: Option<RetryPolicy>) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| retry.is_none() || n.attempts > n.max_retries)
    }

    /// Writes every change in one statement. Nothing to write costs no round trip.
    pub async fn apply(self, conn: &mut PgConnection) -> Result<(), Fail> {
        self.apply_announcing(conn, true).await.map(drop)
    }

    /// [`Changes::apply`], returning the dependents made ready; they are announced with
    /// `task_ready` notifications only when `announce` (a caller that goes on to claim in
    /// the same transaction announces those it did not take).
    pub async fn apply_announcing(
        self,
        conn: &mut PgConnection,
        announce: bool,
    ) -> Result<Vec<TaskId>, Fail> {
        // Only plans a change counted against are written; locking alone changes nothing.
        let mut touched_plans: Vec<(PlanId, PlanState)> =
            self.plans.into_iter().filter(|(_, p)| p.touched).collect();
        touched_plans.sort_by_key(|(id, _)| *id);
        if self.runs.is_empty()
            && self.tasks.is_empty()
            && touched_plans.is_empty()
            && self.completed.is_empty()
            && self.notes.is_empty()
        {
            return Ok(Vec::new());
        }
        let origin = self.notifier.origin();
        let payloads = super::listen::encode(&self.notes);

        let mut r_id = Vec::with_capacity(self.runs.len());
        let mut r_status = Vec::with_capacity(self.runs.len());
        let mut r_set_result = Vec::with_capacity(self.runs.len());
        let mut r_result: Vec<Option<Json>> = Vec::with_capacity(self.runs.len());
        let mut r_set_error = Vec::with_capacity(self.runs.len());
        let mut r_error: Vec<Option<String>> = Vec::with_capacity(self.runs.len());
        let mut r_set_log = Vec::with_capacity(self.runs.len());
        let mut r_log: Vec<Option<String>> = Vec::with_capacity(self.runs.len());
        for r in self.runs {
            r_id.push(r.id.0);
            r_status.push(r.status.as_str());
            r_set_result.push(r.result.is_some());
            r_result.push(r.result.flatten());
            r_set_error.push(r.error.is_some());
            r_error.push(r.error.flatten());
            r_set_log.push(r.log.is_some());
            r_log.push(r.log.flatten());
        }

        let n = self.tasks.len();
        let mut t_id = Vec::with_capacity(n);
        let mut t_status = Vec::with_capacity(n);
        let mut t_set_result = Vec::with_capacity(n);
        let mut t_result: Vec<Option<Json>> = Vec::with_capacity(n);
        let mut t_set_error = Vec::with_capacity(n);
        let mut t_error: Vec<Option<String>> = Vec::with_capacity(n);
        let mut t_requeue = Vec::with_capacity(n);
        let mut t_run_at: Vec<Option<Timestamp>> = Vec::with_capacity(n);
        let mut t_attempts = Vec::with_capacity(n);
        for t in self.tasks {
            t_id.push(t.id.0);
            t_status.push(t.status.as_str());
            t_set_result.push(t.result.is_some());
            t_result.push(t.result.flatten());
            t_set_error.push(t.error.is_some());
            t_error.push(t.error);
            t_requeue.push(t.requeue.is_some());
            t_run_at.push(t.requeue.flatten());
            t_attempts.push(t.attempts_delta);
        }
        let completed: Vec<Uuid> = self.completed.iter().map(|t| t.0).collect();

        let mut p_id = Vec::new();
        let mut p_status = Vec::new();
        let mut p_completed = Vec::new();
        let mut p_failed = Vec::new();
        let mut p_cancelled = Vec::new();
        for (id, p) in touched_plans {
            p_id.push(id.0);
            p_status.push(p.plan.status.as_str());
            p_completed.push(i64::from(p.plan.completed_subtasks));
            p_failed.push(i64::from(p.plan.failed_subtasks));
            p_cancelled.push(i64::from(p.plan.cancelled_subtasks));
        }

        let row = sqlx::query(APPLY)
            .bind(r_id)
            .bind(r_status)
            .bind(r_set_result)
            .bind(r_result)
            .bind(r_set_error)
            .bind(r_error)
            .bind(r_set_log)
            .bind(r_log)
            .bind(t_id)
            .bind(t_status)
            .bind(t_set_result)
            .bind(t_result)
            .bind(t_set_error)
            .bind(t_error)
            .bind(t_requeue)
            .bind(t_run_at)
            .bind(t_attempts)
            .bind(completed)
            .bind(p_id)
            .bind(p_status)
            .bind(p_completed)
            .bind(p_failed)
            .bind(p_cancelled)
            .bind(payloads)
            .bind(origin)
            .bind(announce)
            .fetch_one(conn)
            .await?;
        let ready: Vec<Uuid> = rows::get(&row, "ready", "tasks")?;
        Ok(ready.into_iter().map(TaskId).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_truncates_and_caps() {
        let at = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        let t = after(at, std::time::Duration::from_nanos(1_500));
        assert_eq!((t - at).num_microseconds(), Some(1));
        let far = after(at, std::time::Duration::MAX);
        assert!(far > at && far.timestamp() < 300_000 * 365 * 86_400);
    }
}
