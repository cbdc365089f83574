//! The SQL pieces the Postgres modules share: column lists, the notification channel, and
//! the conversions every statement needs.

/// The channel a store NOTIFYs and LISTENs on, as an SQL expression: one per schema, so
/// Hive deployments sharing a database in different schemas never wake each other. Every
/// `pg_notify` names its channel with exactly this text (a test checks), and the listener
/// listens on the value a pooled connection gives (the pool's connect hooks may set the
/// schema; the listener's own connection does not run them). A channel name has at most 63 bytes: a schema
/// name longer than 50 bytes is replaced by its MD5 digest (so two long names sharing a
/// beginning do not share a channel, and a name of multi-byte characters fits).
macro_rules! channel_sql {
    () => {
        "'hive_events:' || CASE WHEN octet_length(current_schema()) <= 50 \
            THEN current_schema() ELSE md5(current_schema()) END"
    };
}

/// The terminal task statuses, as an SQL list.
macro_rules! terminal_statuses {
    () => {
        "('completed', 'failed', 'cancelled')"
    };
}

/// The `SET` clause that counts `$n` (an SQL expression) dependencies of the task `t` done:
/// one left waiting for nothing starts its start delay now. Every caller updates only tasks
/// still waiting (`pending_deps > 0`): one waiting for nothing already is neither delayed
/// again nor announced again (the memory store's rule).
macro_rules! count_down {
    ($n:expr) => {
        concat!(
            "pending_deps = greatest(t.pending_deps - (",
            $n,
            "), 0), updated_at = CASE WHEN t.status = 'queued' THEN now() \
                 ELSE t.updated_at END, run_at = CASE WHEN t.delay_secs > 0 AND t.pending_deps > 0 \
                 AND t.pending_deps <= (",
            $n,
            ") THEN now() + t.delay_secs * interval '1 second' ELSE t.run_at END"
        )
    };
}

/// After a [`count_down`], whether the task `t` is claimable at once (a delayed one is not
/// announced: workers find it when its delay is over).
macro_rules! freed {
    () => {
        "t.pending_deps = 0 AND t.status = 'queued' AND t.delay_secs = 0"
    };
}

/// The countdown of the dependents a CTE named `dec` (`id`, `n`) lists, restricted to the
/// ids `$among` selects and by `$also` (more SQL conditions on `t`, or ""): each counted
/// down by `n` while it still waits, returning its id and whether that freed it.
macro_rules! count_dec_down {
    ($among:literal, $also:literal) => {
        concat!(
            "UPDATE tasks t SET ",
            count_down!("dec.n"),
            " FROM dec WHERE t.id = dec.id AND t.id = ANY(ARRAY(",
            $among,
            ")) ",
            $also,
            " AND t.pending_deps > 0 RETURNING t.id, ",
            freed!(),
            " AS ready"
        )
    };
}

/// Every task query selects `t.*` plus this, so the row carries the task's dependency list
/// in the order the dependencies were declared.
macro_rules! task_dependencies {
    () => {
        "ARRAY(SELECT d.depends_on FROM task_dependencies d WHERE d.task_id = t.id \
         ORDER BY d.position) AS dependencies"
    };
}

/// The `SELECT` of full task rows (alias `t`); callers append `WHERE` and `ORDER BY`.
macro_rules! select_tasks {
    () => {
        concat!("SELECT t.*, ", task_dependencies!(), " FROM tasks t ")
    };
}

/// The payloads of the rows of `$rows` (an SQL query), `$per` to a payload, each built by
/// `$payload`, an aggregate over the group's rows (alias `x`, numbered in `x.rn`); as rows
/// `p`. `notify` sends them with `pg_notify` and yields one row, `n`, the payloads sent;
/// `later` yields one row, `p`, the payloads as a `text[]`, for a caller to publish after
/// commit ([`super::publish`]).
macro_rules! notify_grouped {
    (notify, $rows:expr, $per:literal, $payload:expr) => {
        concat!(
            "SELECT count(pg_notify(",
            channel_sql!(),
            ", c.p)) AS n FROM (",
            notify_grouped!(rows, $rows, $per, $payload),
            ") c"
        )
    };
    (later, $rows:expr, $per:literal, $payload:expr) => {
        concat!(
            "SELECT coalesce(array_agg(c.p), '{}'::text[]) AS p FROM (",
            notify_grouped!(rows, $rows, $per, $payload),
            ") c"
        )
    };
    (rows, $rows:expr, $per:literal, $payload:expr) => {
        concat!(
            "SELECT ",
            $payload,
            " AS p FROM (SELECT s.*, row_number() OVER () AS rn FROM (",
            $rows,
            ") s) x GROUP BY (x.rn - 1) / ",
            $per
        )
    };
}

