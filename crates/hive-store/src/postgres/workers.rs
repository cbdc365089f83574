//! Workers on Postgres: registering, heartbeats (extending the worker's leases), reads, and
//! unregistering (releasing its runs by the rules).

use hive_models::{RunId, TaskId, Timestamp, Worker, WorkerId, WorkerStatus};

use super::replay::{self, load_locked};
use super::sql::{end, micros, payload, server_now};
use super::{PostgresStore, rows};
use crate::rules::Loaded;
use crate::sql::R;
use crate::{HeartbeatReport, WorkerFilter, WorkerRegistration, WorkerStatusChange};

const WORKER_RUNS: &str = concat!(
    "SELECT ",
    locked_run_columns!(),
    " FROM tasks t JOIN runs r ON r.id = t.current_run_id \
     WHERE t.status = 'in_progress' AND t.assigned_worker = $1 \
       AND r.worker_id = $1 AND r.status = 'running' ORDER BY t.id, r.id FOR UPDATE OF t, r"
);

impl PostgresStore {
    pub(super) async fn register_once(&self, r: &WorkerRegistration) -> R<Worker> {
        let note = payload(&self.notifier.worker(r.id.clone(), WorkerStatus::Active))?;
        let row = sqlx::query(concat!(
            "WITH up AS ( \
                 INSERT INTO workers (id, role, status, last_heartbeat, capabilities, \
                     current_task_id, registered_at, metadata) \
                 VALUES ($1, $2, 'active', now(), $3, NULL, now(), $4) \
                 ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
                     capabilities = excluded.capabilities, metadata = excluded.metadata, \
                     status = 'active', status_reason = NULL, \
                     last_heartbeat = excluded.last_heartbeat \
                 RETURNING *) \
             SELECT up.*, (SELECT count(pg_notify(",
            channel_sql!(),
            ", $5::text))) AS notified FROM up"
        ))
        .bind(r.id.as_str())
        .bind(&r.role)
        .bind(&r.capabilities)
        .bind(&r.metadata)
        .bind(note)
        .fetch_one(&self.pool)
        .await?;
        rows::worker(&row)
    }

    pub(super) async fn heartbeat_once(
        &self,
        id: &WorkerId,
        status: Option<&WorkerStatusChange>,
    ) -> R<Option<HeartbeatReport>> {
        // A heartbeat that marks its worker offline announces it.
        let note = match status.map(|c| c.status) {
            Some(WorkerStatus::Offline) => Some(payload(
                &self.notifier.worker(id.clone(), WorkerStatus::Offline),
            )?),
            _ => None,
        };
        let row = sqlx::query(concat!(
            "WITH w AS ( \
                 UPDATE workers SET last_heartbeat = now(), \
                     status = coalesce($2::text, \
                         CASE WHEN status = 'offline' THEN 'active' ELSE status END), \
                     status_reason = CASE WHEN $2::text IS NOT NULL THEN $4::text \
                         WHEN status = 'offline' THEN NULL ELSE status_reason END \
                 WHERE id = $1 RETURNING id \
             ), r AS ( \
                 /* A run another transaction holds is skipped, not waited for: it is being \
                    closed (this worker's own finish, a cancel, the reaper) or extended. \
                    Waiting would hold back every other lease of the worker for as long as \
                    that transaction lasts, and a finish writes every subtask it frees: one \
                    freeing a fan-out of hundreds of thousands lasts seconds. */ \
                 UPDATE runs r \
                 SET lease_expires_at = now() + r.lease_us * interval '1 microsecond', \
                     updated_at = now() \
                 WHERE r.status = 'running' AND r.id IN ( \
                     SELECT x.id FROM tasks t JOIN runs x ON x.id = t.current_run_id \
                     WHERE t.status = 'in_progress' AND t.assigned_worker = $1 \
                       AND x.worker_id = $1 AND x.status = 'running' \
                       AND x.lease_us IS NOT NULL AND EXISTS (SELECT 1 FROM w) \
                     FOR NO KEY UPDATE OF x SKIP LOCKED) \
                 RETURNING 1 \
             ) \
             SELECT (SELECT count(*) FROM w) AS known, (SELECT count(*) FROM r) AS extended, \
                 (SELECT count(pg_notify(",
            channel_sql!(),
            ", $3::text)) FROM w WHERE $3::text IS NOT NULL) AS notified"
        ))
        .bind(id.as_str())
        .bind(status.map(|c| c.status.as_str()))
        .bind(note)
        .bind(status.and_then(|c| c.reason.as_deref()))
        .fetch_one(&self.pool)
        .await?;
        let known: i64 = rows::get(&row, "known", "workers")?;
        let extended: i64 = rows::get(&row, "extended", "runs")?;
        Ok((known > 0).then(|| HeartbeatReport {
            extended: extended.unsigned_abs(),
        }))
    }

    pub(super) async fn read_worker(&self, id: &WorkerId) -> R<Option<Worker>> {
        let row = sqlx::query("SELECT * FROM workers WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::worker).transpose()
    }

    pub(super) async fn read_workers(&self, f: &WorkerFilter) -> R<Vec<Worker>> {
        let found = sqlx::query(
            "SELECT * FROM workers \
             WHERE ($1::text IS NULL OR role = $1::text) \
               AND ($2::bigint IS NULL OR (status IN ('active', 'idle') \
                    AND last_heartbeat >= now() - $2::bigint * interval '1 microsecond')) \
             ORDER BY id COLLATE \"C\"",
        )
        .bind(f.role.as_deref())
        .bind(f.alive_within.map(micros))
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(rows::worker).collect()
    }

    /// Deletes the worker if it has been silent since before `silent_before` and holds no
    /// running run, in one statement; releases nothing.
    pub(super) async fn prune_worker_once(
        &self,
        id: &WorkerId,
        silent_before: Timestamp,
    ) -> R<bool> {
        let note = payload(&self.notifier.worker(id.clone(), WorkerStatus::Offline))?;
        let row = sqlx::query(concat!(
            "WITH gone AS ( \
                 DELETE FROM workers WHERE id = $1 AND last_heartbeat < $2 \
                   AND NOT EXISTS (SELECT 1 FROM runs \
                                   WHERE worker_id = $1 AND status = 'running') \
                 RETURNING id) \
             SELECT (SELECT count(*) FROM gone) AS pruned, \
                 (SELECT count(pg_notify(",
            channel_sql!(),
            ", $3::text)) FROM gone) AS notified"
        ))
        .bind(id.as_str())
        .bind(silent_before)
        .bind(note)
        .fetch_one(&self.pool)
        .await?;
        let pruned: i64 = rows::get(&row, "pruned", "workers")?;
        Ok(pruned > 0)
    }

    /// Deletes the worker and releases its live runs, in (task, run) order, by the rules.
    pub(super) async fn unregister_once(&self, id: &WorkerId) -> R<Option<Vec<TaskId>>> {
        let mut tx = self.pool.begin().await?;
        let out: R<_> = async {
            let Some(row) = sqlx::query("DELETE FROM workers WHERE id = $1 RETURNING now() AS now")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let at = server_now(&row)?;
            let locked = sqlx::query(WORKER_RUNS)
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let mut view = Loaded::default();
            let run_task = load_locked(&mut view, &locked)?;
            let mut order: Vec<(RunId, TaskId)> = run_task.into_iter().collect();
            order.sort_by_key(|(r, t)| (*t, *r));
            let replayed = replay::replay(&mut tx, &self.notifier, &mut view, at, true, |ch| {
                let released: Vec<TaskId> =
                    ch.release_all(&order).into_iter().map(|(_, t)| t).collect();
                ch.note(self.notifier.worker(id.clone(), WorkerStatus::Offline));
                released
            })
            .await?;
            Ok(Some(replayed))
        }
        .await;
        let Some((released, written)) = end(tx, out).await? else {
            return Ok(None);
        };
        self.after_commit(written).await?;
        Ok(Some(released))
    }
}
