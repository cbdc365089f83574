//! The operator's reads: task pages by descending id after a cursor (the unique index on
//! `id`, walked backwards, so a page costs the same at any depth), and the queue
//! statistics (grouped counts, the ready index, runs closed per minute).

use hive_models::{Task, TaskStatus, Timestamp};
use sqlx::{QueryBuilder, Sqlite};

use super::db::{self, Cols, Conn, R, us};
use crate::{MinuteRuns, OldestReady, QueueStats, TaskPageParams, TypeStatusCount};

pub(super) async fn page(c: &mut Conn, p: &TaskPageParams) -> R<Vec<Task>> {
    let mut b = QueryBuilder::<Sqlite>::new(concat!("SELECT ", task_columns!(), " FROM tasks t"));
    b.push(" WHERE 1 = 1");
    // A unary `+` keeps SQLite from choosing a filter column's index and sorting every
    // match: walking the id index and filtering stops after one page. Within a plan, the
    // plan index `(plan_id, status)` finds the plan's tasks in that status and only those
    // are sorted: a page of the few failed or running subtasks of a plan of 100,000 takes
    // 0.1 ms instead of a walk of all of them (12 ms). The plan's largest status is still
    // sorted whole (0.2 s a page for 100,000 queued); an index that ends in `id` would
    // spare that, but costs every plan task's status change a longer entry (plan-wide ran
    // 10% slower with it).
    if let Some(st) = p.status {
        b.push(if p.plan_id.is_some() {
            " AND t.status = "
        } else {
            " AND +t.status = "
        })
        .push_bind(st.as_str());
    }
    if let Some(ty) = &p.task_type {
        b.push(" AND +t.task_type = ").push_bind(ty.clone());
    }
    if let Some(plan) = p.plan_id {
        b.push(" AND t.plan_id = ").push_bind(plan.to_string());
    }
    if let Some(w) = &p.worker {
        b.push(" AND +t.assigned_worker = ").push_bind(w.0.clone());
    }
    if let Some(title) = &p.title_contains {
        b.push(" AND instr(t.title, ")
            .push_bind(title.clone())
            .push(") > 0");
    }
    if let Some(before) = p.before {
        b.push(" AND t.id < ").push_bind(before.to_string());
    }
    b.push(" ORDER BY t.id DESC LIMIT ")
        .push_bind(i64::from(p.limit));
    let rows = b.build().fetch_all(&mut *c).await?;
    rows.iter().map(db::task_from_row).collect()
}

/// Tasks per type and status, those finished (`true`) or not: by the status index, so the
/// unfinished ones cost what is in flight, whatever the history.
pub(super) async fn counts(c: &mut Conn, finished: bool) -> R<Vec<TypeStatusCount>> {
    let statuses = serde_json::json!(TaskStatus::names_where_finished(finished)).to_string();
    let rows = sqlx::query(
        "SELECT task_type, status, COUNT(*) AS n FROM tasks \
         WHERE status IN (SELECT value FROM json_each(?1)) \
         GROUP BY task_type, status ORDER BY task_type, status",
    )
    .bind(statuses)
    .fetch_all(&mut *c)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let cols = Cols::new(row, "tasks");
        let n: i64 = cols.get("n")?;
        out.push(TypeStatusCount {
            task_type: cols.get("task_type")?,
            status: cols.parse("status")?,
            count: u64::try_from(n).unwrap_or(0),
        });
    }
    Ok(out)
}

pub(super) async fn stats(c: &mut Conn, since: Option<Timestamp>) -> R<QueueStats> {
    let now = db::db_now(c).await?;
    let mut out = QueueStats {
        now: db::ts("tasks", now)?,
        ..QueueStats::default()
    };
    out.counts = counts(c, false).await?;
    let rows = sqlx::query(
        // `Task::ready_since` (SQLite's MAX of several values is NULL if any is).
        "SELECT task_type, MIN(MAX(COALESCE(run_at, updated_at), updated_at)) AS since \
         FROM tasks INDEXED BY tasks_ready \
         WHERE status = 'queued' AND pending_deps = 0 AND (run_at IS NULL OR run_at <= ?1) \
         GROUP BY task_type ORDER BY task_type",
    )
    .bind(now)
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let cols = Cols::new(row, "tasks");
        out.oldest_ready.push(OldestReady {
            task_type: cols.get("task_type")?,
            since: cols.ts("since")?,
        });
    }
    let Some(since) = since else {
        return Ok(out);
    };
    // Grouped here, so an hour of a busy queue is 60 rows, not one per run. Found by id
    // (time-ordered, the primary key): no index keeps `completed_at`.
    let rows = sqlx::query(
        "SELECT completed_at / 60000000 AS m, SUM(status = 'success') AS ok, \
                SUM(status <> 'success') AS bad FROM runs \
         WHERE id >= ?2 AND completed_at >= ?1 AND status IN ('success', 'failure', 'timeout') \
         GROUP BY m ORDER BY m",
    )
    .bind(us(since))
    .bind(crate::types::first_run_id_for(since).to_string())
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let cols = Cols::new(row, "runs");
        let (m, ok, bad): (i64, i64, i64) = (cols.get("m")?, cols.get("ok")?, cols.get("bad")?);
        out.finished.push(MinuteRuns {
            minute: db::ts("runs", m.saturating_mul(60_000_000))?,
            succeeded: u64::try_from(ok).unwrap_or(0),
            failed: u64::try_from(bad).unwrap_or(0),
        });
    }
    Ok(out)
}