/// Sends one notification per row of `$rows` as JSON arrays of up to 20 (each well under
/// Postgres's 8000-byte payload limit): one NOTIFY per 20 changes rather than per change,
/// which keeps commits of large batches cheap. `$object` builds one notification from the
/// row's columns (alias `x`). With `later` first, yields the payloads instead of sending
/// them (see [`notify_grouped`]).
macro_rules! notify_rows {
    ($how:ident, $rows:expr, $object:expr) => {
        notify_grouped!($how, $rows, "20", concat!("json_agg(", $object, ")::text"))
    };
    ($rows:expr, $object:expr) => {
        notify_rows!(notify, $rows, $object)
    };
}

/// Notifies one change of many tasks compactly: JSON objects of `$header` (an SQL text
/// expression opening the object with its `origin`, `kind` and any shared fields) and
/// `"tasks"`, up to 50 `[task_id, run_id, plan_id]` rows of `$rows` (an SQL query with those
/// columns) each, which [`super::listen`] expands into one notification per task. Claims and
/// completions are most of a drain's notifications: built by concatenation rather than one
/// `json_build_object` per task, and 50 to a NOTIFY rather than 20, they cost about half as
/// much (~5% of a drain's database time). 50 rows of three quoted uuids and a 200-character
/// worker id stay under Postgres's 8000-byte payload limit. `$how` as in [`notify_grouped`].
macro_rules! notify_task_rows {
    ($how:ident, $rows:expr, $header:expr) => {
        notify_grouped!(
            $how,
            $rows,
            "50",
            concat!(
                $header,
                " || ',\"tasks\":[' || string_agg('[\"' || x.task_id || '\",\"' || x.run_id \
                     || '\",' || coalesce('\"' || x.plan_id || '\"', 'null') || ']', ',' \
                     ORDER BY x.rn) || ']}'"
            )
        )
    };
}

/// The columns [`super::replay::state_from_row`] reads, from `tasks t`.
macro_rules! state_columns {
    () => {
        "t.id AS task_id, t.status AS task_status, t.seq, t.current_run_id, t.plan_id, \
         t.attempts, t.max_retries, t.retry_policy, t.snoozes"
    };
}

/// [`state_columns`] plus the run's id and status and the clock, from `runs r JOIN tasks t`.
macro_rules! locked_run_columns {
    () => {
        concat!(
            "r.id AS run_id, r.status AS run_status, ",
            state_columns!(),
            ", now() AS now"
        )
    };
}

use std::time::Duration;

use hive_models::Timestamp;
use sqlx::postgres::PgRow;

use super::rows;
use crate::sql::{Fail, R};
use crate::{Error, Notification};

/// Durations are capped at about 1000 years, so `now() ± d` stays a valid timestamp.
const MAX_DAYS: i64 = 365_250;
pub(super) const MAX_MICROS: i64 = MAX_DAYS * 86_400 * 1_000_000;

/// Opens the transaction of a write that finds its rows by key (finishing and releasing
/// runs). Its statements are prepared once per connection, and Postgres settles on one
/// generic plan after a few calls: made while `runs` is small, that plan scans it whole,
/// and keeps scanning as it grows until the next ANALYZE. Planned with sequential scans
/// off, every plan looks rows up by their keys, whatever the statistics said then. JIT is
/// off too: a scan that cannot be avoided (a tiny table's) then costs the plan a penalty
/// that would otherwise buy a JIT compile of a third of a second per statement.
pub(super) async fn begin_by_key(
    pool: &sqlx::PgPool,
) -> R<sqlx::Transaction<'static, sqlx::Postgres>> {
    Ok(pool
        .begin_with(
            "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL jit = off; \
             SET LOCAL plan_cache_mode = force_generic_plan",
        )
        .await?)
}

/// Ends `tx` before its call returns: commits it after `out` succeeded, rolls it back after
/// a failure (whose error is the one to report). A transaction handle merely dropped is
/// rolled back by sqlx later, from a task it spawns, and the transaction's row locks outlive
/// the call meanwhile: under load a prune right after a refused `retry_plan` skipped the
/// plan the retry had locked, and a claim would skip such tasks the same way.
pub(super) async fn end<T>(tx: sqlx::Transaction<'_, sqlx::Postgres>, out: R<T>) -> R<T> {
    match out {
        Ok(v) => {
            tx.commit().await?;
            Ok(v)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rolling back after a failed write");
            }
            Err(e)
        }
    }
}

/// Microseconds of a duration, capped (see [`MAX_DAYS`]).
pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_MICROS)
}

/// One notification as a NOTIFY payload.
pub(super) fn payload(n: &Notification) -> R<String> {
    serde_json::to_string(n).map_err(|e| Fail::Store(Error::Database(format!("notification: {e}"))))
}

/// The transaction's clock, as a row selected it (`now() AS now`).
pub(super) fn server_now(row: &PgRow) -> R<Timestamp> {
    rows::get(row, "now", "now()")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_caps() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), MAX_MICROS);
    }

    #[test]
    fn terminal_list_matches_the_model() {
        for s in hive_models::TaskStatus::ALL {
            assert_eq!(
                terminal_statuses!().contains(&format!("'{s}'")),
                s.is_terminal(),
                "{s}"
            );
        }
    }
}
