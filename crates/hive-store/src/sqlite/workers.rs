//! Workers: registration, heartbeats (which extend their runs' leases) and listing.

use hive_models::{RunId, TaskId, Timestamp, Worker, WorkerId, WorkerStatus};
use sqlx::{QueryBuilder, Sqlite};

use super::db::{self, Conn, R, to_json};
use super::runs;
use crate::{
    HeartbeatReport, Notification, Notifier, WorkerFilter, WorkerRegistration, WorkerStatusChange,
};

pub(super) async fn register(c: &mut Conn, r: &WorkerRegistration) -> R<Worker> {
    let at = db::db_now(c).await?;
    let row = sqlx::query(concat!(
        "INSERT INTO workers (id, role, status, last_heartbeat, capabilities, current_task_id, \
                              registered_at, metadata) \
         VALUES (?1, ?2, 'active', ?3, ?4, NULL, ?3, ?5) \
         ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
             capabilities = excluded.capabilities, metadata = excluded.metadata, \
             status = 'active', status_reason = NULL, last_heartbeat = excluded.last_heartbeat \
         RETURNING ",
        worker_columns!()
    ))
    .bind(r.id.as_str())
    .bind(r.role.as_str())
    .bind(at)
    .bind(to_json("capabilities", &r.capabilities)?)
    .bind(to_json("metadata", &r.metadata)?)
    .fetch_one(&mut *c)
    .await?;
    db::worker_from_row(&row)
}

/// Records the heartbeat and pushes each of the worker's running runs to now + its own
/// lease, in two statements.
pub(super) async fn heartbeat(
    c: &mut Conn,
    id: &WorkerId,
    status: Option<&WorkerStatusChange>,
) -> R<Option<HeartbeatReport>> {
    let at = db::db_now(c).await?;
    // A new status brings its reason, or clears the old one; a beat alone revives a worker
    // taken offline (its heartbeats were late, not its process gone).
    let known = sqlx::query(
        "UPDATE workers SET last_heartbeat = ?1, \
             status = COALESCE(?2, CASE WHEN status = 'offline' THEN 'active' ELSE status END), \
             status_reason = CASE WHEN ?2 IS NOT NULL THEN ?4 \
                 WHEN status = 'offline' THEN NULL ELSE status_reason END \
         WHERE id = ?3",
    )
    .bind(at)
    .bind(status.map(|s| s.status.as_str()))
    .bind(id.as_str())
    .bind(status.and_then(|s| s.reason.as_deref()))
    .execute(&mut *c)
    .await?;
    if known.rows_affected() == 0 {
        return Ok(None);
    }
    // The lease is capped so that now + lease stays a representable timestamp.
    let extended = sqlx::query(
        "UPDATE runs SET lease_expires_at = ?1 + MIN(lease_us, ?2 - ?1), updated_at = ?1 \
         WHERE worker_id = ?3 AND status = 'running'",
    )
    .bind(at)
    .bind(chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros())
    .bind(id.as_str())
    .execute(&mut *c)
    .await?;
    Ok(Some(HeartbeatReport {
        extended: extended.rows_affected(),
    }))
}

pub(super) async fn get(c: &mut Conn, id: &WorkerId) -> R<Option<Worker>> {
    let sql = concat!("SELECT ", worker_columns!(), " FROM workers WHERE id = ?1");
    db::one(c, sql, id.as_str(), db::worker_from_row).await
}

/// The widest age filter passed to SQL: now minus this stays far from integer overflow.
const MAX_AGE_US: i64 = 4_000_000_000_000_000_000;

pub(super) async fn list(c: &mut Conn, f: &WorkerFilter) -> R<Vec<Worker>> {
    let mut b = QueryBuilder::<Sqlite>::new(concat!(
        "SELECT ",
        worker_columns!(),
        " FROM workers WHERE 1 = 1"
    ));
    if let Some(role) = &f.role {
        b.push(" AND role = ").push_bind(role.clone());
    }
    if let Some(age) = f.alive_within {
        b.push(concat!(
            " AND status IN ('active', 'idle') AND last_heartbeat >= ",
            now_us!(),
            " - "
        ))
        .push_bind(db::dur_us(age).min(MAX_AGE_US));
    }
    b.push(" ORDER BY id");
    let rows = b.build().fetch_all(&mut *c).await?;
    rows.iter().map(db::worker_from_row).collect()
}

/// Deletes the worker if it has been silent since before `silent_before` and holds no
/// running run; releases nothing.
pub(super) async fn prune(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    id: &WorkerId,
    silent_before: Timestamp,
) -> R<bool> {
    let gone = sqlx::query(
        "DELETE FROM workers WHERE id = ?1 AND last_heartbeat < ?2 \
           AND NOT EXISTS (SELECT 1 FROM runs WHERE worker_id = ?1 AND status = 'running')",
    )
    .bind(id.as_str())
    .bind(db::us(silent_before))
    .execute(&mut *c)
    .await?;
    let pruned = gone.rows_affected() > 0;
    if pruned {
        notes.push(n.worker(id.clone(), WorkerStatus::Offline));
    }
    Ok(pruned)
}

/// Deletes the worker and releases its live runs, as `release_runs` would.
pub(super) async fn unregister(
    c: &mut Conn,
    n: &Notifier,
    notes: &mut Vec<Notification>,
    id: &WorkerId,
) -> R<Option<Vec<TaskId>>> {
    let gone = sqlx::query("DELETE FROM workers WHERE id = ?1")
        .bind(id.as_str())
        .execute(&mut *c)
        .await?;
    if gone.rows_affected() == 0 {
        return Ok(None);
    }
    // Its running runs, in (task, run) order as every backend releases them.
    let runs: Vec<String> = sqlx::query_scalar(
        "SELECT r.id FROM runs r WHERE r.worker_id = ?1 AND r.status = 'running' \
         ORDER BY r.task_id, r.id",
    )
    .bind(id.as_str())
    .fetch_all(&mut *c)
    .await?;
    let runs = runs
        .iter()
        .map(|r| {
            r.parse::<RunId>()
                .map_err(|e| db::corrupt("runs", e.to_string()))
        })
        .collect::<R<Vec<_>>>()?;
    let released = runs::release(c, n, notes, &runs, false).await?;
    notes.push(n.worker(id.clone(), WorkerStatus::Offline));
    Ok(Some(released))
}
