//! The built-in handler for `shell` tasks: `{"command": "...", "timeout_secs": N}` runs
//! through `sh -c`; exit 0 completes the task, anything else fails it.
//!
//! The command sees which attempt it is in its environment, so a script can log it,
//! make itself idempotent, or behave differently on a retry:
//!
//! - `HIVE_TASK_ID`: the task's id.
//! - `HIVE_RUN_ID`: this attempt's run id (the lease token; a later attempt has another).
//! - `HIVE_ATTEMPT`: the task's attempt count including this one (1 on the first run;
//!   runs given back at shutdown do not count).
//! - `HIVE_WORKER_ID`: the worker running it.

use std::process::Stdio;
use std::time::Duration;

use hive_client::{TaskContext, TaskError, TaskOutput};
use serde::Deserialize;

/// The task type this handler runs.
pub const SHELL: &str = "shell";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellPayload {
    command: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Runs one shell task; stdout and stderr become the run's output log.
pub async fn handle(ctx: TaskContext) -> Result<TaskOutput, TaskError> {
    if ctx.task.task_type != SHELL {
        return Err(TaskError::permanent(format!(
            "no handler for task type `{}`; this worker runs `shell` tasks",
            ctx.task.task_type
        )));
    }
    let payload: ShellPayload = serde_json::from_value(ctx.task.payload.clone()).map_err(|e| {
        TaskError::permanent(format!(
            "invalid shell payload: {e}; expected {{\"command\": \"...\", \"timeout_secs\": N}}"
        ))
    })?;
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&payload.command)
        .env("HIVE_TASK_ID", ctx.task.id.to_string())
        .env("HIVE_RUN_ID", ctx.run.id.to_string())
        .env("HIVE_ATTEMPT", ctx.task.attempts.to_string())
        .env("HIVE_WORKER_ID", ctx.run.worker_id.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::new(format!("cannot start sh: {e}")))?;
    let waited = child.wait_with_output();
    let output = match payload.timeout_secs {
        Some(secs) => match tokio::time::timeout(Duration::from_secs(secs), waited).await {
            Ok(out) => out,
            Err(_) => return Err(TaskError::new(format!("command timed out after {secs}s"))),
        },
        None => waited.await,
    }
    .map_err(|e| TaskError::new(format!("waiting for sh: {e}")))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => Ok(TaskOutput {
            result: Some(serde_json::json!({"exit_code": 0})),
            log: Some(log),
        }),
        Some(code) => {
            Err(TaskError::new(format!("command exited with status {code}")).with_log(log))
        }
        None => Err(TaskError::new("command was killed by a signal").with_log(log)),
    }
}
