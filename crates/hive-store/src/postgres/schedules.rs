//! Schedules on Postgres: one row each; `done_until` moves compare-and-set.

use std::collections::HashMap;

use hive_models::{Schedule, Scheduled, Timestamp};
use sqlx::postgres::PgRow;

use super::{PostgresStore, rows};
use crate::sql::R;
use crate::{Error, KeyedWork, ScheduleAdvance};

fn from_row(row: &PgRow) -> R<Schedule> {
    const T: &str = "schedules";
    Ok(Schedule {
        name: rows::get(row, "name", T)?,
        cron: rows::get(row, "cron", T)?,
        timezone: rows::get(row, "timezone", T)?,
        creates: Scheduled::from_stored(decode(row, "task")?)
            .map_err(|e| rows::corrupt(T, format!("task: {e}")))?,
        enabled: rows::get(row, "enabled", T)?,
        missed: decode(row, "missed")?,
        overlap: rows::get::<String>(row, "overlap", T)?
            .parse()
            .map_err(|e| rows::corrupt(T, format!("overlap: {e}")))?,
        done_until: rows::get(row, "done_until", T)?,
        last_fired: rows::get(row, "last_fired", T)?,
        last_manual: rows::get(row, "last_manual", T)?,
        last_manual_at: rows::get(row, "last_manual_at", T)?,
        last_claimed_at: rows::get(row, "last_claimed_at", T)?,
        next_slot: rows::get(row, "next_slot", T)?,
        created_at: rows::get(row, "created_at", T)?,
        updated_at: rows::get(row, "updated_at", T)?,
    })
}

/// A JSON column decoded into its model type.
fn decode<T: serde::de::DeserializeOwned>(row: &PgRow, col: &str) -> R<T> {
    let v: serde_json::Value = rows::get(row, col, "schedules")?;
    serde_json::from_value(v).map_err(|e| rows::corrupt("schedules", format!("{col}: {e}")))
}

fn to_json<T: serde::Serialize>(col: &str, v: &T) -> R<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Database(format!("{col}: {e}")).into())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds a schedule's definition and progress, in the order both its insert and its
/// replacement list them ($1 … $7).
fn bind_row<'q>(q: Query<'q>, s: &'q Schedule) -> R<Query<'q>> {
    let task = s
        .creates
        .to_stored()
        .map_err(|e| Error::Database(format!("task: {e}")))?;
    Ok(q.bind(&s.cron)
        .bind(&s.timezone)
        .bind(task)
        .bind(to_json("missed", &s.missed)?)
        .bind(s.overlap.as_str())
        .bind(s.done_until)
        .bind(s.next_slot))
}

