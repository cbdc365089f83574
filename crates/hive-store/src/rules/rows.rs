//! Patches as flat rows, one JSON document per table: how both SQL adapters hand a batch to
//! their write statements (SQLite reads it with `jsonb_each`, whose rows stay binary, so
//! each `->>` on a row is a lookup: `json_each` rendered every row as text that each `->>`
//! then parsed again, a quarter of the SQLite writer's time in a drain; Postgres reads it
//! with `jsonb_to_recordset`), so the encoding is written once. A `set_*` flag says whether a
//! field is written at all; JSON values travel as JSON text, so a stored `null` and "no
//! value" stay apart.

use hive_models::{
    PlanCounters, PlanId, PlanStatus, RunId, RunStatus, TaskId, TaskStatus, Timestamp,
};
use serde::Serialize;

use super::changes::{RunPatch, TaskPatch};

#[derive(Serialize)]
struct RunRow<'a> {
    id: RunId,
    status: RunStatus,
    set_result: bool,
    result: Option<String>,
    set_error: bool,
    error: Option<&'a str>,
    set_log: bool,
    log: Option<&'a str>,
    waited_us: i64,
}

#[derive(Serialize)]
struct TaskRow<'a> {
    id: TaskId,
    status: TaskStatus,
    set_result: bool,
    result: Option<String>,
    set_error: bool,
    error: Option<&'a str>,
    requeue: bool,
    /// When a requeued task may run again, for Postgres…
    run_at: Option<Timestamp>,
    /// …and as SQLite stores it (microseconds since the epoch).
    run_at_us: Option<i64>,
    attempts_delta: i32,
    snoozes_delta: i32,
    recount: bool,
    set_metadata: bool,
    metadata: Option<String>,
}

#[derive(Serialize)]
struct PlanRow {
    id: PlanId,
    status: PlanStatus,
    completed: u32,
    failed: u32,
    cancelled: u32,
}

/// JSON text of a value a patch stores (`None`: the patch stores SQL NULL).
fn text(v: Option<&serde_json::Value>) -> Result<Option<String>, serde_json::Error> {
    v.map(serde_json::to_string).transpose()
}

/// A wait in microseconds, at most ten years: the store caps a run's start at its end
/// anyway, and a wait added to a start must not overflow a timestamp.
pub fn waited_us(waited: std::time::Duration) -> i64 {
    const TEN_YEARS_US: u128 = 10 * 366 * 24 * 3600 * 1_000_000;
    i64::try_from(waited.as_micros().min(TEN_YEARS_US)).unwrap_or(i64::MAX)
}

pub fn runs_json(runs: &[RunPatch]) -> Result<String, serde_json::Error> {
    let rows = runs
        .iter()
        .map(|r| {
            Ok(RunRow {
                id: r.id,
                status: r.status,
                set_result: r.result.is_some(),
                result: text(r.result.as_ref().and_then(Option::as_ref))?,
                set_error: r.error.is_some(),
                error: r.error.as_ref().and_then(|e| e.as_deref()),
                set_log: r.log.is_some(),
                log: r.log.as_ref().and_then(|l| l.as_deref()),
                waited_us: waited_us(r.waited),
            })
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    serde_json::to_string(&rows)
}

pub fn tasks_json(tasks: &[TaskPatch]) -> Result<String, serde_json::Error> {
    let rows = tasks
        .iter()
        .map(|t| {
            let run_at = t.requeue.flatten();
            Ok(TaskRow {
                id: t.id,
                status: t.status,
                set_result: t.result.is_some(),
                result: text(t.result.as_ref().and_then(Option::as_ref))?,
                set_error: t.error.is_some(),
                error: t.error.as_deref(),
                requeue: t.requeue.is_some(),
                run_at,
                run_at_us: run_at.map(|r| r.timestamp_micros()),
                attempts_delta: t.attempts_delta,
                snoozes_delta: t.snoozes_delta,
                recount: t.recount_pending,
                set_metadata: t.metadata.is_some(),
                metadata: text(t.metadata.as_ref())?,
            })
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    serde_json::to_string(&rows)
}

pub fn plans_json(plans: &[(PlanId, PlanCounters)]) -> Result<String, serde_json::Error> {
    let rows: Vec<PlanRow> = plans
        .iter()
        .map(|(id, c)| PlanRow {
            id: *id,
            status: c.status,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
        })
        .collect();
    serde_json::to_string(&rows)
}

/// A plan patch as what changed since the rows were read: the counts to add (negative for
/// a finished subtask requeued), and the new status when it moved. For a backend that
/// counts without locking the plan's row.
#[cfg(feature = "postgres")]
#[derive(Serialize)]
struct PlanDelta {
    id: PlanId,
    status: hive_models::PlanStatus,
    changed: bool,
    /// The move starts from a finished status: only a retry of the plan does that, holding
    /// the plan's row, so its status is written as it is, not compare-and-set.
    from_finished: bool,
    completed: i64,
    failed: i64,
    cancelled: i64,
}

#[cfg(feature = "postgres")]
pub fn plan_deltas_json(
    plans: &[(PlanId, PlanCounters)],
    view: &impl super::View,
) -> Result<String, serde_json::Error> {
    let rows: Vec<PlanDelta> = plans
        .iter()
        .filter_map(|(id, c)| {
            let before = view.plan(*id)?;
            Some(PlanDelta {
                id: *id,
                status: c.status,
                changed: c.status != before.status,
                from_finished: c.status != before.status && before.status.is_terminal(),
                completed: i64::from(c.completed) - i64::from(before.completed),
                failed: i64::from(c.failed) - i64::from(before.failed),
                cancelled: i64::from(c.cancelled) - i64::from(before.cancelled),
            })
        })
        .collect();
    serde_json::to_string(&rows)
}
