//! Runs: claiming, finishing, leases, releasing and reaping, each batch in a handful of
//! statements whatever its size.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hive_models::{
    Json, PlanId, PlanStatus, RetryPolicy, Run, RunId, RunStatus, TaskId, TaskStatus,
};
use serde_json::json;

use super::db::{self, Cols, Conn, R, add_us, json_list, to_json};
use super::tasks::{self, Effects, PlanBook};
use crate::{
    Claim, ClaimParams, Error, FinishReport, Finished, Notification, Notifier, Outcome, ReapParams,
    ReapReport, RunOutcome,
};

pub(super) async fn get(c: &mut Conn, id: RunId) -> R<Option<Run>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE id = ?1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(db::run_from_row).transpose()
}

pub(super) async fn list(c: &mut Conn, task_id: TaskId) -> R<Vec<Run>> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE task_id = ?1 ORDER BY run_number"
    ))
    .bind(task_id.to_string())
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(db::run_from_row).collect()
}

/// Ready tasks in queue order, each with its next run number and the statement's clock.
macro_rules! claim_select {
    ($types:literal) => {
        concat!(
            "SELECT ",
            task_columns!(),
            ", (SELECT COALESCE(MAX(r.run_number), 0) FROM runs r WHERE r.task_id = t.id) + 1 \
               AS next_run, ",
            now_us!(),
            // Without statistics the planner prefers the status index and sorts every
            // queued task; the partial ready index yields them in queue order instead.
            " AS now_us FROM tasks t INDEXED BY tasks_ready \
             WHERE t.status = 'queued' AND t.pending_deps = 0 \
               AND (t.run_at IS NULL OR t.run_at <= ",
            now_us!(),
            ")",
            $types,
            " ORDER BY t.priority DESC, t.seq LIMIT ?1"
        )
    };
}

/// One select, one update of the tasks, one insert of the runs, and one update of the
/// plans that start, whatever the number claimed.
pub(super) async fn claim(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    p: &ClaimParams,
) -> R<Vec<Claim>> {
    let limit = i64::from(p.limit);
    let rows = if p.task_types.is_empty() {
        sqlx::query(claim_select!(""))
            .bind(limit)
            .fetch_all(&mut *c)
            .await?
    } else {
        sqlx::query(claim_select!(
            " AND t.task_type IN (SELECT value FROM json_each(?2))"
        ))
        .bind(limit)
        .bind(json_list(&p.task_types))
        .fetch_all(&mut *c)
        .await?
    };
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let at: i64 = Cols::new(first, "tasks").get("now_us")?;
    let started = db::ts("runs", at)?;
    let until = add_us(at, p.lease);
    let lease_until = db::ts("runs", until)?;
    let mut claims = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut task = db::task_from_row(row)?;
        let run = Run::claimed(
            RunId::new(),
            &task,
            p.worker_id.clone(),
            Cols::new(row, "runs").u32("next_run")?,
            started,
            Some(lease_until),
        );
        task.status = TaskStatus::InProgress;
        task.assigned_worker = Some(p.worker_id.clone());
        task.attempts = task.attempts.saturating_add(1);
        task.current_run_id = Some(run.id);
        task.updated_at = started;
        claims.push(Claim { task, run });
    }
    let pairs: Vec<Json> = claims
        .iter()
        .map(|cl| json!([cl.task.id.to_string(), cl.run.id.to_string()]))
        .collect();
    let pairs = to_json("claims", &pairs)?;
    sqlx::query(
        "UPDATE tasks SET status = 'in_progress', assigned_worker = ?1, attempts = attempts + 1, \
         current_run_id = j.value ->> 1, updated_at = ?2 \
         FROM json_each(?3) AS j WHERE tasks.id = j.value ->> 0",
    )
    .bind(p.worker_id.as_str())
    .bind(at)
    .bind(&pairs)
    .execute(&mut *c)
    .await?;
    let new_runs: Vec<Json> = claims
        .iter()
        .map(|cl| {
            json!([
                cl.run.id.to_string(),
                cl.task.id.to_string(),
                cl.run.run_number,
                cl.run.phase
            ])
        })
        .collect();
    sqlx::query(
        "INSERT INTO runs (id, task_id, worker_id, run_number, status, phase, started_at, \
                           lease_ms, lease_expires_at) \
         SELECT j.value ->> 0, j.value ->> 1, ?1, j.value ->> 2, 'running', j.value ->> 3, ?2, \
                ?3, ?4 \
         FROM json_each(?5) AS j",
    )
    .bind(p.worker_id.as_str())
    .bind(at)
    .bind(db::lease_ms(p.lease))
    .bind(until)
    .bind(to_json("runs", &new_runs)?)
    .execute(&mut *c)
    .await?;
    let plan_ids: HashSet<PlanId> = claims.iter().filter_map(|cl| cl.task.plan_id).collect();
    let mut started_plans: HashSet<PlanId> = HashSet::new();
    if !plan_ids.is_empty() {
        let rows = sqlx::query(
            "UPDATE plans SET status = 'in_progress', updated_at = ?1 \
             WHERE status = 'pending' AND id IN (SELECT value FROM json_each(?2)) RETURNING id",
        )
        .bind(at)
        .bind(json_list(&plan_ids))
        .fetch_all(&mut *c)
        .await?;
        for row in &rows {
            started_plans.insert(Cols::new(row, "plans").parse("id")?);
        }
    }
    for cl in &claims {
        if let Some(pid) = cl.task.plan_id
            && started_plans.remove(&pid)
        {
            notes.push(n.plan_status(pid, PlanStatus::InProgress));
        }
        notes.push(n.task_status(cl.task.id, TaskStatus::InProgress));
    }
    Ok(claims)
}

