//! Shared plumbing of the SQLite backend: error mapping, the database clock, row decoding.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hive_models::{
    ExecutionPlan, Json, PlanCounters, PlanHeader, PlanId, PlanStatus, Run, RunId, SubTask, Task,
    TaskId, Timestamp, Worker, WorkerId,
};
use serde::de::DeserializeOwned;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::Error;

/// The connection a write runs on: the writer's open `BEGIN IMMEDIATE` transaction.
pub(super) type Conn = SqliteConnection;

pub(super) use crate::sql::{Fail, R};

impl Fail {
    pub(super) fn into_error(self, target: &str) -> Error {
        match self {
            Fail::Store(e) => e,
            Fail::Sql(e) => map_sqlx(target, e),
        }
    }
}

/// SQLite primary result codes this module tells apart (the low byte of extended codes).
mod code {
    pub const BUSY: i64 = 5;
    pub const LOCKED: i64 = 6;
    pub const READONLY: i64 = 8;
    pub const IOERR: i64 = 10;
    pub const CORRUPT: i64 = 11;
    pub const FULL: i64 = 13;
    pub const CANTOPEN: i64 = 14;
    pub const NOTADB: i64 = 26;
    pub const PROTOCOL: i64 = 15;
    pub const NOMEM: i64 = 7;
    pub const TOOBIG: i64 = 18;
    pub const CONSTRAINT: i64 = 19;
    pub const MISMATCH: i64 = 20;
    pub const RANGE: i64 = 25;
}

/// Maps a driver error of a store already open to a portable variant. `target` is the
/// database path, which carries no credentials. A file that cannot be opened now (a pool
/// reconnecting, out of file handles, a moment's I/O error) opened before, so that is
/// transient here; opening the store maps it with [`map_opening`].
pub(super) fn map_sqlx(target: &str, e: sqlx::Error) -> Error {
    let target = target.to_owned();
    crate::sql::map_driver(e, &target.clone(), move |db| {
        let message = db.message().to_owned();
        match primary(&*db) {
            code::BUSY | code::LOCKED => Error::Unavailable {
                target,
                reason: format!("database is locked by another writer: {message}"),
            },
            code::FULL => Error::StorageFull {
                target,
                reason: message,
            },
            // PROTOCOL is the WAL index's documented race, to be retried; NOMEM passes.
            code::IOERR | code::CANTOPEN | code::PROTOCOL | code::NOMEM => Error::Unavailable {
                target,
                reason: message,
            },
            code::READONLY => Error::Misconfigured {
                target,
                reason: format!("{message} (the file or its directory is read-only)"),
            },
            code::CORRUPT | code::NOTADB => Error::Corrupt {
                table: "database",
                reason: message,
            },
            _ if db.is_unique_violation() => Error::Conflict(message),
            code::TOOBIG | code::CONSTRAINT | code::MISMATCH | code::RANGE => {
                Error::Rejected(message)
            }
            _ => Error::Database(message),
        }
    })
}

/// Maps a driver error met while opening the store: a file that cannot be opened then is
/// the operator's to fix (a missing directory, permissions), not something to wait out.
pub(super) fn map_opening(target: &str, e: sqlx::Error) -> Error {
    if primary_code(&e) == code::CANTOPEN {
        let message = match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        return Error::Misconfigured {
            target: target.to_owned(),
            reason: format!(
                "{message} (does the file's directory exist, and may this user open it?)"
            ),
        };
    }
    map_sqlx(target, e)
}

/// The primary result code of an error SQLite returned (the low byte of extended codes).
fn primary(db: &dyn sqlx::error::DatabaseError) -> i64 {
    db.code()
        .and_then(|c| c.parse::<i64>().ok())
        .map_or(0, |c| c & 0xff)
}

/// The primary result code of a SQLite error, 0 for other errors.
fn primary_code(e: &sqlx::Error) -> i64 {
    match e {
        sqlx::Error::Database(db) => primary(&**db),
        _ => 0,
    }
}

/// Another connection holds the lock (past the busy timeout).
pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), code::BUSY | code::LOCKED)
}

