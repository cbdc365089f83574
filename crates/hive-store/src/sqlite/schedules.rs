//! Schedules on SQLite: one row each; `done_until` moves compare-and-set.

use std::collections::HashMap;

use hive_models::{Schedule, Scheduled, Timestamp};
use sqlx::sqlite::SqliteRow;

use super::db::{self, Cols, Conn, R, to_json, us};
use crate::{Error, KeyedWork, ScheduleAdvance};

macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT name, cron, timezone, task, enabled, missed, overlap, done_until, \
             last_fired, last_manual, last_manual_at, last_claimed_at, next_slot, created_at, \
             updated_at FROM schedules ",
            $rest
        )
    };
}

fn from_row(row: &SqliteRow) -> R<Schedule> {
    let c = Cols::new(row, "schedules");
    Ok(Schedule {
        name: c.get("name")?,
        cron: c.get("cron")?,
        timezone: c.get("timezone")?,
        creates: Scheduled::from_stored(c.json("task")?)
            .map_err(|e| db::corrupt("schedules", format!("column `task`: {e}")))?,
        enabled: c.get("enabled")?,
        missed: c.json("missed")?,
        overlap: c
            .get::<String>("overlap")?
            .parse()
            .map_err(|e| db::corrupt("schedules", format!("column `overlap`: {e}")))?,
        done_until: c.ts("done_until")?,
        last_fired: c.ts_opt("last_fired")?,
        last_manual: c.get("last_manual")?,
        last_manual_at: c.ts_opt("last_manual_at")?,
        last_claimed_at: c.ts_opt("last_claimed_at")?,
        next_slot: c.ts_opt("next_slot")?,
        created_at: c.ts("created_at")?,
        updated_at: c.ts("updated_at")?,
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds a schedule's definition and progress, in the order both its insert and its
/// replacement list them (?1 … ?7).
fn bind_row<'q>(q: Query<'q>, s: &'q Schedule) -> R<Query<'q>> {
    let task = s
        .creates
        .to_stored()
        .map_err(|e| db::corrupt("schedules", format!("column `task`: {e}")))?;
    Ok(q.bind(&s.cron)
        .bind(&s.timezone)
        .bind(to_json("task", &task)?)
        .bind(to_json("missed", &s.missed)?)
        .bind(s.overlap.as_str())
        .bind(us(s.done_until))
        .bind(s.next_slot.map(us)))
}

pub(super) async fn insert(c: &mut Conn, s: &Schedule) -> R<()> {
    let insert = sqlx::query(
        "INSERT INTO schedules (cron, timezone, task, missed, overlap, done_until, next_slot, \
         enabled, last_fired, name, created_at, updated_at, last_manual, last_manual_at, \
         last_claimed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
         ON CONFLICT (name) DO NOTHING",
    );
    let inserted = bind_row(insert, s)?
        .bind(s.enabled)
        .bind(s.last_fired.map(us))
        .bind(&s.name)
        .bind(us(s.created_at))
        .bind(us(s.updated_at))
        .bind(s.last_manual.as_deref())
        .bind(s.last_manual_at.map(us))
        .bind(s.last_claimed_at.map(us))
        .execute(&mut *c)
        .await?;
    if inserted.rows_affected() == 0 {
        return Err(Error::Conflict(format!("a schedule named `{}` exists", s.name)).into());
    }
    Ok(())
}

pub(super) async fn get(c: &mut Conn, name: &str) -> R<Option<Schedule>> {
    let row = sqlx::query(select!("WHERE name = ?1"))
        .bind(name)
        .fetch_optional(&mut *c)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub(super) async fn list(c: &mut Conn) -> R<Vec<Schedule>> {
    let rows = sqlx::query(select!("ORDER BY name"))
        .fetch_all(&mut *c)
        .await?;
    rows.iter().map(from_row).collect()
}

pub(super) async fn unfinished_by_key(c: &mut Conn, keys: &[String]) -> R<bool> {
    let unfinished: bool = sqlx::query_scalar(
        "WITH k(key) AS (SELECT value FROM json_each(?1)) \
         SELECT EXISTS (SELECT 1 FROM tasks WHERE idempotency_key IN (SELECT key FROM k) \
                        AND status NOT IN ('completed', 'failed', 'cancelled')) \
             OR EXISTS (SELECT 1 FROM plans p WHERE p.idempotency_key IN (SELECT key FROM k) \
                        AND (p.status NOT IN ('completed', 'failed', 'cancelled') \
                             OR EXISTS (SELECT 1 FROM tasks t WHERE t.plan_id = p.id \
                                        AND t.status NOT IN ('completed', 'failed', 'cancelled'))))",
    )
    .bind(db::json_list(keys))
    .fetch_one(&mut *c)
    .await?;
    Ok(unfinished)
}

pub(super) async fn keyed_work(c: &mut Conn, keys: &[String]) -> R<HashMap<String, KeyedWork>> {
    let rows = sqlx::query(
        "SELECT 'task' AS kind, idempotency_key AS key, id, status FROM tasks \
         WHERE idempotency_key IN (SELECT value FROM json_each(?1)) \
         UNION ALL SELECT 'plan', idempotency_key, id, status FROM plans \
         WHERE idempotency_key IN (SELECT value FROM json_each(?1))",
    )
    .bind(db::json_list(keys))
    .fetch_all(&mut *c)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let c = Cols::new(row, "tasks");
        let key: String = c.get("key")?;
        let work = if c.get::<String>("kind")? == "task" {
            KeyedWork::Task {
                id: c.parse("id")?,
                status: c.parse("status")?,
            }
        } else {
            KeyedWork::Plan {
                id: c.parse("id")?,
                status: c.parse("status")?,
            }
        };
        work.keep_in(&mut found, key);
    }
    Ok(found)
}

pub(super) async fn claim_slot(c: &mut Conn, read: &Schedule, slot: Timestamp) -> R<bool> {
    let at = db::db_now(c).await?;
    let done = sqlx::query(
        "UPDATE schedules SET last_fired = ?1, updated_at = ?2, \
             last_claimed_at = CASE WHEN last_fired = ?1 THEN last_claimed_at ELSE ?2 END \
         WHERE name = ?3 AND (last_fired = ?1 \
                              OR (enabled AND done_until = ?6 AND last_fired IS ?4 \
                                  AND last_manual IS ?5))",
    )
    .bind(us(slot))
    .bind(at)
    .bind(&read.name)
    .bind(read.last_fired.map(us))
    .bind(read.last_manual.as_deref())
    .bind(us(read.done_until))
    .execute(&mut *c)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn note_manual_run(c: &mut Conn, name: &str, key: &str) -> R<bool> {
    let at = db::db_now(c).await?;
    let done = sqlx::query(
        "UPDATE schedules SET last_manual = ?1, last_manual_at = ?2, updated_at = ?2 \
             WHERE name = ?3",
    )
    .bind(key)
    .bind(at)
    .bind(name)
    .execute(&mut *c)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn due(c: &mut Conn, now: Timestamp) -> R<Vec<Schedule>> {
    let rows = sqlx::query(select!(
        "WHERE enabled = 1 AND next_slot <= ?1 ORDER BY name"
    ))
    .bind(us(now))
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(from_row).collect()
}

pub(super) async fn delete(c: &mut Conn, name: &str) -> R<bool> {
    let done = sqlx::query("DELETE FROM schedules WHERE name = ?1")
        .bind(name)
        .execute(&mut *c)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn replace(c: &mut Conn, s: &Schedule, from: Timestamp) -> R<bool> {
    let at = db::db_now(c).await?;
    let replace = sqlx::query(
        "UPDATE schedules SET cron = ?1, timezone = ?2, task = ?3, missed = ?4, overlap = ?5, \
         done_until = ?6, next_slot = ?7, updated_at = ?8 \
         WHERE name = ?9 AND done_until = ?10",
    );
    let done = bind_row(replace, s)?
        .bind(at)
        .bind(&s.name)
        .bind(us(from))
        .execute(&mut *c)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn advance(c: &mut Conn, a: &ScheduleAdvance) -> R<bool> {
    let at = db::db_now(c).await?;
    let done = sqlx::query(
        "UPDATE schedules SET done_until = ?1, \
         last_fired = CASE WHEN last_fired IS NULL OR ?2 > last_fired THEN ?2 ELSE last_fired END, \
         next_slot = ?3, enabled = COALESCE(?4, enabled), updated_at = ?5 \
         WHERE name = ?6 AND done_until = ?7 \
           AND NOT (last_fired IS NOT NULL AND last_fired > ?7 AND last_fired <= ?1 \
                    AND (?2 IS NULL OR ?2 < last_fired))",
    )
    .bind(us(a.to))
    .bind(a.last_fired.map(us))
    .bind(a.next_slot.map(us))
    .bind(a.enabled)
    .bind(at)
    .bind(&a.name)
    .bind(us(a.from))
    .execute(&mut *c)
    .await?;
    Ok(done.rows_affected() > 0)
}