/// A run named by a caller, with what deciding its fate needs.
struct RunInfo {
    task_id: TaskId,
    /// Running and its task's current run: the only state in which it may finish.
    live: bool,
    plan_id: Option<PlanId>,
    attempts: u32,
    max_retries: u32,
}

/// The named runs that exist, and the database clock when any does (read by the same
/// statement, saving a round trip; with no known run there is nothing to write).
async fn load_runs(c: &mut Conn, ids: &[RunId]) -> R<(Option<i64>, HashMap<RunId, RunInfo>)> {
    let rows = sqlx::query(concat!(
        "SELECT r.id, r.task_id, \
                COALESCE(r.status = 'running' AND t.current_run_id = r.id, 0) AS live, \
                t.plan_id, t.attempts, t.max_retries, ",
        now_us!(),
        " AS now_us FROM runs r JOIN tasks t ON t.id = r.task_id \
         WHERE r.id IN (SELECT value FROM json_each(?1))"
    ))
    .bind(json_list(ids))
    .fetch_all(&mut *c)
    .await?;
    let at = match rows.first() {
        Some(row) => Some(Cols::new(row, "runs").get::<i64>("now_us")?),
        None => None,
    };
    let infos = rows
        .iter()
        .map(|row| {
            let cols = Cols::new(row, "runs");
            Ok((
                cols.parse::<RunId>("id")?,
                RunInfo {
                    task_id: cols.parse("task_id")?,
                    live: cols.get::<i64>("live")? != 0,
                    plan_id: cols.parse_opt("plan_id")?,
                    attempts: cols.u32("attempts")?,
                    max_retries: cols.u32("max_retries")?,
                },
            ))
        })
        .collect::<R<HashMap<_, _>>>()?;
    Ok((at, infos))
}

/// Finishes a batch of runs the way the memory store does one at a time, but writes the
/// runs, the tasks and the dependents' counters in one statement each. Only a task failing
/// for good writes at once (its cascade must see earlier finishes to cancel the right
/// dependents); plans are read once and written back at the end.
struct Finisher {
    at: i64,
    /// `[run id, status, result JSON, error, output log]`
    runs: Vec<Json>,
    /// `[task id, status, result JSON, run_at, last error]`
    tasks: Vec<Json>,
    completed: Vec<TaskId>,
    plans: PlanBook,
    /// Runs closed in this batch: a second outcome for one of them is stale.
    closed: HashSet<RunId>,
    /// Tasks a failure cancelled in this batch: their runs are no longer live.
    cancelled: HashSet<TaskId>,
    /// Dependents the batch's completions left waiting for nothing.
    ready: Vec<TaskId>,
}

