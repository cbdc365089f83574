//! Claims on Postgres: one statement that locks ready tasks (`FOR UPDATE SKIP LOCKED`),
//! opens their runs, starts their plans and announces it all; flow-controlled tasks
//! admitted under their scopes' locks ([`super::flow`]) among the plain queue's heads in
//! queue order, claimed first, then the plain ones.

use std::collections::HashSet;

use hive_models::{Run, RunId, TaskId};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::sql::{end, micros};
use super::{PostgresStore, flow, rows};
use crate::sql::R;
use crate::{Claim, ClaimParams};

/// Run ids travel with the claim statement; larger limits claim in chunks of this size.
const CLAIM_CHUNK: u32 = 1000;

/// The claim of the tasks `picked` selects (`id, priority, seq`, locked): runs opened,
/// plans started, each task returned with its inputs, and one row with the
/// notifications of it all (`notes`) for the caller to publish after commit. `$1` worker,
/// `$2` types, `$3` limit, `$4` run ids, `$5` lease, `$6` origin.
macro_rules! claim_statement {
    ($picked:expr) => { claim_statement!($picked, "") };
    ($picked:expr, $also_set:literal) => { concat!(
    "WITH picked AS (",
    $picked,
    "), claimed AS ( \
         UPDATE tasks t SET status = 'in_progress', assigned_worker = $1::text, ",
    $also_set,
    " \
             attempts = t.attempts + 1, run_count = t.run_count + 1, late_dependents = false, \
             current_run_id = ($4::uuid[])[k.n::int], updated_at = statement_timestamp() \
         /* `= ANY(ARRAY(…))`: a generic plan, costing `LIMIT $3` at a tenth of a large \
            queue, would otherwise merge-join against a walk of the whole primary key. \
            The numbers from `unnest`, not `row_number()` over `picked`: estimated at one \
            row, those were joined by a nested loop that scanned every claimed key for \
            each claimed task (a claim of 300 took 34 ms, 0.8 ms of it its own work); \
            estimated at a hundred, they are hashed. */ \
         FROM unnest(ARRAY(SELECT id FROM picked ORDER BY priority DESC, seq)) \
             WITH ORDINALITY AS k(id, n) \
         WHERE t.id = k.id AND t.id = ANY(ARRAY(SELECT id FROM picked)) \
         RETURNING t.*, ",
    task_dependencies!(),
    " ), opened AS ( \
         INSERT INTO runs (id, task_id, worker_id, run_number, status, phase, started_at, \
             lease_us, lease_expires_at, created_at, updated_at) \
         SELECT c.current_run_id, c.id, $1::text, c.run_count, 'running', c.current_phase, statement_timestamp(), \
             $5::bigint, statement_timestamp() + $5::bigint * interval '1 microsecond', \
             statement_timestamp(), statement_timestamp() \
         FROM claimed c \
     ), started AS ( \
         UPDATE plans p SET status = 'in_progress', updated_at = statement_timestamp() \
         WHERE p.status = 'pending' \
           AND p.id IN (SELECT c.plan_id FROM claimed c WHERE c.plan_id IS NOT NULL) \
         RETURNING p.id \
     ), announced AS ( \
         /* Published after commit (`publish.rs`); the plans' notes before their tasks'. */ \
         SELECT array_cat((",
    notify_rows!(
        later,
        "SELECT s.id AS plan_id FROM started s",
        "json_build_object('origin', $6::uuid, 'kind', 'plan_status', \
             'plan_id', x.plan_id, 'status', 'in_progress')"
    ),
    "), (",
    notify_task_rows!(
        later,
        "SELECT c.id AS task_id, c.current_run_id AS run_id, c.plan_id FROM claimed c \
         ORDER BY c.priority DESC, c.seq",
        "'{\"origin\":\"' || $6::uuid || '\",\"kind\":\"tasks_claimed\",\"worker_id\":' \
         || to_json($1::text)::text"
    ),
    ")) AS p) \
     SELECT c.*, statement_timestamp() AS started_at, \
         /* On one row only. */ \
         CASE WHEN row_number() OVER (ORDER BY c.priority DESC, c.seq) = 1 THEN a.p END \
             AS notes, \
         /* `= ANY(ARRAY(…))`: with a join the planner, seeing a wide fan-in in the \
            statistics, hashes the dependencies against a scan of every task. */ \
         (SELECT jsonb_object_agg(coalesce(d.plan_subtask_id, d.id::text), \
              coalesce(d.result, 'null'::jsonb)) \
          FROM tasks d WHERE d.id = ANY(ARRAY( \
              SELECT td.depends_on FROM task_dependencies td WHERE td.task_id = c.id))) \
             AS inputs, \
         statement_timestamp() + $5::bigint * interval '1 microsecond' AS lease_until \
     FROM claimed c CROSS JOIN announced a \
     ORDER BY c.priority DESC, c.seq"
    ) };
}

