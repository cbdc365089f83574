//! The Postgres adapter of the rules: lock and read the rows a batch can touch into a
//! [`Loaded`] view — its tasks and runs, the dependents a failure could cancel, the plans —
//! replay the batch with [`Changes`], and write every resulting change (runs, tasks,
//! dependents' counters, plans, notifications) with one [`APPLY`] statement. Cost stays
//! proportional to the rows touched: dependents are found through the `depends_on` index,
//! never by scanning a plan.

use std::collections::HashMap;

use hive_models::{PlanId, PlanStatus, RunId, RunStatus, TaskId, Timestamp};
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::rows;
use crate::Notifier;
use crate::rules::{self, Changes, Loaded, Patches, TaskState};
use crate::sql::R;

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
const LOCK_TASKS: &str = concat!(
    "SELECT ",
    state_columns!(),
    " FROM tasks t WHERE t.id = ANY($1) ORDER BY t.id FOR UPDATE"
);

/// Reads plans' counts without locking them: concurrent finishes add to separate shards
/// (see the `plan_tallies` migration), and the status is written compare-and-set. Counts
/// read here may miss concurrent finishes, so a plan that may be done is settled after
/// commit ([`settle`]).
const READ_PLANS: &str = "SELECT id, status, total_subtasks, completed_subtasks, failed_subtasks, \
     cancelled_subtasks \
     FROM plans_counted WHERE id = ANY($1)";

/// Locks the open ones of the plans in `$1`, in id order, against a requeue taking a
/// subtask out of their counts until the settling transaction ends.
const LOCK_OPEN_PLANS: &str = concat!(
    "SELECT id FROM plans WHERE id = ANY($1) AND status NOT IN ",
    terminal_statuses!(),
    " ORDER BY id FOR NO KEY UPDATE"
);

/// Moves plans whose committed counts call for it, once: the status write is
/// compare-and-set, so of two settles racing only one moves the plan and announces it.
const SETTLE: &str = concat!(
    "WITH upd AS ( \
         UPDATE plans p SET status = x.status, updated_at = now() \
         FROM unnest($1::uuid[], $2::text[]) AS x(id, status) \
         WHERE p.id = x.id AND p.status NOT IN ",
    terminal_statuses!(),
    " RETURNING p.id, p.status \
     ), sent AS (",
    notify_rows!(
        "SELECT id, status FROM upd",
        "json_build_object('origin', $3::uuid, 'kind', 'plan_status', 'plan_id', x.id, \
             'status', x.status)"
    ),
    ") SELECT u.id, u.status, s.n AS notified FROM sent s LEFT JOIN upd u ON true"
);