/// The file (or the directory its shared-memory file needs) cannot be written.
pub(super) fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(primary_code(e), code::READONLY | code::CANTOPEN)
}

/// The database clock, read once per transaction so all its changes share one instant.
pub(super) async fn db_now(c: &mut Conn) -> R<i64> {
    let sql = concat!("SELECT ", now_us!());
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await?)
}

/// The latest instant chrono represents, so sums of timestamps and long leases saturate
/// instead of overflowing.
fn max_us() -> i64 {
    DateTime::<Utc>::MAX_UTC.timestamp_micros()
}

fn min_us() -> i64 {
    DateTime::<Utc>::MIN_UTC.timestamp_micros()
}

pub(super) fn dur_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(super) fn add_us(at: i64, d: Duration) -> i64 {
    at.saturating_add(dur_us(d)).min(max_us())
}

pub(super) fn sub_us(at: i64, d: Duration) -> i64 {
    at.saturating_sub(dur_us(d)).max(min_us())
}

pub(super) fn us(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub(super) fn ts(table: &'static str, v: i64) -> R<Timestamp> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| corrupt(table, format!("timestamp {v} out of range")))
}

pub(super) fn corrupt(table: &'static str, reason: impl Into<String>) -> Fail {
    Fail::Store(Error::Corrupt {
        table,
        reason: reason.into(),
    })
}

pub(super) fn to_json<T: serde::Serialize + ?Sized>(field: &str, v: &T) -> R<String> {
    serde_json::to_string(v).map_err(|e| {
        Fail::from(hive_models::Error::InvalidField {
            field: field.into(),
            reason: format!("cannot be stored as JSON: {e}"),
        })
    })
}

/// A JSON array of ids (or any strings), bound as one parameter and read with `json_each`,
/// so a list of any length is one statement with one bind.
pub(super) fn json_list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    // Serialising a list of strings cannot fail.
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

/// Typed column access that reports failures as corrupt rows of a named table.
pub(super) struct Cols<'r> {
    pub row: &'r SqliteRow,
    pub table: &'static str,
}

impl<'r> Cols<'r> {
    pub fn new(row: &'r SqliteRow, table: &'static str) -> Self {
        Cols { row, table }
    }

    pub fn get<T>(&self, col: &str) -> R<T>
    where
        T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    {
        self.row
            .try_get::<T, _>(col)
            .map_err(|e| corrupt(self.table, format!("column `{col}`: {e}")))
    }

    pub fn u32(&self, col: &str) -> R<u32> {
        let v: i64 = self.get(col)?;
        u32::try_from(v)
            .map_err(|_| corrupt(self.table, format!("column `{col}`: {v} is not a u32")))
    }

    pub fn ts(&self, col: &str) -> R<Timestamp> {
        ts(self.table, self.get(col)?)
    }

    pub fn ts_opt(&self, col: &str) -> R<Option<Timestamp>> {
        self.get::<Option<i64>>(col)?
            .map(|v| ts(self.table, v))
            .transpose()
    }

    pub fn parse<T: FromStr>(&self, col: &str) -> R<T>
    where
        T::Err: std::fmt::Display,
    {
        let s: String = self.get(col)?;
        s.parse::<T>()
            .map_err(|e| corrupt(self.table, format!("column `{col}`: {e}")))
    }

    pub fn parse_opt<T: FromStr>(&self, col: &str) -> R<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.get::<Option<String>>(col)? {
            None => Ok(None),
            Some(s) => s
                .parse::<T>()
                .map(Some)
                .map_err(|e| corrupt(self.table, format!("column `{col}`: {e}"))),
        }
    }

    pub fn json<T: DeserializeOwned>(&self, col: &str) -> R<T> {
        let s: String = self.get(col)?;
        serde_json::from_str(&s).map_err(|e| corrupt(self.table, format!("column `{col}`: {e}")))
    }

    pub fn json_opt<T: DeserializeOwned>(&self, col: &str) -> R<Option<T>> {
        match self.get::<Option<String>>(col)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| corrupt(self.table, format!("column `{col}`: {e}"))),
        }
    }
}

