//! The task types `hive worker run` has handlers for: `shell` (in `shell.rs`), and `noop`
//! and `sleep`, which do no work of their own so that a load test measures the queue, not
//! the cost of starting a process per task.
//!
//! - `noop`: completes at once with no output, whatever its payload.
//! - `sleep`: `{"ms": N}` waits N milliseconds (0 to one hour), then completes with no
//!   output; a run told to stop (its timeout, or its task cancelled) stops waiting at once.

use std::time::Duration;

use hive_client::{TaskContext, TaskError, TaskOutput};

use crate::shell;

pub const NOOP: &str = "noop";
pub const SLEEP: &str = "sleep";

/// Every task type the built-in worker runs, in the order its messages list them.
pub const TYPES: [&str; 3] = [shell::SHELL, NOOP, SLEEP];

/// The longest `sleep` a payload may ask for: longer is surely a mistake (minutes for
/// milliseconds), and it would hold a slot for that long.
const MAX_SLEEP_MS: u64 = 60 * 60 * 1000;

/// The error of a run stopped by its stop signal, whichever built-in handler ran it.
pub const STOPPED: &str = "stopped: the run timed out or its task was cancelled";

/// Whether `hive worker run` has a handler for `task_type`.
pub fn handles(task_type: &str) -> bool {
    TYPES.contains(&task_type)
}

/// Checks a payload as the built-in handler of its type will read it, so a task it would
/// refuse is refused when it is created rather than failing when it runs. Types without a
/// built-in handler are some other worker's to judge.
pub fn validate_payload(task_type: &str, payload: &serde_json::Value) -> Result<(), String> {
    match task_type {
        shell::SHELL => shell::validate_payload(payload),
        SLEEP => sleep_ms(payload).map(drop),
        _ => Ok(()),
    }
}

/// Runs one task with the built-in handler of its type; `shell` commands as `options` say.
pub async fn handle(ctx: TaskContext, options: shell::Options) -> Result<TaskOutput, TaskError> {
    match ctx.task.task_type.as_str() {
        shell::SHELL => shell::handle(ctx, options).await,
        NOOP => Ok(TaskOutput::default()),
        SLEEP => sleep(ctx).await,
        other => Err(TaskError::permanent(format!(
            "no handler for task type `{other}`; this worker runs {}",
            TYPES.join(", ")
        ))),
    }
}

async fn sleep(ctx: TaskContext) -> Result<TaskOutput, TaskError> {
    let ms = sleep_ms(&ctx.task.payload).map_err(TaskError::permanent)?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(TaskOutput::default()),
        () = ctx.cancelled() => Err(TaskError::new(STOPPED)),
    }
}

/// The milliseconds a `sleep` payload asks for, or what is wrong with it.
fn sleep_ms(payload: &serde_json::Value) -> Result<u64, String> {
    let expected = format!("expected {{\"ms\": N}} with N from 0 to {MAX_SLEEP_MS}");
    let Some(fields) = payload.as_object() else {
        return Err(format!(
            "invalid sleep payload: not a JSON object; {expected}"
        ));
    };
    if let Some(other) = fields.keys().find(|k| k.as_str() != "ms") {
        return Err(format!(
            "invalid sleep payload: unknown field `{}`; {expected}",
            other.escape_debug()
        ));
    }
    let Some(ms) = fields.get("ms") else {
        return Err(format!(
            "invalid sleep payload: `ms` is missing; {expected}"
        ));
    };
    match ms.as_u64() {
        Some(ms) if ms <= MAX_SLEEP_MS => Ok(ms),
        Some(ms) => Err(format!(
            "invalid sleep payload: `ms` is {ms}, over the limit of {MAX_SLEEP_MS} (one hour)"
        )),
        None => Err(format!(
            "invalid sleep payload: `ms` must be a whole number of milliseconds from 0 to \
             {MAX_SLEEP_MS}, not {ms}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_SLEEP_MS, sleep_ms, validate_payload};
    use serde_json::json;

    #[test]
    fn a_sleep_payload_names_what_is_wrong_with_it() {
        assert_eq!(sleep_ms(&json!({"ms": 10})), Ok(10));
        assert_eq!(sleep_ms(&json!({"ms": 0})), Ok(0));
        assert_eq!(sleep_ms(&json!({"ms": MAX_SLEEP_MS})), Ok(MAX_SLEEP_MS));
        let cases = [
            (json!({}), "`ms` is missing"),
            (
                json!({"ms": -5}),
                "whole number of milliseconds from 0 to 3600000, not -5",
            ),
            (json!({"ms": 1.5}), "not 1.5"),
            (json!({"ms": "10"}), "not \"10\""),
            (
                json!({"ms": MAX_SLEEP_MS + 1}),
                "over the limit of 3600000 (one hour)",
            ),
            (json!({"ms": 1, "seconds": 2}), "unknown field `seconds`"),
            (json!([10]), "not a JSON object"),
        ];
        for (payload, want) in cases {
            let e = sleep_ms(&payload).unwrap_err();
            assert!(e.starts_with("invalid sleep payload: "), "{e}");
            assert!(e.contains(want), "{payload}: {e}");
        }
    }

    #[test]
    fn only_built_in_types_have_their_payloads_checked() {
        assert!(validate_payload("sleep", &json!({"ms": -1})).is_err());
        assert!(validate_payload("shell", &json!({})).is_err());
        assert!(validate_payload("noop", &json!({"anything": true})).is_ok());
        assert!(validate_payload("deployment", &json!({"ms": -1})).is_ok());
    }
}
