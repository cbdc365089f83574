//! Runs on Postgres: finishing (one statement for a batch of successes outside plans, the
//! rules' replay otherwise) and finishing-then-claiming (claims themselves are in
//! [`super::claim`]), reaping expired leases, and extending leases.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hive_models::{
    Json, PlanId, PlanStatus, Run, RunId, TaskId, Timestamp, WorkerId, WorkerStatus,
};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::replay::{self, Written, load_locked};
use super::sql::{begin_by_key, end, micros, server_now};
use super::{PostgresStore, flow, listen, rows};
use crate::rules::Loaded;
use crate::sql::R;
use crate::{
    Claim, ClaimParams, Error, FinishReport, Finished, Outcome, ReapParams, ReapReport, RunOutcome,
};

/// Finishes a batch of successful runs (none spawning) in one statement: the success rule
/// of [`crate::rules`] in SQL — runs closed, tasks completed, dependents counted down and
/// announced — with a plan's completions added to its tally; whether that finishes the plan
/// is settled after commit ([`replay::settle`]), as for every Postgres write, and only for
/// plans where a subtask with no open dependent completed (any other completion leaves its
/// dependents to do). A run id given twice finishes once: the first occurrence wins.
/// `$6` is each run's wait for its handler ([`RunOutcome::waited`]). When `$7`, a plain
/// claim for task types `$8` follows in the same transaction: the dependents made ready
/// that it could take are returned as `deferred`, locked but not counted down (see
/// `CLAIM_DEFERRED`).
/// Returns the dependents made ready, announced as `task_ready` when `$5` is true, and (on
/// one row) the notifications, which the caller publishes after commit (`publish.rs`).
pub(super) const FINISH_SUCCESSES: &str = concat!(
    "WITH input AS ( \
         SELECT * FROM unnest($1::uuid[], $2::jsonb[], $3::text[], $6::bigint[]) \
             WITH ORDINALITY AS x(run_id, result, log, waited_us, ord) \
     ), locked AS ( \
         SELECT r.id AS run_id, t.id AS task_id, t.plan_id, \
             (r.status = 'running' AND t.current_run_id = r.id) AS live, \
             t.late_dependents AS late \
         FROM runs r JOIN tasks t ON t.id = r.task_id WHERE r.id = ANY($1::uuid[]) \
         ORDER BY t.id, r.id FOR UPDATE OF t, r \
     ), go AS ( \
         /* A task a spawn made a dependency of while it ran (`late`) is left to the \
            caller: the spawn may have committed after this statement's snapshot, which \
            the lock above waited for, so `dec` would not see the dependents it added. */ \
         SELECT l.run_id, l.task_id, l.plan_id, f.result, f.log, f.waited_us FROM locked l \
         JOIN (SELECT DISTINCT ON (run_id) run_id, result, log, waited_us FROM input \
               ORDER BY run_id, ord) f ON f.run_id = l.run_id \
         WHERE l.live AND NOT l.late \
     ), tally AS ( \
         INSERT INTO plan_tallies AS s (plan_id, shard, completed) \
         SELECT g.plan_id, (pg_backend_pid() % 64)::smallint, count(*) FROM go g \
         WHERE g.plan_id IS NOT NULL GROUP BY g.plan_id \
         /* In plan order, as every tally upsert: two backends sharing a shard never \
            wait for each other's rows in opposite orders. */ \
         ORDER BY g.plan_id \
         ON CONFLICT (plan_id, shard) DO UPDATE SET completed = s.completed + excluded.completed \
     ), run_upd AS ( \
         UPDATE runs r SET status = 'success', completed_at = now(), updated_at = now(), \
             lease_expires_at = NULL, result_data = g.result, output_log = g.log, \
             started_at = least(r.started_at + g.waited_us * interval '1 microsecond', now()) \
         FROM go g WHERE r.id = g.run_id AND r.id = ANY($1::uuid[]) \
     ), dec AS ( \
         SELECT d.task_id AS id, count(*)::int AS n FROM task_dependencies d \
         WHERE d.depends_on = ANY(ARRAY(SELECT task_id FROM go)) GROUP BY d.task_id \
     ), task_upd AS ( \
         /* A join, not a lookup in `dec` per row: that scanned all of `dec` for each. */ \
         UPDATE tasks t SET status = 'completed', result = g.result, updated_at = now(), \
             pending_deps = greatest(t.pending_deps - coalesce(dd.n, 0), 0) \
         FROM go g LEFT JOIN dec dd ON dd.id = g.task_id \
         WHERE t.id = g.task_id AND t.id = ANY(ARRAY(SELECT task_id FROM go)) \
     ), dep_lock AS ( \
         /* A dependent another transaction holds (a join other finishes count down) is \
            credited instead of waited for: see `FOLD_CREDITS`. */ \
         SELECT t.id, t.pending_deps, t.status, t.delay_secs, t.run_at, t.concurrency_key, \
             t.task_type \
         FROM tasks t WHERE t.id = ANY(ARRAY(SELECT id FROM dec)) \
             AND NOT EXISTS (SELECT 1 FROM go g WHERE g.task_id = t.id) \
         FOR NO KEY UPDATE SKIP LOCKED \
     ), dep_pick AS ( \
         /* With a plain claim to follow (`$7`, for task types `$8`), the dependents this \
            finish frees that the claim could take are left for it (`later`, see \
            `CLAIM_DEFERRED`): one new version of each row instead of two. A column, not a \
            CTE of its own: the planner, expecting one row, anti-joined such a CTE by a \
            nested loop (7 s for a fan-out of 10,000). */ \
         SELECT l.id, ($7::bool AND l.pending_deps > 0 AND l.pending_deps <= dec.n \
             AND l.status = 'queued' AND l.delay_secs = 0 \
             AND (l.run_at IS NULL OR l.run_at <= statement_timestamp()) \
             AND l.concurrency_key IS NULL \
             AND (cardinality($8::text[]) = 0 OR l.task_type = ANY($8::text[])) \
             AND NOT EXISTS (SELECT 1 FROM flow_rules f \
                 WHERE f.kind = 'type' AND f.name = l.task_type)) AS later \
         FROM dep_lock l JOIN dec ON dec.id = l.id \
     ), dep_upd AS (",
    count_dec_down!("SELECT id FROM dep_pick WHERE NOT later", ""),
    "), credited AS ( \
         /* Anti-joins, not `NOT (id = ANY(ARRAY(…)))`: that compared every dependent \
            with every locked one, 0.2 s for a fan-out of 10,000. */ \
         INSERT INTO dependency_credits (task_id, n) \
         SELECT dec.id, dec.n FROM dec \
         WHERE NOT EXISTS (SELECT 1 FROM dep_lock l WHERE l.id = dec.id) \
             AND NOT EXISTS (SELECT 1 FROM go g WHERE g.task_id = dec.id) \
         RETURNING task_id \
     ), notes AS (",
    notify_task_rows!(
        later,
        "SELECT task_id, run_id, plan_id FROM go",
        "'{\"origin\":\"' || $4::uuid || '\",\"kind\":\"tasks_completed\"'"
    ),
    "), freed AS ( \
         SELECT array_agg(id) AS ids FROM dep_upd WHERE ready \
     ), ends AS ( \
         /* A plan is done only once a subtask with no open dependent completes. */ \
         SELECT array_agg(DISTINCT g.plan_id) AS plans FROM go g \
         WHERE g.plan_id IS NOT NULL AND NOT EXISTS ( \
             SELECT 1 FROM task_dependencies d JOIN tasks w ON w.id = d.task_id \
             WHERE d.depends_on = g.task_id AND w.status NOT IN ",
    terminal_statuses!(),
    ") \
     ), flow AS MATERIALIZED ( \
         /* Whether the claim after this finish needs the flow probe: a rule exists, or a \
            keyed task is ready (one this finish frees counts; the snapshot predates it). \
            Materialized: inlined, its test of the freed ids ran once per returned row. */ \
         SELECT EXISTS (SELECT 1 FROM flow_rules) \
             OR EXISTS (SELECT 1 FROM tasks WHERE status = 'queued' AND pending_deps = 0 \
                 AND concurrency_key IS NOT NULL) \
             OR EXISTS (SELECT 1 FROM tasks k WHERE k.id = ANY(coalesce(r.ids, '{}')) \
                 AND k.concurrency_key IS NOT NULL) AS maybe \
         FROM freed r \
     ), ready_notes AS (",
    notify_rows!(
        later,
        "SELECT id FROM dep_upd WHERE ready AND $5::bool",
        "json_build_object('origin', $4::uuid, 'kind', 'task_ready', 'task_id', x.id)"
    ),
    ") \
     SELECT l.run_id, l.task_id, l.plan_id, l.live, l.late, \
         CASE WHEN row_number() OVER () = 1 THEN array_cat(n.p, rn.p) END AS notes, \
         coalesce(r.ids, '{}') AS ready, coalesce(e.plans, '{}') AS ends, \
         ARRAY(SELECT DISTINCT task_id FROM credited) AS credited, f.maybe AS flow, \
         ARRAY(SELECT id FROM dep_pick WHERE later) AS deferred \
     FROM notes n CROSS JOIN freed r CROSS JOIN ready_notes rn CROSS JOIN ends e \
     CROSS JOIN flow f LEFT JOIN locked l ON true"
);

