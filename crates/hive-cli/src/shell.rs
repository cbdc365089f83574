//! The built-in handler for `shell` tasks: `{"command": "...", "timeout_secs": N}` runs
//! through `sh -c`; exit 0 completes the task, anything else fails it, with the exit
//! status (or the signal) and the last line the command wrote to stderr as the error.
//!
//! The command sees which attempt it is in its environment, so a script can log it,
//! make itself idempotent, or behave differently on a retry:
//!
//! - `HIVE_TASK_ID`: the task's id.
//! - `HIVE_RUN_ID`: this run's id (the lease token; every run has another).
//! - `HIVE_RUN_NUMBER`: 1 for the task's first run, then 2, 3, … for every later run,
//!   including a run that follows one given back at shutdown or taken back from a dead
//!   worker. It only grows, so it is the fencing token to hand to an external system
//!   ("ignore writes from a run number lower than one already seen").
//! - `HIVE_ATTEMPT`: the attempts counted against `max_retries`, this one included (1 on the
//!   first run). A run given back at shutdown does not count, so its successor sees the
//!   same attempt number again; use `HIVE_RUN_NUMBER` to tell runs apart.
//! - `HIVE_WORKER_ID`: the worker running it.
//! - `HIVE_INPUTS`: a file holding the outputs of the task's dependencies as one JSON object
//!   keyed by subtask id (`{}` without dependencies); the same JSON is written to the
//!   command's stdin, which is then closed.
//! - `HIVE_OUTPUT`: a path the command may write its output to, as JSON.
//!
//! The task's output (what its dependents receive) is the JSON in the `HIVE_OUTPUT` file
//! when the command wrote one, else the last line of its stdout that is a JSON value, else
//! nothing (`null` to dependents). A `HIVE_OUTPUT` file that is not JSON fails the task.
//!
//! Every command runs in a process group of its own, and the whole group is killed when
//! the task stops: on `timeout_secs`, when the handler is dropped (the worker's shutdown
//! grace ran out, or the run was cancelled), and after `sh` exits, so a background child
//! never outlives its task.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use hive_client::{TaskContext, TaskError, TaskOutput};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::process_group::ProcessGroup;

/// The task type this handler runs.
pub const SHELL: &str = "shell";

/// At most this much of a command's stdout and stderr each is kept as the run's log.
const MAX_LOG_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellPayload {
    command: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// Checks a `shell` payload as the handler will read it, so a task it would refuse is
/// refused when it is created rather than failing when it runs.
pub fn validate_payload(payload: &serde_json::Value) -> Result<(), String> {
    parse(payload).map(drop)
}

fn parse(payload: &serde_json::Value) -> Result<ShellPayload, String> {
    let p: ShellPayload = serde_json::from_value(payload.clone()).map_err(|e| {
        format!(
            "invalid shell payload: {e}; expected {{\"command\": \"...\", \"timeout_secs\": N}}"
        )
    })?;
    if p.command.trim().is_empty() {
        return Err("invalid shell payload: `command` is empty".into());
    }
    if p.timeout_secs == Some(0) {
        return Err("invalid shell payload: `timeout_secs` must be at least 1".into());
    }
    Ok(p)
}

/// Reads a pipe to its end, keeping the first [`MAX_LOG_BYTES`] bytes.
async fn collect(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut dropped = 0usize;
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_LOG_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room);
            }
        }
    }
    if dropped > 0 {
        kept.extend_from_slice(format!("\n[{dropped} more bytes not kept]\n").as_bytes());
    }
    kept
}