impl Finisher {
    async fn new(c: &mut Conn, at: i64, plan_ids: HashSet<PlanId>) -> R<Finisher> {
        let mut plans = PlanBook::default();
        plans.load(c, plan_ids).await?;
        Ok(Finisher {
            at,
            runs: Vec::new(),
            tasks: Vec::new(),
            completed: Vec::new(),
            plans,
            closed: HashSet::new(),
            cancelled: HashSet::new(),
            ready: Vec::new(),
        })
    }

    fn is_live(&self, run_id: RunId, info: &RunInfo) -> bool {
        info.live && !self.closed.contains(&run_id) && !self.cancelled.contains(&info.task_id)
    }

    fn close_run(
        &mut self,
        run_id: RunId,
        status: RunStatus,
        result: Option<&Json>,
        error: Option<&str>,
        output_log: Option<&str>,
    ) -> R<()> {
        let result = result.map(|r| to_json("result", r)).transpose()?;
        self.runs.push(json!([
            run_id.to_string(),
            status.as_str(),
            result,
            error,
            output_log
        ]));
        self.closed.insert(run_id);
        Ok(())
    }

    async fn complete(
        &mut self,
        c: &mut Conn,
        n: &Notifier,
        notes: &mut Vec<Notification>,
        info: &RunInfo,
        result: Option<&Json>,
    ) -> R<Effects> {
        let result = result.map(|r| to_json("result", r)).transpose()?;
        self.tasks.push(json!([
            info.task_id.to_string(),
            "completed",
            result,
            null,
            null
        ]));
        // Dependents are counted down in `flush`, for the whole batch in one statement.
        self.completed.push(info.task_id);
        notes.push(n.task_status(info.task_id, TaskStatus::Completed));
        let mut fx = Effects::default();
        if let Some(pid) = info.plan_id
            && let Some(to) = self.plans.step(c, pid, TaskStatus::Completed).await?
        {
            notes.push(n.plan_status(pid, to));
            fx.plan_transition = Some((pid, to));
        }
        Ok(fx)
    }

    /// Requeues with backoff while retries remain, else fails the task for good.
    async fn fail_attempt(
        &mut self,
        c: &mut Conn,
        n: &Notifier,
        notes: &mut Vec<Notification>,
        info: &RunInfo,
        error: &str,
        retry: Option<RetryPolicy>,
    ) -> R<(Finished, Effects)> {
        let task = info.task_id;
        match retry {
            Some(policy) if info.attempts <= info.max_retries => {
                let run_at = add_us(self.at, policy.backoff(info.attempts));
                self.tasks
                    .push(json!([task.to_string(), "queued", null, run_at, error]));
                notes.push(n.task_status(task, TaskStatus::Queued));
                let run_at = db::ts("tasks", run_at)?;
                Ok((Finished::Retrying { run_at }, Effects::default()))
            }
            _ => {
                self.tasks
                    .push(json!([task.to_string(), "failed", null, null, error]));
                notes.push(n.task_status(task, TaskStatus::Failed));
                // The cascade reads dependents' statuses: earlier finishes must be visible.
                self.flush(c).await?;
                let fx = tasks::on_terminal(
                    c,
                    n,
                    notes,
                    &mut self.plans,
                    task,
                    TaskStatus::Failed,
                    info.plan_id,
                    self.at,
                )
                .await?;
                self.cancelled.extend(fx.cancelled.iter().copied());
                Ok((Finished::Failed, fx))
            }
        }
    }