/// Writes a batch: closes runs, updates tasks (and the dependents of completed tasks),
/// plans, and returns the notifications for the caller to publish after commit. Each update
/// also names its rows by `= ANY(ARRAY(…))`: the planner cannot see how few rows a
/// `jsonb_to_recordset` yields, and would otherwise hash-join it against a full scan of the
/// table, a cost that grows with every task ever stored. The patches come
/// as JSON rows ([`crate::rules::runs_json`] and its siblings). Returns the dependents left
/// waiting for nothing, announced as `task_ready` when `$7` is true.
pub(super) const APPLY: &str = concat!(
    "WITH run_in AS ( \
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, status text, set_result bool, \
        result text, set_error bool, error text, set_log bool, log text, waited_us bigint) \
), run_upd AS ( \
    UPDATE runs r SET status = x.status, completed_at = now(), updated_at = now(), \
        lease_expires_at = NULL, \
        started_at = least(r.started_at + x.waited_us * interval '1 microsecond', now()), \
        result_data = CASE WHEN x.set_result THEN x.result::jsonb ELSE r.result_data END, \
        error_message = CASE WHEN x.set_error THEN x.error ELSE r.error_message END, \
        output_log = CASE WHEN x.set_log THEN x.log ELSE r.output_log END \
    FROM run_in x WHERE r.id = x.id AND r.status = 'running' \
        AND r.id = ANY(ARRAY(SELECT id FROM run_in)) \
    RETURNING r.id \
), dec AS ( \
    SELECT d.task_id AS id, count(*)::int AS n FROM task_dependencies d \
    WHERE d.depends_on = ANY($3::uuid[]) GROUP BY d.task_id \
), task_in AS ( \
    SELECT * FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, status text, set_result bool, \
        result text, set_error bool, error text, requeue bool, run_at timestamptz, \
        attempts_delta int, snoozes_delta int, recount bool, set_metadata bool, metadata text) \
), task_upd AS ( \
    UPDATE tasks t SET status = x.status, updated_at = now(), \
        result = CASE WHEN x.set_result THEN x.result::jsonb ELSE t.result END, \
        last_error = CASE WHEN x.set_error THEN x.error ELSE t.last_error END, \
        assigned_worker = CASE WHEN x.requeue THEN NULL ELSE t.assigned_worker END, \
        run_at = CASE WHEN x.requeue THEN x.run_at ELSE t.run_at END, \
        attempts = greatest(t.attempts + x.attempts_delta, 0), \
        snoozes = greatest(t.snoozes + x.snoozes_delta, 0), \
        pending_deps = CASE WHEN x.recount THEN (SELECT count(*) FROM task_dependencies d \
                WHERE d.task_id = t.id AND EXISTS (SELECT 1 FROM tasks y \
                    WHERE y.id = d.depends_on AND y.status <> 'completed'))::int \
            ELSE greatest(t.pending_deps - coalesce((SELECT n FROM dec WHERE dec.id = t.id), 0), 0) \
            END, \
        metadata = CASE WHEN x.set_metadata THEN x.metadata::jsonb ELSE t.metadata END \
    FROM task_in x WHERE t.id = x.id AND t.id = ANY(ARRAY(SELECT id FROM task_in)) \
    RETURNING t.id \
), credits_dropped AS ( \
    /* A recount reads what its dependencies are now, completions still to be folded \
       included: their credits would count them twice. */ \
    DELETE FROM dependency_credits \
    WHERE task_id = ANY(ARRAY(SELECT id FROM task_in WHERE recount)) \
), dep_upd AS (",
    count_dec_down!(
        "SELECT id FROM dec",
        "AND t.id NOT IN (SELECT id FROM task_in)"
    ),
    "), reopen_upd AS ( \
    /* Completed tasks back in the queue: dependents not started wait for them again. */ \
    UPDATE tasks t SET pending_deps = t.pending_deps + inc.n \
    FROM (SELECT d.task_id AS id, count(*)::int AS n FROM task_dependencies d \
          WHERE d.depends_on = ANY($8::uuid[]) GROUP BY d.task_id) inc \
    WHERE t.id = inc.id AND t.status = 'queued' AND t.id NOT IN (SELECT id FROM task_in) \
        AND t.id = ANY(ARRAY(SELECT d.task_id FROM task_dependencies d \
                             WHERE d.depends_on = ANY($8::uuid[]))) \
    RETURNING t.id \
), freed AS ( \
    SELECT id FROM dep_upd WHERE ready \
), plan_in AS ( \
    SELECT * FROM jsonb_to_recordset($4::jsonb) AS x(id uuid, status text, changed bool, \
        from_finished bool, completed bigint, failed bigint, cancelled bigint) \
), tally_upd AS ( \
    INSERT INTO plan_tallies AS s (plan_id, shard, completed, failed, cancelled) \
    SELECT x.id, (pg_backend_pid() % 64)::smallint, x.completed, x.failed, x.cancelled \
    FROM plan_in x WHERE x.completed <> 0 OR x.failed <> 0 OR x.cancelled <> 0 \
    ORDER BY x.id \
    ON CONFLICT (plan_id, shard) DO UPDATE SET completed = s.completed + excluded.completed, \
        failed = s.failed + excluded.failed, cancelled = s.cancelled + excluded.cancelled \
    RETURNING s.plan_id \
), plan_upd AS ( \
    UPDATE plans p SET status = x.status, updated_at = now() \
    FROM plan_in x WHERE p.id = x.id AND x.changed \
        AND (x.from_finished OR p.status NOT IN ",
    terminal_statuses!(),
    ") AND p.id = ANY(ARRAY(SELECT id FROM plan_in WHERE changed)) \
    RETURNING p.id, p.status \
) \
SELECT (SELECT count(*) FROM run_upd) AS runs, (SELECT count(*) FROM task_upd) AS tasks, \
       (SELECT count(*) FROM dep_upd) AS dependents, (SELECT count(*) FROM plan_upd) AS plans, \
       (SELECT count(*) FROM reopen_upd) AS reopened, \
       (SELECT count(*) FROM tally_upd) AS tallies, \
       /* Published after commit (`publish.rs`): the tasks' own notes, then the plans' \
          (a plan moves because one of its subtasks did), then the freed dependents. */ \
       $5::text[] || (",
    notify_rows!(
        later,
        "SELECT id, status FROM plan_upd",
        "json_build_object('origin', $6::uuid, 'kind', 'plan_status', 'plan_id', x.id, \
             'status', x.status)"
    ),
    ") || (",
    notify_rows!(
        later,
        "SELECT id FROM freed WHERE $7::bool",
        "json_build_object('origin', $6::uuid, 'kind', 'task_ready', 'task_id', x.id)"
    ),
    ") AS notes, \
       ARRAY(SELECT id FROM freed) AS ready"
);

