//! Runs: claiming, finishing, leases, releasing and reaping, each batch in a handful of
//! statements whatever its size.

use std::collections::HashSet;
use std::time::Duration;

use hive_models::{PlanId, PlanStatus, Run, RunId, TaskId, TaskStatus, WorkerId};
use serde_json::json;

use super::db::{self, Cols, Conn, R, add_us, json_list, to_json};
use super::flow::{self, key_has_room, key_room, key_walk, keyed_head, open_keys, room};
use super::replay::{self, state_columns};
use crate::rules::Loaded;
use crate::{
    Claim, ClaimParams, Error, FinishReport, Finished, Notification, Notifier, ReapParams,
    ReapReport, RunOutcome,
};

pub(super) async fn get(c: &mut Conn, id: RunId) -> R<Option<Run>> {
    let sql = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?1");
    db::one(c, sql, id, db::run_from_row).await
}

pub(super) async fn by_id(c: &mut Conn, ids: &[RunId]) -> R<Vec<Run>> {
    let sql = concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY task_id, run_number"
    );
    let rows = sqlx::query(sql).bind(json_list(ids)).fetch_all(c).await?;
    rows.iter().map(db::run_from_row).collect()
}

pub(super) async fn list(c: &mut Conn, task_id: TaskId) -> R<Vec<Run>> {
    let sql = concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE task_id = ?1 ORDER BY run_number"
    );
    db::all(c, sql, task_id, db::run_from_row).await
}

pub(super) async fn in_plan(c: &mut Conn, plan_id: PlanId) -> R<Vec<Run>> {
    let sql = concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE task_id IN (SELECT id FROM tasks WHERE plan_id = ?1) \
         ORDER BY task_id, run_number"
    );
    db::all(c, sql, plan_id, db::run_from_row).await
}

pub(super) async fn held_by(c: &mut Conn, workers: &[WorkerId]) -> R<Vec<Run>> {
    let sql = concat!(
        "SELECT ",
        run_columns!(),
        " FROM runs WHERE worker_id IN (SELECT value FROM json_each(?1)) \
           AND status = 'running' ORDER BY task_id, id"
    );
    let ids: Vec<&str> = workers.iter().map(WorkerId::as_str).collect();
    db::all(c, sql, json_list(&ids), db::run_from_row).await
}

/// A claimed task's columns, its next run number, its dependencies' outputs and the
/// statement's clock.
macro_rules! claim_columns {
    () => {
        concat!(
            "SELECT ",
            task_columns!(),
            ", t.seq, t.run_count + 1 AS next_run, ",
            // The dependencies' outputs, so a claim needs no second query for its inputs.
            "(SELECT json_group_object(coalesce(d.plan_subtask_id, d.id), \
                 json(coalesce(d.result, 'null'))) \
              FROM task_dependencies td JOIN tasks d ON d.id = td.depends_on \
              WHERE td.task_id = t.id) AS inputs, ",
            now_us!(),
            " AS now_us"
        )
    };
}

/// Ready tasks in queue order that no flow rule concerns (those are admitted by
/// [`flow::admitted`]).
macro_rules! claim_select {
    ($types:literal) => {
        concat!(
            claim_columns!(),
            // Without statistics the planner prefers the status index and sorts every
            // queued task; the partial index of unkeyed ready tasks yields them in queue
            // order instead, without walking a busy key's backlog.
            " FROM tasks t INDEXED BY tasks_ready_plain \
             WHERE t.status = 'queued' AND t.pending_deps = 0 \
               AND (t.run_at IS NULL OR t.run_at <= ",
            now_us!(),
            ") AND t.concurrency_key IS NULL \
               AND t.task_type NOT IN (SELECT name FROM flow_rules WHERE kind = 'type')",
            $types,
            " ORDER BY t.priority DESC, t.seq",
            limit!("?1")
        )
    };
}