/// Ready tasks in queue order that no flow rule concerns (those are admitted by
/// [`super::flow`] and claimed with [`CLAIM_ADMITTED`]), locked.
macro_rules! plain_ready {
    () => {
        concat!(
            "SELECT id, priority, seq FROM tasks \
         WHERE status = 'queued' AND pending_deps = 0 \
           AND (run_at IS NULL OR run_at <= statement_timestamp()) \
           AND (cardinality($2::text[]) = 0 OR task_type = ANY($2::text[])) \
           AND concurrency_key IS NULL \
           AND NOT EXISTS (SELECT 1 FROM flow_rules f \
               WHERE f.kind = 'type' AND f.name = tasks.task_type) \
         ORDER BY ",
            plain_order!(),
            " \
         LIMIT $3::bigint \
         FOR UPDATE SKIP LOCKED"
        )
    };
}

/// Queue order (priority first, then age) as `tasks_ready_plain` holds it: naming its
/// expression keeps the planner on that index (see migration 0021).
macro_rules! plain_order {
    () => {
        "-priority::bigint, seq"
    };
}
pub(super) use plain_order;

/// The plain claim: [`plain_ready`] tasks.
pub(super) const CLAIM: &str = claim_statement!(plain_ready!());

/// [`CLAIM`] with the dependents the finish before it in the same transaction freed but
/// did not count down (`$7`, locked by that finish; see `FINISH_SUCCESSES`): they compete
/// with the ready tasks in queue order, and those taken are counted down by the claim's
/// own update, so a freed dependent claimed at once is written once, not twice. A ready
/// task it locks but then ranks out stays locked, and skipped by other claims, until the
/// transaction commits.
pub(super) const CLAIM_DEFERRED: &str = claim_statement!(
    concat!(
        "SELECT id, priority, seq FROM ( \
             SELECT id, priority, seq FROM (",
        plain_ready!(),
        ") r \
             UNION ALL \
             SELECT id, priority, seq FROM tasks WHERE id = ANY($7::uuid[]) \
         ) u ORDER BY priority DESC, seq LIMIT $3::bigint"
    ),
    "pending_deps = 0,"
);

/// The claim of admitted flow-controlled tasks (`$7`), each still queued once locked.
pub(super) const CLAIM_ADMITTED: &str = claim_statement!(
    "SELECT id, priority, seq FROM tasks \
     WHERE id = ANY($7::uuid[]) AND status = 'queued' AND pending_deps = 0 \
       AND (cardinality($2::text[]) = 0 OR task_type = ANY($2::text[])) \
     ORDER BY priority DESC, seq \
     LIMIT $3::bigint \
     FOR UPDATE"
);

impl PostgresStore {
    /// Claims up to `limit` tasks; adds their notifications to `notes`, to publish after
    /// commit.
    async fn claim_chunk(
        &self,
        conn: &mut PgConnection,
        p: &ClaimParams,
        limit: u32,
        admitted: Option<&[Uuid]>,
        deferred: &[Uuid],
        notes: &mut Vec<String>,
    ) -> R<Vec<Claim>> {
        let run_ids: Vec<Uuid> = (0..limit).map(|_| RunId::new().0).collect();
        let q = sqlx::query(if admitted.is_some() {
            CLAIM_ADMITTED
        } else if deferred.is_empty() {
            CLAIM
        } else {
            CLAIM_DEFERRED
        })
        .bind(p.worker_id.as_str())
        .bind(&p.task_types)
        .bind(i64::from(limit))
        .bind(run_ids)
        .bind(micros(p.lease))
        .bind(self.notifier.origin());
        let q = match admitted {
            Some(ids) => q.bind(ids),
            None if deferred.is_empty() => q,
            None => q.bind(deferred),
        };
        let found = q.fetch_all(conn).await?;
        notes.extend(rows::notes(&found)?);
        let mut claims = Vec::with_capacity(found.len());
        for row in &found {
            let task = rows::task(row)?;
            let run_id = task
                .current_run_id
                .ok_or_else(|| rows::corrupt("tasks", "claimed task without a run"))?;
            let run = Run::claimed(
                run_id,
                &task,
                p.worker_id.clone(),
                rows::count(row, "run_count", "tasks")?,
                rows::get(row, "started_at", "runs")?,
                rows::get(row, "lease_until", "runs")?,
            );
            let inputs: Option<sqlx::types::Json<crate::Inputs>> =
                rows::get(row, "inputs", "tasks")?;
            let inputs = inputs.map(|j| j.0).unwrap_or_default();
            claims.push(Claim {
                task,
                run,
                inputs,
                // The plain claim takes no flow-controlled task.
                limited: admitted.is_some(),
            });
        }
        Ok(claims)
    }