/// A task's [`TaskState`] from the [`state_columns`] of a row; whether its run runs is
/// assumed (see [`TaskState::run_running`]) until a read of the run says.
pub(super) fn state_from_row(row: &PgRow) -> R<(TaskId, TaskState)> {
    const T: &str = "tasks";
    let current_run = rows::get::<Option<Uuid>>(row, "current_run_id", T)?.map(RunId);
    Ok((
        TaskId(rows::get(row, "task_id", T)?),
        TaskState {
            status: rows::task_status(row, "task_status")?,
            seq: rows::get(row, "seq", T)?,
            plan_id: rows::get::<Option<Uuid>>(row, "plan_id", T)?.map(PlanId),
            attempts: rows::count(row, "attempts", T)?,
            max_retries: rows::big_count(row, "max_retries", T)?,
            retry_policy: rows::policy(row)?,
            snoozes: rows::count(row, "snoozes", T)?,
            current_run,
            run_running: current_run.is_some(),
        },
    ))
}

/// Locked `runs r JOIN tasks t` rows ([`locked_run_columns`]) into `view`, each run's
/// liveness exact; returns each run's task.
pub(super) fn load_locked(view: &mut Loaded, locked: &[PgRow]) -> R<HashMap<RunId, TaskId>> {
    let mut run_task = HashMap::with_capacity(locked.len());
    for row in locked {
        let (task, state) = state_from_row(row)?;
        let run = RunId(rows::get(row, "run_id", "runs")?);
        let running = rows::run_status(row, "run_status")? == RunStatus::Running;
        view.add_task(task, state);
        view.set_running(task, run, running);
        run_task.insert(run, task);
    }
    Ok(run_task)
}

/// Loads (and locks) the dependents that failures of `roots` may cancel.
pub(super) async fn load_cascade(
    conn: &mut PgConnection,
    view: &mut Loaded,
    roots: &[TaskId],
) -> R<()> {
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
        // Whether its run still runs is left to the write (see `TaskState::run_running`):
        // reading the run here could see a version older than the locked task row.
        let (id, state) = state_from_row(row)?;
        view.add_task(id, state);
    }
    view.add_edges(pairs);
    Ok(())
}

