//! The starts a claim records against rate-limited scopes, and forgets again when a claim
//! is given back before its handler started.

use std::collections::HashSet;

use hive_models::{RunId, TaskId};
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::{Admitted, kinds, names};
use crate::flow::FlowCandidate;
use crate::sql::R;

/// Records the starts of the admitted tasks actually `taken` at `at` (their runs' start, so
/// windows are measured on the runs' own clock) against their rate-limited scopes, and
/// forgets those scopes' starts that left their window.
pub(in crate::postgres) async fn record_starts(
    conn: &mut PgConnection,
    admitted: &Admitted,
    taken: &HashSet<TaskId>,
    at: hive_models::Timestamp,
) -> R<()> {
    let claimed: Vec<FlowCandidate> = admitted
        .tasks
        .iter()
        .filter(|c| taken.contains(&c.id))
        .cloned()
        .collect();
    let starts = admitted.claim.starts(&claimed);
    if starts.is_empty() {
        return Ok(());
    }
    let windows = admitted.claim.rate_windows(&starts);
    sqlx::query(
        "WITH gone AS ( \
             DELETE FROM flow_starts s USING unnest($3::text[], $4::text[], $5::bigint[]) \
                 w(kind, name, us) \
             WHERE s.kind = w.kind AND s.name = w.name \
               AND s.started_at <= $6::timestamptz - w.us * interval '1 microsecond' \
         ) \
         INSERT INTO flow_starts (kind, name, started_at) \
         SELECT kind, name, $6::timestamptz FROM unnest($1::text[], $2::text[]) \
             x(kind, name)",
    )
    .bind(kinds(&starts))
    .bind(names(&starts))
    .bind(kinds(windows.iter().map(|(s, _)| s)))
    .bind(names(windows.iter().map(|(s, _)| s)))
    .bind(windows.iter().map(|(_, us)| *us).collect::<Vec<_>>())
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes the start each of `runs` counted at its claim (one row per scope of its task, at
/// the run's start) out of the rate windows: the runs were given back before their
/// handlers started. Runs claimed together share a start time, so each scope loses as many
/// rows of that time as runs were given back, no more, and passes over the rows another
/// transaction is forgetting at the same moment (both chose the same row, and one forgot
/// nothing).
pub(in crate::postgres) async fn forget_starts(conn: &mut PgConnection, runs: &[RunId]) -> R<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = runs.iter().map(|r| r.0).collect();
    sqlx::query(
        "WITH gone AS ( \
             SELECT w.kind, w.name, r.started_at, count(*) AS n \
             FROM runs r JOIN tasks t ON t.id = r.task_id \
             CROSS JOIN LATERAL (VALUES ('type', t.task_type), ('key', t.concurrency_key)) \
                 w(kind, name) \
             WHERE r.id = ANY($1::uuid[]) AND w.name IS NOT NULL \
             GROUP BY w.kind, w.name, r.started_at \
         ) \
         DELETE FROM flow_starts WHERE ctid IN ( \
             SELECT f.ctid FROM gone g CROSS JOIN LATERAL ( \
                 SELECT s.ctid FROM flow_starts s \
                 WHERE s.kind = g.kind AND s.name = g.name AND s.started_at = g.started_at \
                 LIMIT g.n FOR UPDATE SKIP LOCKED \
             ) f \
         )",
    )
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