/// Counts down the dependents a finish left for its claim (see `CLAIM_DEFERRED`) that the
/// claim did not take: each had exactly its last dependencies finished, so it is ready.
const COUNT_DOWN_DEFERRED: &str = "UPDATE tasks SET pending_deps = 0, updated_at = now() WHERE id = ANY($1::uuid[]) AND pending_deps > 0";

/// What finishing a batch did: one report per outcome, and the dependents made ready.
#[derive(Debug, Default)]
struct Finish {
    reports: Vec<FinishReport>,
    ready: Vec<TaskId>,
    /// Plans to settle after commit (see [`replay::settle`]).
    unsettled: Vec<PlanId>,
    /// Dependents credited rather than counted down, to fold after commit.
    credited: Vec<Uuid>,
    /// Notifications to publish after commit (`publish.rs`).
    notes: Vec<String>,
    /// Dependents made ready but not yet counted down, left for the claim that follows
    /// (see `CLAIM_DEFERRED`); those it does not take must be counted down before commit.
    deferred: Vec<Uuid>,
    /// The finish saw no flow rule and no keyed task ready, so a claim after it in the
    /// same transaction can skip the flow probe (and its round trip). Only a rule or keyed
    /// task committed meanwhile is missed, and the plain claim never takes those: they wait
    /// for the next claim, as they would behind a probe that ran a moment earlier.
    no_flow: bool,
}