/// Loads the dependencies of a task a change requeues ([`crate::StatusChange::loads_dependencies`]),
/// shared-locked so none fails or is cancelled before this transaction ends: its cascade
/// would not see the requeued task, which its snapshot shows finished.
pub(super) async fn load_dependencies(
    conn: &mut PgConnection,
    view: &mut Loaded,
    task: &hive_models::Task,
) -> R<()> {
    let ids: Vec<Uuid> = task.dependencies.iter().map(|t| t.0).collect();
    let rows = sqlx::query(concat!(
        "SELECT ",
        state_columns!(),
        " FROM tasks t WHERE t.id = ANY($1) ORDER BY t.id FOR SHARE"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let (id, state) = state_from_row(row)?;
        view.add_task(id, state);
    }
    Ok(())
}

/// Loads the counts of the plans of every task in `view` and of `more`.
pub(super) async fn load_plans(
    conn: &mut PgConnection,
    view: &mut Loaded,
    more: &[PlanId],
) -> R<()> {
    let mut ids: Vec<Uuid> = view
        .plan_ids()
        .into_iter()
        .chain(more.iter().copied())
        .filter(|p| !view.plans.contains_key(p))
        .map(|p| p.0)
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let found = sqlx::query(READ_PLANS).bind(&ids).fetch_all(conn).await?;
    for row in &found {
        let id = PlanId(rows::get(row, "id", "plans")?);
        view.plans.insert(id, rows::plan_counters(row)?);
    }
    Ok(())
}

/// What writing a batch did: the dependents a completion freed, the plans that counted
/// finished subtasks without moving, which the caller settles after commit, and the
/// notifications, which the caller publishes after commit (`publish.rs`).
#[derive(Debug, Default)]
pub(super) struct Written {
    pub(super) ready: Vec<TaskId>,
    pub(super) unsettled: Vec<PlanId>,
    pub(super) notes: Vec<String>,
}

/// Replays `f` on `view` at the transaction's clock `at` and writes the result; returns
/// `f`'s value and what was written (freed dependents are announced when `announce`; a
/// caller that goes on to claim in the same transaction announces those it did not take).
///
/// A plan the replay finishes is locked and its counts read again before anything is
/// written, and `f` replayed if they changed: the counts in `view` were read unlocked, and
/// a requeue committed since (which locks the plan, `tasks.rs`) may have taken one of
/// them back; a move made on the stale counts would finish a plan with a subtask queued.
/// Only the batch that finishes a plan pays the lock, once per plan.
pub(super) async fn replay<T>(
    conn: &mut PgConnection,
    notifier: &Notifier,
    view: &mut Loaded,
    at: Timestamp,
    announce: bool,
    mut f: impl FnMut(&mut Changes<'_, Loaded>) -> T,
) -> R<(T, Written)> {
    let mut locked: Vec<Uuid> = Vec::new();
    loop {
        let mut ch = Changes::new(&*view, notifier, at);
        let out = f(&mut ch);
        let patches = ch.into_patches();
        let finishing: Vec<Uuid> = patches
            .plans
            .iter()
            .filter(|(id, c)| c.status.is_terminal() && !locked.contains(&id.0))
            .filter(|(id, _)| view.plans.get(id).is_some_and(|v| !v.status.is_terminal()))
            .map(|(id, _)| id.0)
            .collect();
        if finishing.is_empty() || !recount(conn, view, &finishing).await? {
            let written = apply(conn, notifier, view, patches, announce).await?;
            return Ok((out, written));
        }
        locked.extend(finishing);
    }
}

/// Locks the open ones of `plans` and reads their counts into `view` again; whether any
/// changed.
async fn recount(conn: &mut PgConnection, view: &mut Loaded, plans: &[Uuid]) -> R<bool> {
    sqlx::query(LOCK_OPEN_PLANS)
        .bind(plans)
        .execute(&mut *conn)
        .await?;
    let found = sqlx::query(READ_PLANS)
        .bind(plans)
        .fetch_all(&mut *conn)
        .await?;
    let mut changed = false;
    for row in &found {
        let id = PlanId(rows::get(row, "id", "plans")?);
        let counters = rows::plan_counters(row)?;
        changed |= view.plans.insert(id, counters) != Some(counters);
    }
    Ok(changed)
}

/// Writes a batch's patches in one statement; nothing to write costs no round trip.
async fn apply(
    conn: &mut PgConnection,
    notifier: &Notifier,
    view: &Loaded,
    mut p: Patches,
    announce: bool,
) -> R<Written> {
    if p.is_empty() {
        return Ok(Written::default());
    }
    let json = |what: &str, r: Result<String, serde_json::Error>| {
        r.map_err(|e| rows::corrupt("patches", format!("{what}: {e}")))
    };
    let unsettled = p
        .plans
        .iter()
        .filter(|(id, c)| !c.status.is_terminal() && view.plans.get(id) != Some(c))
        .map(|(id, _)| *id)
        .collect();
    // Announced from the statement, for the plans whose compare-and-set took.
    p.notes
        .retain(|n| !matches!(n.change, crate::Change::PlanStatus { .. }));
    let completed: Vec<Uuid> = p.completed.iter().map(|t| t.0).collect();
    let reopened: Vec<Uuid> = p.reopened.iter().map(|t| t.0).collect();
    let row = sqlx::query(APPLY)
        .bind(json("runs", rules::runs_json(&p.runs))?)
        .bind(json("tasks", rules::tasks_json(&p.tasks))?)
        .bind(completed)
        .bind(json("plans", rules::plan_deltas_json(&p.plans, view))?)
        .bind(super::listen::encode(&p.notes))
        .bind(notifier.origin())
        .bind(announce)
        .bind(reopened)
        .fetch_one(conn)
        .await?;
    let ready: Vec<Uuid> = rows::get(&row, "ready", "tasks")?;
    Ok(Written {
        ready: ready.into_iter().map(TaskId).collect(),
        unsettled,
        notes: rows::get(&row, "notes", "tasks")?,
    })
}

/// After commit: moves those of `plans` whose committed counts say they are done. Two
/// transactions finishing a plan's last two subtasks at once each read counts without the
/// other's; whichever settles last sees both. A crash before this step is caught by the
/// reaper ([`settle_stalled`]).
///
/// The counts read first, unlocked, only pick the plans that may be due (most calls stop
/// there); those are then locked and read again, and the move is made on that second read.
/// A change that takes a subtask out of its finished count (a requeue) locks its plan the
/// same way (`tasks.rs`), so it cannot commit between the read and the move, to be
/// overwritten by a move its count no longer calls for (a cancelled plan with a subtask
/// queued again): it waits, and the rules then see the plan as moved.
pub(super) async fn settle(
    conn: &mut PgConnection,
    notifier: &Notifier,
    plans: &[PlanId],
) -> R<Vec<(PlanId, PlanStatus)>> {
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = plans.iter().map(|p| p.0).collect();
    let (maybe, _) = due(conn, &ids).await?;
    if maybe.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = sqlx::Connection::begin(conn).await?;
    let moved = async {
        sqlx::query(LOCK_OPEN_PLANS)
            .bind(&maybe)
            .execute(&mut *tx)
            .await?;
        let (due, to) = due(&mut tx, &maybe).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query(SETTLE)
            .bind(&due)
            .bind(&to)
            .bind(notifier.origin())
            .fetch_all(&mut *tx)
            .await?)
    }
    .await;
    let moved = super::sql::end(tx, moved).await?;
    let mut out = Vec::with_capacity(moved.len());
    for row in &moved {
        if let Some(id) = rows::get::<Option<Uuid>>(row, "id", "plans")? {
            out.push((PlanId(id), rows::plan_status(row, "status")?));
        }
    }
    Ok(out)
}

/// The plans among `ids` whose counts, as read now, say they are done, with the status
/// each moves to.
async fn due(conn: &mut PgConnection, ids: &[Uuid]) -> R<(Vec<Uuid>, Vec<&'static str>)> {
    let found = sqlx::query(READ_PLANS).bind(ids).fetch_all(conn).await?;
    let mut due = Vec::new();
    let mut to = Vec::new();
    for row in &found {
        if let Some(status) = rows::plan_counters(row)?.settled() {
            due.push(rows::get(row, "id", "plans")?);
            to.push(status.as_str());
        }
    }
    Ok((due, to))
}

/// Plans left unsettled by a crash between a commit and its [`settle`]: open plans whose
/// counts say they are done. Settles up to `limit` of them.
pub(super) async fn settle_stalled(
    conn: &mut PgConnection,
    notifier: &Notifier,
    limit: u32,
) -> R<()> {
    let stalled: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM plans_counted WHERE status IN ('pending', 'in_progress') \
           AND completed_subtasks + failed_subtasks + cancelled_subtasks >= total_subtasks \
         LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let plans: Vec<PlanId> = stalled.into_iter().map(PlanId).collect();
    settle(conn, notifier, &plans).await.map(|_| ())
}