/// A claim's writes, sent to the writer's thread as one text, its parameters positional
/// (see [`super::replay::write`] for both), all from the `[task, run]` pairs taken: the
/// tasks taken, their runs opened (numbered and phased from the tasks just updated), and
/// the plans among theirs that start, returned.
pub(super) const CLAIM_WRITES: &str = "\
    UPDATE tasks SET status = 'in_progress', assigned_worker = ?, attempts = attempts + 1, \
        run_count = run_count + 1, current_run_id = j.value ->> 1, updated_at = ? \
    FROM jsonb_each(?) AS j WHERE tasks.id = j.value ->> 0; \
    INSERT INTO runs (id, task_id, worker_id, run_number, status, phase, started_at, \
                      lease_us, lease_expires_at, created_at, updated_at) \
    SELECT j.value ->> 1, t.id, ?, t.run_count, 'running', t.current_phase, ?, ?, ?, ?, ? \
    FROM jsonb_each(?) AS j JOIN tasks t ON t.id = j.value ->> 0; \
    UPDATE plans SET status = 'in_progress', updated_at = ? \
    WHERE status = 'pending' AND id IN ( \
        SELECT t.plan_id FROM jsonb_each(?) AS j JOIN tasks t ON t.id = j.value ->> 0 \
        WHERE t.plan_id IS NOT NULL) \
    RETURNING id";

/// The claims of the selected `rows` ([`claim_columns`]), as [`CLAIM_WRITES`] leaves their
/// tasks, with the runs `run_ids` opened at `at` until `until`; those of `limited` are the
/// flow-controlled tasks admitted.
fn decode_claims(
    rows: &[sqlx::sqlite::SqliteRow],
    limited: &HashSet<TaskId>,
    run_ids: &[RunId],
    worker: &WorkerId,
    at: i64,
    until: i64,
) -> R<Vec<Claim>> {
    let started = db::ts("runs", at)?;
    let lease_until = db::ts("runs", until)?;
    let mut claims = Vec::with_capacity(rows.len());
    for (row, run_id) in rows.iter().zip(run_ids) {
        let mut task = db::task_from_row(row)?;
        let inputs = Cols::new(row, "tasks").json("inputs")?;
        let run = Run::claimed(
            *run_id,
            &task,
            worker.clone(),
            Cols::new(row, "runs").u32("next_run")?,
            started,
            Some(lease_until),
        );
        task.status = TaskStatus::InProgress;
        task.assigned_worker = Some(worker.clone());
        task.attempts = task.attempts.saturating_add(1);
        task.current_run_id = Some(run.id);
        task.updated_at = started;
        let limited = limited.contains(&task.id);
        claims.push(Claim {
            task,
            run,
            inputs,
            limited,
        });
    }
    Ok(claims)
}

/// One select and one text of writes ([`CLAIM_WRITES`]), whatever the number claimed.
pub(super) async fn claim(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    p: &ClaimParams,
) -> R<Vec<Claim>> {
    // The plain select and the flow probe go to the writer's thread as one text (see
    // `replay::write` for why); the probe's row comes last.
    let mut rows = if p.task_types.is_empty() {
        sqlx::query(concat!(claim_select!(""), "; ", flow::flow_probe!()))
            .bind(i64::from(p.limit))
            .fetch_all(&mut *c)
            .await?
    } else {
        sqlx::query(concat!(
            claim_select!(" AND t.task_type IN (SELECT value FROM json_each(?2))"),
            "; ",
            flow::flow_probe!()
        ))
        .bind(i64::from(p.limit))
        .bind(json_list(&p.task_types))
        .fetch_all(&mut *c)
        .await?
    };
    let probe = flow::Probe::from_last(&mut rows)?;
    let admitted = flow::admitted(c, p, probe, &rows).await?;
    if !admitted.tasks.is_empty() {
        // The admitted tasks are among the first `limit` of both queues merged; the plain
        // ones ahead of them fill the rest, as a select with the smaller limit would have
        // (the plain select takes no flow-controlled task, so the two never overlap).
        rows.truncate((p.limit as usize).saturating_sub(admitted.tasks.len()));
        let ids = json_list(admitted.tasks.iter().map(|a| a.id));
        let mut first = sqlx::query(concat!(
            claim_columns!(),
            " FROM tasks t WHERE t.id IN (SELECT value FROM json_each(?1)) \
             ORDER BY t.priority DESC, t.seq"
        ))
        .bind(ids)
        .fetch_all(&mut *c)
        .await?;
        first.append(&mut rows);
        rows = first;
    }
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let at: i64 = Cols::new(first, "tasks").get("now_us")?;
    // Every admitted task is claimed: this transaction holds the write lock throughout.
    flow::record_starts(c, &admitted, at).await?;
    let until = add_us(at, p.lease);
    let mut run_ids = Vec::with_capacity(rows.len());
    let mut pairs = Vec::with_capacity(rows.len());
    for row in &rows {
        let run = RunId::new();
        run_ids.push(run);
        pairs.push(json!([
            Cols::new(row, "tasks").get::<String>("id")?,
            run.to_string()
        ]));
    }
    let pairs = to_json("claims", &pairs)?;
    let worker = p.worker_id.as_str();
    let writes = sqlx::query(CLAIM_WRITES)
        .bind(worker)
        .bind(at)
        .bind(&pairs)
        .bind(worker)
        .bind(at)
        .bind(db::dur_us(p.lease))
        .bind(until)
        .bind(at)
        .bind(at)
        .bind(&pairs)
        .bind(at)
        .bind(&pairs)
        .fetch_all(&mut *c);
    // The writes need only the pairs, so the writer's thread runs them while this one
    // decodes the claims (biased: the writes are sent first).
    let (written, claims) = tokio::join!(biased; writes, async {
        let limited: HashSet<TaskId> = admitted.tasks.iter().map(|a| a.id).collect();
        decode_claims(&rows, &limited, &run_ids, &p.worker_id, at, until)
    });
    let (started, claims) = (written?, claims?);
    let mut started_plans: HashSet<PlanId> = HashSet::new();
    for row in &started {
        started_plans.insert(Cols::new(row, "plans").parse("id")?);
    }
    for cl in &claims {
        if let Some(pid) = cl.task.plan_id
            && started_plans.remove(&pid)
        {
            notes.push(n.plan_status(pid, PlanStatus::InProgress));
        }
        notes.push(n.task_claimed(cl));
    }
    Ok(claims)
}