pub(super) fn task_from_row(row: &SqliteRow) -> R<Task> {
    let c = Cols::new(row, "tasks");
    let deps: Vec<String> = c.json("deps")?;
    let dependencies = deps
        .iter()
        .map(|d| d.parse::<TaskId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt("task_dependencies", e.to_string()))?;
    Ok(Task {
        id: c.parse("id")?,
        title: c.get("title")?,
        description: c.get("description")?,
        task_type: c.get("task_type")?,
        priority: c.get("priority")?,
        status: c.parse("status")?,
        current_phase: c.get("current_phase")?,
        workflow: c.json_opt::<Json>("workflow")?,
        payload: c.json("payload")?,
        assigned_worker: c.get::<Option<String>>("assigned_worker")?.map(WorkerId),
        due_date: c.ts_opt("due_date")?,
        max_retries: c.u32("max_retries")?,
        retry_policy: c.json_opt("retry_policy")?,
        parent_task_id: c.parse_opt("parent_task_id")?,
        plan_id: c.parse_opt("plan_id")?,
        plan_subtask_id: c.get("plan_subtask_id")?,
        dependencies,
        pending_dependencies: c.u32("pending_deps")?,
        tags: c.json("tags")?,
        metadata: c.json("metadata")?,
        run_at: c.ts_opt("run_at")?,
        timeout_secs: c
            .get::<Option<i64>>("timeout_secs")?
            .map(|t| t.clamp(1, u32::MAX.into()) as u32),
        delay_secs: c.get::<i64>("delay_secs")?.max(0) as u64,
        attempts: c.u32("attempts")?,
        current_run_id: c.parse_opt("current_run_id")?,
        idempotency_key: c.get("idempotency_key")?,
        concurrency_key: c.get("concurrency_key")?,
        concurrency_limit: c
            .get::<Option<i64>>("concurrency_limit")?
            .map(|n| n.clamp(1, u32::MAX.into()) as u32),
        result: c.json_opt::<Json>("result")?,
        last_error: c.get("last_error")?,
        created_at: c.ts("created_at")?,
        updated_at: c.ts("updated_at")?,
    })
}

/// The row a statement with one parameter (`?1`, an id) selects, decoded.
pub(super) async fn one<T>(
    c: &mut Conn,
    sql: &'static str,
    id: impl ToString,
    decode: fn(&SqliteRow) -> R<T>,
) -> R<Option<T>> {
    let row = sqlx::query(sql)
        .bind(id.to_string())
        .fetch_optional(c)
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Every row a statement with one parameter (`?1`, an id) selects, decoded.
pub(super) async fn all<T>(
    c: &mut Conn,
    sql: &'static str,
    id: impl ToString,
    decode: fn(&SqliteRow) -> R<T>,
) -> R<Vec<T>> {
    let rows = sqlx::query(sql).bind(id.to_string()).fetch_all(c).await?;
    rows.iter().map(decode).collect()
}

pub(super) async fn fetch_task(c: &mut Conn, id: TaskId) -> R<Option<Task>> {
    let sql = concat!("SELECT ", task_columns!(), " FROM tasks t WHERE t.id = ?1");
    one(c, sql, id, task_from_row).await
}

pub(super) async fn fetch_tasks(c: &mut Conn, ids: &[TaskId]) -> R<Vec<Task>> {
    let sql = concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks t WHERE t.id IN (SELECT value FROM json_each(?1)) ORDER BY t.seq"
    );
    let rows = sqlx::query(sql).bind(json_list(ids)).fetch_all(c).await?;
    rows.iter().map(task_from_row).collect()
}