/// Runs one shell task (`builtin::handle` sends it only those); stdout and stderr become the
/// run's output log.
pub async fn handle(ctx: TaskContext) -> Result<TaskOutput, TaskError> {
    let payload = parse(&ctx.task.payload).map_err(TaskError::permanent)?;
    let io = tempfile::Builder::new()
        .prefix("hive-run-")
        .tempdir()
        .map_err(|e| TaskError::new(format!("cannot create the run's directory: {e}")))?;
    let inputs_path = io.path().join("inputs.json");
    let output_path = io.path().join("output.json");
    let inputs = serde_json::to_vec(ctx.inputs())
        .map_err(|e| TaskError::new(format!("cannot encode the inputs: {e}")))?;
    std::fs::write(&inputs_path, &inputs)
        .map_err(|e| TaskError::new(format!("cannot write the inputs file: {e}")))?;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&payload.command)
        .env("HIVE_TASK_ID", ctx.task.id.to_string())
        .env("HIVE_RUN_ID", ctx.run.id.to_string())
        .env("HIVE_RUN_NUMBER", ctx.run.run_number.to_string())
        .env("HIVE_ATTEMPT", ctx.task.attempts.to_string())
        .env("HIVE_WORKER_ID", ctx.run.worker_id.as_str())
        .env("HIVE_INPUTS", &inputs_path)
        .env("HIVE_OUTPUT", &output_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TaskError::new(format!("cannot start sh: {e}")))?;
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(ProcessGroup::new);
    if let Some(mut stdin) = child.stdin.take() {
        // A command that never reads its stdin must not block on it: written from a task
        // of its own, and a closed pipe is no error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&inputs).await;
        });
    }
    let stdout = tokio::spawn(collect(child.stdout.take()));
    let stderr = tokio::spawn(collect(child.stderr.take()));
    let limit = payload
        .timeout_secs
        .map_or(Duration::MAX, Duration::from_secs);
    // The run's own stop signal (its task's timeout passed, or it was cancelled) kills the
    // group at once, as the payload's `timeout_secs` does.
    let exited = tokio::select! {
        waited = tokio::time::timeout(limit, child.wait()) => {
            waited.map_err(|_| format!(
                "command timed out after {}s and was killed",
                payload.timeout_secs.unwrap_or_default()
            ))
        }
        () = ctx.cancelled() => {
            Err(crate::builtin::STOPPED.to_owned())
        }
    };
    // Whatever `sh` left running in its group goes with it; then the pipes reach their end,
    // and what the command printed before it stopped is kept in every case.
    drop(group);
    let out = String::from_utf8_lossy(&stdout.await.unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&stderr.await.unwrap_or_default()).into_owned();
    let status = match exited {
        Ok(status) => status.map_err(|e| TaskError::new(format!("waiting for sh: {e}")))?,
        Err(stopped) => return Err(TaskError::new(stopped).with_log(format!("{out}{err}"))),
    };
    let failed = match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(format!("command exited with status {code}")),
        (None, Some(signal)) => Some(format!("command was killed by signal {signal}")),
        (None, None) => Some("command was killed by a signal".to_owned()),
    };
    let log = format!("{out}{err}");
    match failed {
        None => match output(&output_path, &out) {
            Ok(result) => Ok(TaskOutput {
                result,
                log: Some(log),
            }),
            Err(e) => Err(TaskError::permanent(e).with_log(log)),
        },
        Some(failed) => Err(TaskError::new(with_last_word(failed, &err)).with_log(log)),
    }
}

/// The longest stderr line an error carries; the whole stderr stays in the run's log.
const LAST_WORD_MAX: usize = 200;

/// `failed`, followed by the last line the command wrote to stderr (cut to
/// [`LAST_WORD_MAX`] characters), if any: what listings show as a failed run's error is
/// then usually its reason, not only its exit status.
fn with_last_word(failed: String, stderr: &str) -> String {
    let Some(last) = stderr.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return failed;
    };
    // Control characters would reach the worker's log line as they are (a terminal would
    // obey an escape sequence in it); the run's log keeps them.
    let cut: String = last
        .chars()
        .take(LAST_WORD_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let ellipsis = if last.chars().nth(LAST_WORD_MAX).is_some() {
        "…"
    } else {
        ""
    };
    format!("{failed}: {cut}{ellipsis}")
}

/// The command's output: the `HIVE_OUTPUT` file's JSON, else the last stdout line that is
/// JSON, else none.
fn output(file: &std::path::Path, stdout: &str) -> Result<Option<serde_json::Value>, String> {
    match std::fs::read(file) {
        Ok(bytes) => {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("the HIVE_OUTPUT file is not JSON: {e}"));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read the HIVE_OUTPUT file: {e}")),
    }
    Ok(stdout
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find_map(|l| serde_json::from_str(l).ok()))
}

#[cfg(test)]
mod tests {
    use super::{output, with_last_word};

    #[test]
    fn a_failure_carries_the_last_stderr_line() {
        let failed = || "command exited with status 3".to_owned();
        assert_eq!(
            with_last_word(failed(), "first\n  the reason  \n\n"),
            "command exited with status 3: the reason"
        );
        assert_eq!(with_last_word(failed(), ""), "command exited with status 3");
        assert_eq!(
            with_last_word(failed(), "\u{1b}[2Jwiped\tout"),
            "command exited with status 3:  [2Jwiped out"
        );
        assert_eq!(
            with_last_word(failed(), "\n \n"),
            "command exited with status 3"
        );
        let long = "ü".repeat(300);
        let cut = with_last_word(failed(), &long);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.chars().filter(|c| *c == 'ü').count(), 200);
    }

    #[test]
    fn output_is_the_file_else_the_last_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.json");
        let stdout = "building\n{\"a\": 1}\nnot json\n[2, \"ü\"]\ndone\n";
        assert_eq!(
            output(&file, stdout).unwrap(),
            Some(serde_json::json!([2, "ü"]))
        );
        assert_eq!(output(&file, "no json here\n").unwrap(), None);
        std::fs::write(&file, br#"{"from": "file"}"#).unwrap();
        assert_eq!(
            output(&file, stdout).unwrap(),
            Some(serde_json::json!({"from": "file"}))
        );
        std::fs::write(&file, b"{broken").unwrap();
        assert!(output(&file, stdout).unwrap_err().contains("not JSON"));
    }
}