impl Finish {
    /// Takes in `more`, the finish of the outcomes of `runs` (in `outcomes`' order) that
    /// this one left: their reports replace the stale ones this one gave them.
    fn absorb(&mut self, outcomes: &[RunOutcome], runs: &HashSet<RunId>, more: Finish) {
        let mut reports = more.reports.into_iter();
        for (report, o) in self.reports.iter_mut().zip(outcomes) {
            if runs.contains(&o.run_id)
                && let Some(r) = reports.next()
            {
                *report = r;
            }
        }
        self.ready.extend(more.ready);
        self.unsettled.extend(more.unsettled);
        self.credited.extend(more.credited);
        self.notes.extend(more.notes);
        self.deferred.extend(more.deferred);
        self.no_flow &= more.no_flow;
    }
}

const LOCK_RUNS: &str = concat!(
    "SELECT ",
    locked_run_columns!(),
    " FROM runs r JOIN tasks t ON t.id = r.task_id WHERE r.id = ANY($1) \
     ORDER BY t.id, r.id FOR UPDATE OF t, r"
);

const EXPIRED_RUNS: &str = concat!(
    "SELECT ",
    locked_run_columns!(),
    " FROM tasks t JOIN runs r ON r.id = t.current_run_id \
     WHERE t.status = 'in_progress' AND r.status = 'running' AND r.lease_expires_at < now() \
     ORDER BY r.lease_expires_at, r.id LIMIT $1 FOR UPDATE OF t, r SKIP LOCKED"
);

/// Locks the runs and their tasks, in (task, run) order; in a transaction opened with
/// [`begin_by_key`].
pub(super) async fn lock_runs(
    tx: &mut PgConnection,
    runs: &[RunId],
) -> R<Vec<sqlx::postgres::PgRow>> {
    let ids: Vec<Uuid> = runs.iter().map(|r| r.0).collect();
    Ok(sqlx::query(LOCK_RUNS).bind(&ids).fetch_all(tx).await?)
}

/// Whether a batch is all successes that spawn nothing: those finish in one statement.
fn plain_successes(outcomes: &[RunOutcome]) -> bool {
    outcomes
        .iter()
        .all(|o| matches!(&o.outcome, Outcome::Success { spawn, .. } if spawn.is_empty()))
}