    async fn flush(&mut self, c: &mut Conn) -> R<()> {
        if !self.runs.is_empty() {
            sqlx::query(
                "UPDATE runs SET status = j.value ->> 1, completed_at = ?1, \
                     lease_expires_at = NULL, \
                     result_data = CASE WHEN j.value ->> 1 = 'success' \
                                   THEN j.value ->> 2 ELSE result_data END, \
                     error_message = CASE WHEN j.value ->> 1 = 'success' \
                                     THEN error_message ELSE j.value ->> 3 END, \
                     output_log = CASE WHEN j.value ->> 1 = 'timeout' \
                                  THEN output_log ELSE j.value ->> 4 END \
                 FROM json_each(?2) AS j WHERE runs.id = j.value ->> 0",
            )
            .bind(self.at)
            .bind(to_json("runs", &self.runs)?)
            .execute(&mut *c)
            .await?;
            self.runs.clear();
        }
        if !self.tasks.is_empty() {
            sqlx::query(
                "UPDATE tasks SET status = j.value ->> 1, updated_at = ?1, \
                     result = CASE WHEN j.value ->> 1 = 'completed' \
                              THEN j.value ->> 2 ELSE result END, \
                     last_error = CASE WHEN j.value ->> 1 = 'completed' \
                                  THEN last_error ELSE j.value ->> 4 END, \
                     run_at = CASE WHEN j.value ->> 1 = 'queued' \
                              THEN j.value ->> 3 ELSE run_at END, \
                     assigned_worker = CASE WHEN j.value ->> 1 = 'queued' \
                                       THEN NULL ELSE assigned_worker END \
                 FROM json_each(?2) AS j WHERE tasks.id = j.value ->> 0",
            )
            .bind(self.at)
            .bind(to_json("tasks", &self.tasks)?)
            .execute(&mut *c)
            .await?;
            self.tasks.clear();
        }
        if !self.completed.is_empty() {
            let ready = tasks::decrement_dependents(c, &self.completed).await?;
            self.ready.extend(ready);
            self.completed.clear();
        }
        Ok(())
    }

    /// Writes what is left, then the plans; returns the dependents made ready.
    async fn done(mut self, c: &mut Conn) -> R<Vec<TaskId>> {
        self.flush(c).await?;
        self.plans.save(c, self.at).await?;
        Ok(self.ready)
    }
}

pub(super) async fn finish(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    outcomes: &[RunOutcome],
) -> R<Vec<FinishReport>> {
    let ids: Vec<RunId> = outcomes.iter().map(|o| o.run_id).collect();
    let (at, infos) = load_runs(c, &ids).await?;
    // With no known run every outcome is stale and `at` is never used.
    let at = at.unwrap_or_default();
    let plan_ids = infos.values().filter_map(|i| i.plan_id).collect();
    let mut f = Finisher::new(c, at, plan_ids).await?;
    let mut reports = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let info = infos.get(&o.run_id);
        let Some(info) = info.filter(|i| f.is_live(o.run_id, i)) else {
            reports.push(FinishReport {
                run_id: o.run_id,
                task_id: info.map(|i| i.task_id),
                finished: Finished::Stale,
                plan_id: None,
                cancelled_dependents: Vec::new(),
                plan_transition: None,
            });
            continue;
        };
        let log = o.output_log.as_deref();
        let (finished, fx) = match &o.outcome {
            Outcome::Success { result } => {
                f.close_run(o.run_id, RunStatus::Success, result.as_ref(), None, log)?;
                let fx = f.complete(c, n, notes, info, result.as_ref()).await?;
                (Finished::Completed, fx)
            }
            Outcome::Failure { error, retry } => {
                f.close_run(o.run_id, RunStatus::Failure, None, Some(error), log)?;
                f.fail_attempt(c, n, notes, info, error, *retry).await?
            }
        };
        reports.push(FinishReport {
            run_id: o.run_id,
            task_id: Some(info.task_id),
            finished,
            plan_id: info.plan_id,
            cancelled_dependents: fx.cancelled,
            plan_transition: fx.plan_transition.map(|(_, s)| s),
        });
    }
    for task in f.done(c).await? {
        notes.push(n.task_ready(task));
    }
    Ok(reports)
}

pub(super) async fn extend_lease(
    c: &mut Conn,
    run_id: RunId,
    lease: Duration,
) -> R<hive_models::Timestamp> {
    let at = db::db_now(c).await?;
    let until = add_us(at, lease);
    let done = sqlx::query(
        "UPDATE runs SET lease_ms = ?1, lease_expires_at = ?2 \
         WHERE id = ?3 AND status = 'running' \
           AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = runs.task_id AND t.current_run_id = runs.id)",
    )
    .bind(db::lease_ms(lease))
    .bind(until)
    .bind(run_id.to_string())
    .execute(&mut *c)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::StaleRun { run_id }.into());
    }
    db::ts("runs", until)
}