/// Finishes a batch of runs by the rules: loads their tasks (and, for failures that fail
/// their task for good, what those may cancel) and the plans involved, replays, writes.
pub(super) async fn finish(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    outcomes: &[RunOutcome],
) -> R<Vec<FinishReport>> {
    let ids: Vec<RunId> = outcomes.iter().map(|o| o.run_id).collect();
    let mut view = Loaded::default();
    let (at, run_task) = replay::load_runs(c, &mut view, &ids).await?;
    let Some(at) = at else {
        return Ok(outcomes
            .iter()
            .map(|o| FinishReport::stale(o.run_id, None))
            .collect());
    };
    let (outcomes, created) = grow_spawns(c, &view, &run_task, outcomes, at).await?;
    let outcomes = &*outcomes;
    if created > 0 {
        notes.push(n.task_created(None, created));
        // The plans grew: their counters as `load_runs` read them are out of date.
        view.plans.clear();
    }
    let roots = view.failing_roots(outcomes, &run_task);
    replay::load_cascade(c, &mut view, &roots).await?;
    replay::load_plans(c, &mut view).await?;
    let (reports, batch_notes) = replay::replay(c, n, &view, at, |ch| {
        outcomes
            .iter()
            .map(|o| ch.finish(o, run_task.get(&o.run_id).copied()))
            .collect::<Vec<_>>()
    })
    .await?;
    notes.extend(batch_notes);
    Ok(reports)
}

/// Adds the spawns of live runs to their plans before the batch finishes; a spawn its plan
/// cannot take turns its outcome into a permanent failure.
async fn grow_spawns<'a>(
    c: &mut Conn,
    view: &Loaded,
    run_task: &std::collections::HashMap<RunId, TaskId>,
    outcomes: &'a [RunOutcome],
    at: i64,
) -> R<(std::borrow::Cow<'a, [RunOutcome]>, u64)> {
    use crate::rules::growth;
    let mut out = std::borrow::Cow::Borrowed(outcomes);
    let mut created = 0;
    for (i, task, spawn) in growth::live_spawns(outcomes, view, run_task) {
        match super::plans::grow(c, task, spawn, at).await? {
            Ok(n) => created += n,
            Err(e) => growth::refuse(&mut out, i, &e),
        }
    }
    Ok((out, created))
}

pub(super) async fn extend_lease(
    c: &mut Conn,
    run_id: RunId,
    lease: Duration,
) -> R<hive_models::Timestamp> {
    let at = db::db_now(c).await?;
    let until = add_us(at, lease);
    let done = sqlx::query(
        "UPDATE runs SET lease_us = max(coalesce(lease_us, 0), ?1), \
             lease_expires_at = max(coalesce(lease_expires_at, ?2), ?2), updated_at = ?4 \
         WHERE id = ?3 AND status = 'running' \
           AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = runs.task_id AND t.current_run_id = runs.id) \
         RETURNING lease_expires_at",
    )
    .bind(db::dur_us(lease))
    .bind(until)
    .bind(run_id.to_string())
    .bind(at)
    .fetch_optional(&mut *c)
    .await?;
    let Some(row) = done else {
        return Err(Error::StaleRun { run_id }.into());
    };
    db::ts("runs", Cols::new(&row, "runs").get("lease_expires_at")?)
}