    /// Claims in up to two commits (flow-controlled tasks, then plain ones), and publishes
    /// the notifications of both once, after the last (also when it failed: the first
    /// committed).
    pub(super) async fn claim_once(&self, p: &ClaimParams) -> R<Vec<Claim>> {
        let mut notes = Vec::new();
        let claimed = self.claim_committed(p, &mut notes).await;
        self.publish(notes).await;
        claimed
    }

    async fn claim_committed(&self, p: &ClaimParams, notes: &mut Vec<String>) -> R<Vec<Claim>> {
        let mut conn = self.pool.acquire().await?;
        let mut claims = Vec::new();
        if let Some(probe) = flow::probe(&mut conn, p)
            .await?
            .filter(flow::Probe::has_room)
        {
            // Committed on its own, so the scopes' locks are not held through the plain
            // claim that follows.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let mut admitted = Vec::new();
            let out = self
                .claim_admitted(&mut tx, p, probe, &[], &mut admitted)
                .await;
            claims = end(tx, out).await?;
            notes.append(&mut admitted);
        }
        let left = p.limit.saturating_sub(claims.len() as u32);
        if left == 0 {
            return Ok(claims);
        }
        match self.claim_plain(&mut conn, p, left, notes).await {
            Ok(plain) => claims.extend(plain),
            // The flow-controlled claims are committed: returned, not dropped for a retry
            // that would leave them running unworked (holding their scopes' places) until
            // their leases ran out.
            Err(e) if !claims.is_empty() => {
                tracing::warn!(error = ?e, claimed = claims.len(),
                    "claiming plain tasks failed after flow-controlled ones were committed");
            }
            Err(e) => return Err(e),
        }
        Ok(claims)
    }

    /// The plain part of [`Self::claim_committed`]: up to `left` tasks no rule limits.
    async fn claim_plain(
        &self,
        conn: &mut PgConnection,
        p: &ClaimParams,
        left: u32,
        notes: &mut Vec<String>,
    ) -> R<Vec<Claim>> {
        if left <= CLAIM_CHUNK {
            // One statement, committed on its own.
            return self.claim_chunk(conn, p, left, None, &[], notes).await;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let rest = ClaimParams {
            limit: left,
            ..p.clone()
        };
        let mut taken = Vec::new();
        let out = self.claim_in(&mut tx, &rest, None, &[], &mut taken).await;
        let claims = end(tx, out).await?;
        notes.append(&mut taken);
        Ok(claims)
    }

    /// Claims on a connection the caller holds in a transaction: the flow-controlled tasks
    /// `probe` found room for first, then plain ones in chunks of run ids, the first chunk
    /// with the finish's `deferred` dependents among them (see [`CLAIM_DEFERRED`]). The
    /// caller publishes `notes` after its commit, and counts down the deferred ones not
    /// claimed.
    pub(super) async fn claim_in(
        &self,
        conn: &mut PgConnection,
        p: &ClaimParams,
        probe: Option<flow::Probe>,
        mut deferred: &[Uuid],
        notes: &mut Vec<String>,
    ) -> R<Vec<Claim>> {
        let mut claims = match probe {
            Some(probe) => self.claim_admitted(conn, p, probe, deferred, notes).await?,
            None => Vec::new(),
        };
        let mut left = p.limit.saturating_sub(claims.len() as u32);
        while left > 0 {
            let n = left.min(CLAIM_CHUNK);
            let got = self.claim_chunk(conn, p, n, None, deferred, notes).await?;
            deferred = &[];
            let done = got.len() < n as usize;
            left -= n;
            claims.extend(got);
            if done {
                break;
            }
        }
        Ok(claims)
    }

    /// Admits flow-controlled tasks under their scopes' locks, those ahead of the plain
    /// queue and the finish's `deferred` dependents, and claims them.
    async fn claim_admitted(
        &self,
        conn: &mut PgConnection,
        p: &ClaimParams,
        probe: flow::Probe,
        deferred: &[Uuid],
        notes: &mut Vec<String>,
    ) -> R<Vec<Claim>> {
        let admitted = flow::admit(conn, p, probe, deferred).await?;
        if admitted.ids.is_empty() {
            return Ok(Vec::new());
        }
        let n = u32::try_from(admitted.ids.len()).unwrap_or(u32::MAX);
        let claims = self
            .claim_chunk(conn, p, n, Some(&admitted.ids), &[], notes)
            .await?;
        let taken: HashSet<TaskId> = claims.iter().map(|c| c.task.id).collect();
        if let Some(first) = claims.first() {
            flow::record_starts(conn, &admitted, &taken, first.run.started_at).await?;
        }
        Ok(claims)
    }
}