pub(super) fn run_from_row(row: &SqliteRow) -> R<Run> {
    let c = Cols::new(row, "runs");
    Ok(Run {
        id: c.parse::<RunId>("id")?,
        task_id: c.parse("task_id")?,
        worker_id: WorkerId(c.get("worker_id")?),
        run_number: c.u32("run_number")?,
        status: c.parse("status")?,
        phase: c.get("phase")?,
        started_at: c.ts("started_at")?,
        completed_at: c.ts_opt("completed_at")?,
        lease_expires_at: c.ts_opt("lease_expires_at")?,
        result_data: c.json_opt::<Json>("result_data")?,
        error_message: c.get("error_message")?,
        output_log: c.get("output_log")?,
        transcript: c.get("transcript")?,
        progress: match c.get::<Option<f64>>("progress")? {
            Some(fraction) => Some(hive_models::Progress {
                fraction,
                message: c.get("progress_message")?,
                at: c.ts("progress_at")?,
            }),
            None => None,
        },
        created_at: c.ts("created_at")?,
        updated_at: c.ts("updated_at")?,
    })
}

pub(super) fn worker_from_row(row: &SqliteRow) -> R<Worker> {
    let c = Cols::new(row, "workers");
    Ok(Worker {
        id: WorkerId(c.get("id")?),
        role: c.get("role")?,
        status: c.parse("status")?,
        last_heartbeat: c.ts("last_heartbeat")?,
        capabilities: c.json("capabilities")?,
        current_task_id: c.parse_opt("current_task_id")?,
        registered_at: c.ts("registered_at")?,
        metadata: c.json("metadata")?,
        status_reason: c.get("status_reason")?,
    })
}

/// A plan row and its subtasks (see [`super::plans::specs`]) as one [`ExecutionPlan`].
pub(super) fn plan_from_row(row: &SqliteRow, subtasks: Vec<SubTask>) -> R<ExecutionPlan> {
    Ok(ExecutionPlan::from_header(plan_header(row)?, subtasks))
}

/// A plan row without its subtasks.
pub(super) fn plan_header(row: &SqliteRow) -> R<PlanHeader> {
    let c = Cols::new(row, "plans");
    let counters = plan_counters(&c)?;
    Ok(PlanHeader {
        id: c.parse::<PlanId>("id")?,
        title: c.get("title")?,
        description: c.get("description")?,
        parent_task_id: c.parse_opt("parent_task_id")?,
        status: counters.status,
        total_subtasks: counters.total,
        completed_subtasks: counters.completed,
        failed_subtasks: counters.failed,
        cancelled_subtasks: counters.cancelled,
        materialized: c.get::<i64>("materialized")? != 0,
        metadata: c.json("metadata")?,
        idempotency_key: c.get("idempotency_key")?,
        created_at: c.ts("created_at")?,
        updated_at: c.ts("updated_at")?,
    })
}

/// A plan row's status and counters.
pub(super) fn plan_counters(c: &Cols<'_>) -> R<PlanCounters> {
    Ok(PlanCounters {
        status: c.parse::<PlanStatus>("status")?,
        total: c.u32("total_subtasks")?,
        completed: c.u32("completed_subtasks")?,
        failed: c.u32("failed_subtasks")?,
        cancelled: c.u32("cancelled_subtasks")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that cannot be opened is the operator's to fix when the store opens, and a
    /// fault to wait out once it is open (a reconnect failing for a moment).
    #[tokio::test]
    async fn a_file_that_cannot_be_opened_is_misconfigured_only_while_opening() {
        use sqlx::ConnectOptions as _;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename("/nonexistent-hive-dir/hive.db")
            .create_if_missing(true);
        let e = || async { opts.connect().await.unwrap_err() };
        assert!(
            matches!(map_opening("t", e().await), Error::Misconfigured { .. }),
            "opening"
        );
        let open = map_sqlx("t", e().await);
        assert!(open.is_transient(), "{open}");
    }

    /// The start delay counted from a dependency's completion is capped as the models
    /// cap it, so its sum with the clock cannot overflow.
    #[test]
    fn a_freed_dependents_delay_is_capped_at_the_models_maximum() {
        let sql = super::super::tasks::count_dependents_down!();
        let cap = format!("MIN(delay_secs, {})", hive_models::MAX_DELAY_SECS);
        assert!(sql.contains(&cap), "{sql}");
    }
}