impl PostgresStore {
    /// Adds the spawns of live runs to their plans before the batch finishes; a spawn its
    /// plan cannot take turns its outcome into a permanent failure.
    async fn grow_spawns<'a>(
        &self,
        tx: &mut PgConnection,
        view: &Loaded,
        run_task: &HashMap<RunId, TaskId>,
        outcomes: &'a [RunOutcome],
    ) -> R<std::borrow::Cow<'a, [RunOutcome]>> {
        use crate::rules::growth;
        let mut out = std::borrow::Cow::Borrowed(outcomes);
        for (i, task, spawn) in growth::live_spawns(outcomes, view, run_task) {
            if let Err(e) = super::plans::grow(&mut *tx, &self.notifier, task, spawn).await? {
                growth::refuse(&mut out, i, &e);
            }
        }
        Ok(out)
    }

    /// After a write's commit: publishes its notifications, then settles the plans it
    /// counted in without moving them.
    pub(super) async fn after_commit(&self, written: replay::Written) -> R<()> {
        self.publish(written.notes).await;
        self.settle_plans(&written.unsettled).await;
        Ok(())
    }

    /// Settles a finish's plans and reports each move on the last report of its plan: the
    /// outcome that made it, as the rules report a move they make themselves (outcomes
    /// apply in batch order, and a plan settled here moved only once all its subtasks
    /// finished, so the last of them in the batch is the one that finished it).
    async fn settle_reported(&self, done: &mut Finish) {
        for (plan, to) in self.settle_plans(&done.unsettled).await {
            if let Some(r) = done
                .reports
                .iter_mut()
                .rev()
                .find(|r| r.plan_id == Some(plan) && r.finished != Finished::Stale)
            {
                r.plan_transition.get_or_insert(to);
            }
        }
    }

    /// Best effort: the change it follows is committed, and failing the call now would make
    /// its caller retry a done change. A plan left unsettled is the reaper's
    /// ([`replay::settle_stalled`]). Returns the plans this call moved.
    async fn settle_plans(&self, plans: &[PlanId]) -> Vec<(PlanId, PlanStatus)> {
        if plans.is_empty() {
            return Vec::new();
        }
        // Again after a lost deadlock (a settle locks plans in id order, a finish in its own).
        let settled = self.retrying(|| async {
            let mut conn = self.pool.acquire().await?;
            replay::settle(&mut conn, &self.notifier, plans).await
        });
        settled.await.unwrap_or_else(|e| {
            tracing::warn!(error = ?e, "settling plans after commit failed; the reaper will");
            Vec::new()
        })
    }

    /// The one-statement finish of a batch of successes that spawn nothing. Also returns the
    /// dependents made ready (announced when `announce`) and the plans to settle.
    async fn finish_successes(
        &self,
        conn: &mut PgConnection,
        outcomes: &[RunOutcome],
        announce: bool,
        claim_types: Option<&[String]>,
    ) -> R<Finish> {
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut results: Vec<Option<Json>> = Vec::with_capacity(n);
        let mut logs: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut waited: Vec<i64> = Vec::with_capacity(n);
        for o in outcomes {
            ids.push(o.run_id.0);
            waited.push(crate::rules::waited_us(o.waited));
            results.push(match &o.outcome {
                Outcome::Success { result, .. } => result.clone(),
                Outcome::Failure { .. }
                | Outcome::TimedOut { .. }
                | Outcome::Snooze { .. }
                | Outcome::GiveBack { .. } => None,
            });
            logs.push(o.output_log.as_deref());
        }
        // The caller opened the transaction with `begin_by_key` (see there).
        let found = sqlx::query(FINISH_SUCCESSES)
            .bind(&ids)
            .bind(results)
            .bind(logs)
            .bind(self.notifier.origin())
            .bind(announce)
            .bind(waited)
            .bind(claim_types.is_some())
            .bind(claim_types.unwrap_or_default())
            .fetch_all(&mut *conn)
            .await?;
        let mut run_task = HashMap::with_capacity(found.len());
        let mut live = HashMap::with_capacity(found.len());
        let mut ready = Vec::new();
        let mut unsettled = Vec::new();
        let mut credited = Vec::new();
        let mut no_flow = false;
        let mut deferred = Vec::new();
        let notes = rows::notes(&found)?;
        if let Some(row) = found.first() {
            credited = rows::get(row, "credited", "tasks")?;
            deferred = rows::get(row, "deferred", "tasks")?;
            no_flow = !rows::get::<bool>(row, "flow", "flow_rules")?;
            let ids: Vec<Uuid> = rows::get(row, "ready", "tasks")?;
            ready = ids.into_iter().map(TaskId).collect();
            let ends: Vec<Uuid> = rows::get(row, "ends", "plans")?;
            unsettled = ends.into_iter().map(PlanId).collect();
        }
        let mut late = HashSet::new();
        for row in &found {
            let Some(run_id) = rows::get::<Option<Uuid>>(row, "run_id", "runs")? else {
                continue;
            };
            let task_id: Uuid = rows::get(row, "task_id", "tasks")?;
            run_task.insert(RunId(run_id), TaskId(task_id));
            if rows::get::<bool>(row, "live", "runs")? {
                if rows::get::<bool>(row, "late", "tasks")? {
                    late.insert(RunId(run_id));
                    continue;
                }
                let plan = rows::get::<Option<Uuid>>(row, "plan_id", "tasks")?.map(PlanId);
                live.insert(RunId(run_id), plan);
            }
        }
        let reports = outcomes
            .iter()
            .map(|o| {
                let task_id = run_task.get(&o.run_id).copied();
                // `remove`: a run given twice finished once; the repeat is stale.
                match live.remove(&o.run_id) {
                    Some(plan_id) => FinishReport {
                        run_id: o.run_id,
                        task_id,
                        finished: Finished::Completed,
                        plan_id,
                        cancelled_dependents: Vec::new(),
                        plan_transition: None,
                    },
                    None => FinishReport::stale(o.run_id, task_id),
                }
            })
            .collect();
        let mut done = Finish {
            reports,
            ready,
            unsettled,
            credited,
            notes,
            no_flow,
            deferred,
        };
        if !late.is_empty() {
            // The statement left them: finished by the rules, whose statements (each with
            // a snapshot of its own, taken under the lock) see every dependent.
            let rest: Vec<RunOutcome> = outcomes
                .iter()
                .filter(|o| late.contains(&o.run_id))
                .cloned()
                .collect();
            let more = self.finish_replayed(conn, &rest, announce).await?;
            done.absorb(outcomes, &late, more);
        }
        Ok(done)
    }

    /// Finishes a batch of any outcomes by the rules; the caller holds the transaction.
    async fn finish_replayed(
        &self,
        tx: &mut PgConnection,
        outcomes: &[RunOutcome],
        announce: bool,
    ) -> R<Finish> {
        let ids: Vec<RunId> = outcomes.iter().map(|o| o.run_id).collect();
        let locked = lock_runs(tx, &ids).await?;
        let Some(first) = locked.first() else {
            return Ok(Finish {
                reports: outcomes
                    .iter()
                    .map(|o| FinishReport::stale(o.run_id, None))
                    .collect(),
                ..Finish::default()
            });
        };
        let at = server_now(first)?;
        let mut view = Loaded::default();
        let run_task = load_locked(&mut view, &locked)?;
        let outcomes = &*self.grow_spawns(tx, &view, &run_task, outcomes).await?;
        let roots = view.failing_roots(outcomes, &run_task);
        replay::load_cascade(&mut *tx, &mut view, &roots).await?;
        replay::load_plans(&mut *tx, &mut view, &[]).await?;
        let (reports, written) =
            replay::replay(tx, &self.notifier, &mut view, at, announce, |ch| {
                outcomes
                    .iter()
                    .map(|o| ch.finish(o, run_task.get(&o.run_id).copied()))
                    .collect()
            })
            .await?;
        Ok(Finish {
            reports,
            ready: written.ready,
            unsettled: written.unsettled,
            notes: written.notes,
            ..Finish::default()
        })
    }

    /// Finishes runs, by one statement when the batch is all successes spawning nothing.
    async fn finish_in(
        &self,
        tx: &mut PgConnection,
        outcomes: &[RunOutcome],
        announce: bool,
        claim_types: Option<&[String]>,
    ) -> R<Finish> {
        if outcomes.is_empty() {
            return Ok(Finish::default());
        }
        if plain_successes(outcomes) {
            return self
                .finish_successes(tx, outcomes, announce, claim_types)
                .await;
        }
        self.finish_replayed(tx, outcomes, announce).await
    }

    pub(super) async fn finish_once(&self, outcomes: &[RunOutcome]) -> R<Vec<FinishReport>> {
        let mut tx = begin_by_key(&self.pool).await?;
        let out = self.finish_in(&mut tx, outcomes, true, None).await;
        let mut done = end(tx, out).await?;
        self.publish(std::mem::take(&mut done.notes)).await;
        self.fold_credits_later(std::mem::take(&mut done.credited));
        self.settle_reported(&mut done).await;
        Ok(done.reports)
    }

    /// Finishes, then claims in the same transaction; announces the freed dependents it did
    /// not take.
    pub(super) async fn finish_and_claim_once(
        &self,
        outcomes: &[RunOutcome],
        p: &ClaimParams,
    ) -> R<(Vec<FinishReport>, Vec<Claim>)> {
        let mut tx = begin_by_key(&self.pool).await?;
        let out: R<_> = async {
            let mut done = self
                .finish_in(&mut tx, outcomes, false, Some(&p.task_types))
                .await?;
            // Probed after the finish, which may have made room in a limited scope.
            let probe = if done.no_flow {
                None
            } else {
                flow::probe(&mut tx, p).await?.filter(flow::Probe::has_room)
            };
            let mut notes = std::mem::take(&mut done.notes);
            let deferred = std::mem::take(&mut done.deferred);
            let claims = self
                .claim_in(&mut tx, p, probe, &deferred, &mut notes)
                .await?;
            let claimed: HashSet<Uuid> = claims.iter().map(|c| c.task.id.0).collect();
            let left: Vec<Uuid> = deferred
                .into_iter()
                .filter(|t| !claimed.contains(t))
                .collect();
            if !left.is_empty() {
                sqlx::query(COUNT_DOWN_DEFERRED)
                    .bind(&left)
                    .execute(&mut *tx)
                    .await?;
                done.ready.extend(left.into_iter().map(TaskId));
            }
            Ok((done, notes, claims))
        }
        .await;
        let (mut done, mut notes, claims) = end(tx, out).await?;
        let claimed: HashSet<TaskId> = claims.iter().map(|c| c.task.id).collect();
        let unclaimed: Vec<_> = (done.ready.iter())
            .filter(|t| !claimed.contains(t))
            .map(|t| self.notifier.task_ready(*t))
            .collect();
        notes.extend(listen::encode(&unclaimed));
        self.publish(notes).await;
        self.fold_credits_later(std::mem::take(&mut done.credited));
        self.settle_reported(&mut done).await;
        Ok((done.reports, claims))
    }

    pub(super) async fn reap_once(&self, p: &ReapParams) -> R<ReapReport> {
        let mut tx = self.pool.begin().await?;
        let out = self.reap_in(&mut tx, p).await;
        let (report, written) = end(tx, out).await?;
        self.after_commit(written).await?;
        // Credits and plans a crash left between a finish's commit and its follow-up.
        self.repair_crashes_if_due(p.limit).await;
        Ok(report)
    }

    /// Takes silent workers offline and expires the runs whose leases ran out, by the rules;
    /// the caller ends the transaction.
    async fn reap_in(&self, tx: &mut PgConnection, p: &ReapParams) -> R<(ReapReport, Written)> {
        let offline = sqlx::query(
            "WITH off AS ( \
                 UPDATE workers SET status = 'offline', current_task_id = NULL, \
                     status_reason = $2 \
                 WHERE status IN ('active', 'idle') \
                   AND last_heartbeat < now() - $1::bigint * interval '1 microsecond' \
                 RETURNING id) \
             SELECT now() AS now, ARRAY(SELECT id FROM off ORDER BY id COLLATE \"C\") AS ids",
        )
        .bind(micros(p.heartbeat_timeout))
        .bind(hive_models::Worker::silent_reason(p.heartbeat_timeout))
        .fetch_one(&mut *tx)
        .await?;
        let at = server_now(&offline)?;
        let expired = sqlx::query(EXPIRED_RUNS)
            .bind(i64::from(p.limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut view = Loaded::default();
        let run_task = load_locked(&mut view, &expired)?;
        let mut order = Vec::with_capacity(expired.len());
        for row in &expired {
            let run_id = RunId(rows::get(row, "run_id", "runs")?);
            if let Some(&task_id) = run_task.get(&run_id) {
                order.push((run_id, task_id));
            }
        }
        // A timeout with no retry left fails its task: its dependents may be cancelled.
        let roots: Vec<TaskId> = order
            .iter()
            .filter(|(r, t)| {
                view.tasks
                    .get(t)
                    .is_some_and(|s| s.is_live(*r) && s.fails_for_good(Some(p.retry)))
            })
            .map(|(_, t)| *t)
            .collect();
        replay::load_cascade(&mut *tx, &mut view, &roots).await?;
        replay::load_plans(&mut *tx, &mut view, &[]).await?;
        let ids: Vec<String> = rows::get(&offline, "ids", "workers")?;
        replay::replay(&mut *tx, &self.notifier, &mut view, at, true, |ch| {
            let mut report = ReapReport::default();
            for &(run_id, task_id) in &order {
                match ch.expire(run_id, task_id, p.retry) {
                    Some((Finished::Retrying { .. }, _)) => report.requeued.push((task_id, run_id)),
                    Some((_, fx)) => {
                        report.failed.push(task_id);
                        report.plan_transitions.extend(fx.plan_transition);
                    }
                    None => {}
                }
            }
            for id in &ids {
                let id = WorkerId(id.clone());
                ch.note(self.notifier.worker(id.clone(), WorkerStatus::Offline));
                report.offline_workers.push(id);
            }
            report
        })
        .await
    }

    pub(super) async fn extend_once(&self, run_id: RunId, lease: Duration) -> R<Timestamp> {
        let until: Option<Timestamp> = sqlx::query_scalar(
            "UPDATE runs r SET lease_us = greatest(r.lease_us, $2::bigint), updated_at = now(), \
                 lease_expires_at = greatest(r.lease_expires_at, \
                     now() + $2::bigint * interval '1 microsecond') \
             FROM tasks t \
             WHERE r.id = $1 AND r.status = 'running' AND t.id = r.task_id \
               AND t.current_run_id = r.id \
             RETURNING r.lease_expires_at",
        )
        .bind(run_id.0)
        .bind(micros(lease))
        .fetch_optional(&self.pool)
        .await?;
        until.ok_or_else(|| Error::StaleRun { run_id }.into())
    }

    pub(super) async fn read_run(&self, id: RunId) -> R<Option<Run>> {
        let row = sqlx::query("SELECT * FROM runs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::run).transpose()
    }

    pub(super) async fn read_runs_by_id(&self, ids: &[RunId]) -> R<Vec<Run>> {
        let ids: Vec<Uuid> = ids.iter().map(|r| r.0).collect();
        let found =
            sqlx::query("SELECT * FROM runs WHERE id = ANY($1) ORDER BY task_id, run_number")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        found.iter().map(rows::run).collect()
    }

    pub(super) async fn read_runs(&self, task_id: TaskId) -> R<Vec<Run>> {
        self.runs_where(
            "SELECT * FROM runs WHERE task_id = $1 ORDER BY run_number",
            task_id.0,
        )
        .await
    }

    pub(super) async fn read_plan_runs(&self, plan_id: PlanId) -> R<Vec<Run>> {
        self.runs_where(
            "SELECT r.* FROM runs r JOIN tasks t ON t.id = r.task_id WHERE t.plan_id = $1 \
             ORDER BY r.task_id, r.run_number",
            plan_id.0,
        )
        .await
    }

    pub(super) async fn read_running_runs(&self, workers: &[WorkerId]) -> R<Vec<Run>> {
        let workers: Vec<&str> = workers.iter().map(WorkerId::as_str).collect();
        let found = sqlx::query(
            "SELECT r.* FROM tasks t JOIN runs r ON r.id = t.current_run_id \
             WHERE t.status = 'in_progress' AND t.assigned_worker = ANY($1) \
               AND r.worker_id = t.assigned_worker AND r.status = 'running' \
             ORDER BY r.task_id, r.id",
        )
        .bind(&workers)
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::run).collect()
    }

    async fn runs_where(&self, sql: &'static str, id: Uuid) -> R<Vec<Run>> {
        let found = sqlx::query(sql).bind(id).fetch_all(&self.pool).await?;
        found.iter().map(rows::run).collect()
    }
}
