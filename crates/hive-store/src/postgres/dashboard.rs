//! The operator's reads: task pages by descending id after a cursor (the primary key
//! walked backwards, or a filter's index when the planner finds it cheaper), and the
//! queue statistics (grouped counts, the ready index, runs closed per minute).

use hive_models::{Task, TaskStatus, Timestamp};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::{PostgresStore, rows};
use crate::sql::R;
use crate::{MinuteRuns, OldestReady, QueueStats, TaskPageParams, TypeStatusCount};

impl PostgresStore {
    pub(super) async fn read_page(&self, p: &TaskPageParams) -> R<Vec<Task>> {
        // Only the filters given appear in the statement, so the planner sees each one.
        let mut b = QueryBuilder::<Postgres>::new(concat!(select_tasks!(), "WHERE true"));
        if let Some(st) = p.status {
            b.push(" AND t.status = ").push_bind(st.as_str());
        }
        if let Some(ty) = &p.task_type {
            b.push(" AND t.task_type = ").push_bind(ty.clone());
        }
        if let Some(plan) = p.plan_id {
            b.push(" AND t.plan_id = ").push_bind(plan.0);
        }
        if let Some(w) = &p.worker {
            b.push(" AND t.assigned_worker = ").push_bind(w.0.clone());
        }
        if let Some(title) = &p.title_contains {
            b.push(" AND strpos(t.title, ")
                .push_bind(title.clone())
                .push(") > 0");
        }
        if let Some(before) = p.before {
            b.push(" AND t.id < ").push_bind(before.0);
        }
        b.push(" ORDER BY t.id DESC LIMIT ")
            .push_bind(i64::from(p.limit));
        // Planned for each call's own values, never cached: after five runs Postgres may
        // switch a prepared statement to a generic plan, and for a plan and a status that
        // one bitmap-scans and sorts every task of the plan (144 ms for 200 of a plan of
        // 100,000 queued subtasks) where the values' own plan walks the newest ids (0.2 ms).
        let found = b.build().persistent(false).fetch_all(&self.pool).await?;
        found.iter().map(rows::task).collect()
    }

    /// Tasks per type and status, those finished (`true`) or not: the unfinished ones by
    /// the status index, so they cost what is in flight, whatever the history.
    pub(super) async fn read_counts(&self, finished: bool) -> R<Vec<TypeStatusCount>> {
        let mut conn = self.pool.acquire().await?;
        counts(&mut conn, finished).await
    }

    /// The queue's statistics, every statement in one snapshot (counts, ready ages and
    /// per-minute runs read apart could disagree).
    pub(super) async fn read_stats(&self, since: Option<Timestamp>) -> R<QueueStats> {
        let mut tx = self.snapshot().await?;
        let out = stats(&mut tx, since).await;
        tx.rollback().await?;
        out
    }
}

async fn counts(conn: &mut PgConnection, finished: bool) -> R<Vec<TypeStatusCount>> {
    let found = sqlx::query(
        "SELECT task_type, status, count(*) AS n FROM tasks WHERE status = ANY($1) \
             GROUP BY task_type, status ORDER BY task_type, status",
    )
    .bind(TaskStatus::names_where_finished(finished))
    // Planned for the statuses given: a generic plan, not knowing how few tasks are
    // unfinished, scans the whole table (300 ms against 4 ms with 2,000,000 finished).
    .persistent(false)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(found.len());
    for row in &found {
        let n: i64 = rows::get(row, "n", "tasks")?;
        out.push(TypeStatusCount {
            task_type: rows::get(row, "task_type", "tasks")?,
            status: rows::task_status(row, "status")?,
            count: n.unsigned_abs(),
        });
    }
    Ok(out)
}

async fn stats(conn: &mut PgConnection, since: Option<Timestamp>) -> R<QueueStats> {
    let now: Timestamp = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let mut out = QueueStats {
        now,
        ..QueueStats::default()
    };
    out.counts = counts(&mut *conn, false).await?;
    let found = sqlx::query(
        // `Task::ready_since`.
        "SELECT task_type, min(greatest(run_at, updated_at)) AS since FROM tasks \
             WHERE status = 'queued' AND pending_deps = 0 AND (run_at IS NULL OR run_at <= $1) \
             GROUP BY task_type ORDER BY task_type",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for row in &found {
        out.oldest_ready.push(OldestReady {
            task_type: rows::get(row, "task_type", "tasks")?,
            since: rows::get(row, "since", "tasks")?,
        });
    }
    let Some(since) = since else {
        return Ok(out);
    };
    // Found by id (time-ordered, the primary key), not by `completed_at`, which no
    // index keeps: closing a run in place stays a HOT update.
    let found = sqlx::query(
        "SELECT date_trunc('minute', completed_at) AS m, \
                    count(*) FILTER (WHERE status = 'success') AS ok, \
                    count(*) FILTER (WHERE status <> 'success') AS bad \
             FROM runs WHERE id >= $2 AND completed_at >= $1 \
               AND status IN ('success', 'failure', 'timeout') \
             GROUP BY m ORDER BY m",
    )
    .bind(since)
    .bind(crate::types::first_run_id_for(since))
    .fetch_all(&mut *conn)
    .await?;
    for row in &found {
        let (ok, bad): (i64, i64) = (
            rows::get(row, "ok", "runs")?,
            rows::get(row, "bad", "runs")?,
        );
        out.finished.push(MinuteRuns {
            minute: rows::get(row, "m", "runs")?,
            succeeded: ok.unsigned_abs(),
            failed: bad.unsigned_abs(),
        });
    }
    Ok(out)
}