impl PostgresStore {
    pub(super) async fn insert_schedule_once(&self, s: &Schedule) -> R<()> {
        let insert = sqlx::query(
            "INSERT INTO schedules (cron, timezone, task, missed, overlap, done_until, next_slot, \
             enabled, last_fired, name, created_at, updated_at, last_manual, last_manual_at, \
             last_claimed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (name) DO NOTHING",
        );
        let inserted = bind_row(insert, s)?
            .bind(s.enabled)
            .bind(s.last_fired)
            .bind(&s.name)
            .bind(s.created_at)
            .bind(s.updated_at)
            .bind(s.last_manual.as_deref())
            .bind(s.last_manual_at)
            .bind(s.last_claimed_at)
            .execute(&self.pool)
            .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::Conflict(format!("a schedule named `{}` exists", s.name)).into());
        }
        Ok(())
    }

    pub(super) async fn read_schedule(&self, name: &str) -> R<Option<Schedule>> {
        let row = sqlx::query("SELECT * FROM schedules WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub(super) async fn read_schedules(&self) -> R<Vec<Schedule>> {
        let found = sqlx::query("SELECT * FROM schedules ORDER BY name COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?;
        found.iter().map(from_row).collect()
    }

    /// Task and plan statuses share their terminal names.
    pub(super) async fn read_unfinished_by_key(&self, keys: &[String]) -> R<bool> {
        const UNFINISHED: &str = concat!(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE idempotency_key = ANY($1) AND status NOT IN ",
            terminal_statuses!(),
            ") OR EXISTS (SELECT 1 FROM plans p WHERE p.idempotency_key = ANY($1) \
             AND (p.status NOT IN ",
            terminal_statuses!(),
            " OR EXISTS (SELECT 1 FROM tasks t WHERE t.plan_id = p.id AND t.status NOT IN ",
            terminal_statuses!(),
            ")))"
        );
        let unfinished: bool = sqlx::query_scalar(UNFINISHED)
            .bind(keys)
            .fetch_one(&self.pool)
            .await?;
        Ok(unfinished)
    }

    pub(super) async fn read_keyed_work(&self, keys: &[String]) -> R<HashMap<String, KeyedWork>> {
        let rows = sqlx::query(
            "SELECT 'task' AS kind, idempotency_key AS key, id, status FROM tasks \
             WHERE idempotency_key = ANY($1) \
             UNION ALL SELECT 'plan', idempotency_key, id, status FROM plans \
             WHERE idempotency_key = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: String = rows::get(row, "key", "tasks")?;
            let kind: String = rows::get(row, "kind", "tasks")?;
            let id: uuid::Uuid = rows::get(row, "id", "tasks")?;
            let work = if kind == "task" {
                let status = rows::task_status(row, "status")?;
                KeyedWork::Task {
                    id: hive_models::TaskId(id),
                    status,
                }
            } else {
                let status = rows::plan_status(row, "status")?;
                KeyedWork::Plan {
                    id: hive_models::PlanId(id),
                    status,
                }
            };
            work.keep_in(&mut found, key);
        }
        Ok(found)
    }

    pub(super) async fn claim_slot_once(&self, read: &Schedule, slot: Timestamp) -> R<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET last_fired = $1, updated_at = now(), \
                 last_claimed_at = CASE WHEN last_fired = $1 THEN last_claimed_at ELSE now() END \
             WHERE name = $2 AND (last_fired = $1 OR (enabled AND done_until = $5 \
                                                   AND last_fired IS NOT DISTINCT FROM $3 \
                                                   AND last_manual IS NOT DISTINCT FROM $4))",
        )
        .bind(slot)
        .bind(&read.name)
        .bind(read.last_fired)
        .bind(read.last_manual.as_deref())
        .bind(read.done_until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn note_manual_run_once(&self, name: &str, key: &str) -> R<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET last_manual = $1, last_manual_at = now(), updated_at = now() \
             WHERE name = $2",
        )
        .bind(key)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn read_due_schedules(&self, now: Timestamp) -> R<Vec<Schedule>> {
        let found = sqlx::query(
            "SELECT * FROM schedules WHERE enabled AND next_slot <= $1 ORDER BY name COLLATE \"C\"",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(from_row).collect()
    }

    pub(super) async fn delete_schedule_once(&self, name: &str) -> R<bool> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn replace_schedule_once(&self, s: &Schedule, from: Timestamp) -> R<bool> {
        let replace = sqlx::query(
            "UPDATE schedules SET cron = $1, timezone = $2, task = $3, missed = $4, \
             overlap = $5, done_until = $6, next_slot = $7, updated_at = now() \
             WHERE name = $8 AND done_until = $9",
        );
        let done = bind_row(replace, s)?
            .bind(&s.name)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn advance_schedule_once(&self, a: &ScheduleAdvance) -> R<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET done_until = $1, last_fired = greatest($2, last_fired), \
             next_slot = $3, enabled = coalesce($4, enabled), updated_at = now() \
             WHERE name = $5 AND done_until = $6 \
               AND NOT (last_fired IS NOT NULL AND last_fired > $6 AND last_fired <= $1 \
                        AND ($2::timestamptz IS NULL OR $2 < last_fired))",
        )
        .bind(a.to)
        .bind(a.last_fired)
        .bind(a.next_slot)
        .bind(a.enabled)
        .bind(&a.name)
        .bind(a.from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