/// Stores a live run's progress; [`Error::StaleRun`] for any other run.
pub(super) async fn record_progress(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    run_id: RunId,
    fraction: f64,
    message: Option<String>,
) -> R<()> {
    let at = db::db_now(c).await?;
    let task: Option<String> = sqlx::query_scalar(
        "UPDATE runs SET progress = ?1, progress_message = ?2, progress_at = ?3, updated_at = ?3 \
         WHERE id = ?4 AND status = 'running' \
           AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = runs.task_id AND t.current_run_id = runs.id) \
         RETURNING task_id",
    )
    .bind(fraction)
    .bind(message.as_deref())
    .bind(at)
    .bind(run_id.to_string())
    .fetch_optional(&mut *c)
    .await?;
    let task_id: TaskId = task
        .ok_or(Error::StaleRun { run_id })?
        .parse()
        .map_err(|e: hive_models::Error| db::corrupt("runs", e.to_string()))?;
    notes.push(n.note(crate::Change::Progress {
        task_id,
        run_id,
        fraction,
        message,
    }));
    Ok(())
}

/// Gives live runs back without counting their attempts; returns their tasks.
pub(super) async fn release(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    run_ids: &[RunId],
    unstarted: bool,
) -> R<Vec<TaskId>> {
    let mut view = Loaded::default();
    let (at, run_task) = replay::load_runs(c, &mut view, run_ids).await?;
    let Some(at) = at else {
        return Ok(Vec::new());
    };
    let order: Vec<(RunId, TaskId)> = run_ids
        .iter()
        .filter_map(|r| run_task.get(r).map(|t| (*r, *t)))
        .collect();
    let (released, batch_notes) =
        replay::replay(c, n, &view, at, |ch| ch.release_all(&order)).await?;
    notes.extend(batch_notes);
    if unstarted {
        let runs: Vec<RunId> = released.iter().map(|(r, _)| *r).collect();
        flow::forget_starts(c, &runs).await?;
    }
    Ok(released.into_iter().map(|(_, t)| t).collect())
}

pub(super) async fn reap(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    p: &ReapParams,
) -> R<ReapReport> {
    let at = db::db_now(c).await?;
    let rows = sqlx::query(concat!(
        "SELECT r.id AS run_id, r.status AS run_status, ",
        state_columns!(),
        ", ?1 AS now_us FROM runs r JOIN tasks t ON t.id = r.task_id AND t.current_run_id = r.id \
         WHERE r.status = 'running' AND r.lease_expires_at < ?1 \
         ORDER BY r.lease_expires_at, r.id",
        limit!("?2")
    ))
    .bind(at)
    .bind(i64::from(p.limit))
    .fetch_all(&mut *c)
    .await?;
    let mut view = Loaded::default();
    let (_, run_task) = replay::load_run_rows(&mut view, &rows)?;
    let mut expired = Vec::with_capacity(rows.len());
    for row in &rows {
        let run: RunId = Cols::new(row, "runs").parse("run_id")?;
        if let Some(task) = run_task.get(&run) {
            expired.push((run, *task));
        }
    }
    // A timeout with no retry left fails its task: its dependents may be cancelled.
    let roots: Vec<TaskId> = expired
        .iter()
        .filter(|(_, t)| {
            view.tasks
                .get(t)
                .is_some_and(|s| s.fails_for_good(Some(p.retry)))
        })
        .map(|(_, t)| *t)
        .collect();
    replay::load_cascade(c, &mut view, &roots).await?;
    replay::load_plans(c, &mut view).await?;
    let (mut report, batch_notes) = replay::replay(c, n, &view, at, |ch| {
        let mut report = ReapReport::default();
        for (run, task) in &expired {
            match ch.expire(*run, *task, p.retry) {
                Some((Finished::Retrying { .. }, _)) => report.requeued.push((*task, *run)),
                Some((_, fx)) => {
                    report.failed.push(*task);
                    report.plan_transitions.extend(fx.plan_transition);
                }
                None => {}
            }
        }
        report
    })
    .await?;
    notes.extend(batch_notes);
    let stale_before = db::sub_us(at, p.heartbeat_timeout);
    let rows = sqlx::query(
        "UPDATE workers SET status = 'offline', current_task_id = NULL, status_reason = ?2 \
         WHERE status IN ('active', 'idle') AND last_heartbeat < ?1 RETURNING id",
    )
    .bind(stale_before)
    .bind(hive_models::Worker::silent_reason(p.heartbeat_timeout))
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