/// Closes live runs as cancelled and requeues their tasks without counting the attempt.
pub(super) async fn release_live(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    at: i64,
    live: &[(RunId, TaskId)],
) -> R<Vec<TaskId>> {
    if live.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query(
        "UPDATE runs SET status = 'cancelled', completed_at = ?1, lease_expires_at = NULL \
         WHERE id IN (SELECT value FROM json_each(?2))",
    )
    .bind(at)
    .bind(json_list(live.iter().map(|(r, _)| *r)))
    .execute(&mut *c)
    .await?;
    let tasks: Vec<TaskId> = live.iter().map(|(_, t)| *t).collect();
    sqlx::query(
        "UPDATE tasks SET attempts = MAX(attempts - 1, 0), status = 'queued', \
             assigned_worker = NULL, run_at = NULL, updated_at = ?1 \
         WHERE id IN (SELECT value FROM json_each(?2))",
    )
    .bind(at)
    .bind(json_list(&tasks))
    .execute(&mut *c)
    .await?;
    notes.extend(tasks.iter().map(|t| n.task_status(*t, TaskStatus::Queued)));
    Ok(tasks)
}

pub(super) async fn release(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    run_ids: &[RunId],
) -> R<Vec<TaskId>> {
    let (at, infos) = load_runs(c, run_ids).await?;
    let Some(at) = at else {
        return Ok(Vec::new());
    };
    let mut seen = HashSet::new();
    let live: Vec<(RunId, TaskId)> = run_ids
        .iter()
        .filter(|r| seen.insert(**r))
        .filter_map(|r| infos.get(r).filter(|i| i.live).map(|i| (*r, i.task_id)))
        .collect();
    release_live(c, n, notes, at, &live).await
}

pub(super) async fn reap(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    p: &ReapParams,
) -> R<ReapReport> {
    let at = db::db_now(c).await?;
    let mut report = ReapReport::default();
    let rows = sqlx::query(
        "SELECT r.id, r.task_id, t.plan_id, t.attempts, t.max_retries \
         FROM runs r JOIN tasks t ON t.id = r.task_id AND t.current_run_id = r.id \
         WHERE r.status = 'running' AND r.lease_expires_at < ?1 \
         ORDER BY r.lease_expires_at, r.id LIMIT ?2",
    )
    .bind(at)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *c)
    .await?;
    let mut expired = Vec::with_capacity(rows.len());
    for row in &rows {
        let cols = Cols::new(row, "runs");
        let run: RunId = cols.parse("id")?;
        expired.push((
            run,
            RunInfo {
                task_id: cols.parse("task_id")?,
                live: true,
                plan_id: cols.parse_opt("plan_id")?,
                attempts: cols.u32("attempts")?,
                max_retries: cols.u32("max_retries")?,
            },
        ));
    }
    let plan_ids = expired.iter().filter_map(|(_, i)| i.plan_id).collect();
    let mut f = Finisher::new(c, at, plan_ids).await?;
    for (run, info) in &expired {
        // An earlier timeout's cascade may have cancelled this task already.
        if !f.is_live(*run, info) {
            continue;
        }
        const LEASE_EXPIRED: &str = "lease expired";
        f.close_run(*run, RunStatus::Timeout, None, Some(LEASE_EXPIRED), None)?;
        let (finished, fx) = f
            .fail_attempt(c, n, notes, info, LEASE_EXPIRED, Some(p.retry))
            .await?;
        match finished {
            Finished::Retrying { .. } => report.requeued.push((info.task_id, *run)),
            _ => report.failed.push(info.task_id),
        }
        report.plan_transitions.extend(fx.plan_transition);
    }
    f.done(c).await?;
    let stale_before = db::sub_us(at, p.heartbeat_timeout);
    let rows = sqlx::query(
        "UPDATE workers SET status = 'offline', current_task_id = NULL \
         WHERE status IN ('active', 'idle') AND last_heartbeat < ?1 RETURNING id",
    )
    .bind(stale_before)
    .fetch_all(&mut *c)
    .await?;
    let mut offline = rows
        .iter()
        .map(|row| {
            Cols::new(row, "workers")
                .get::<String>("id")
                .map(hive_models::WorkerId)
        })
        .collect::<R<Vec<_>>>()?;
    offline.sort();
    for w in &offline {
        notes.push(n.worker(w.clone(), hive_models::WorkerStatus::Offline));
    }
    report.offline_workers = offline;
    Ok(report)
}
