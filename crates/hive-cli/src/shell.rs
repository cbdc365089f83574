//! The built-in handler for `shell` tasks: `{"command": "...", "timeout_secs": N}` runs
//! through `sh -c`; exit 0 completes the task, anything else fails it, with the exit
//! status (or the signal) and the last line the command wrote to stderr as the error. An
//! exit status listed in `"permanent_exit_codes": [N, …]` fails it for good, without retries.
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
//!   keyed by subtask id (`{}` without dependencies) on one line that ends with a newline;
//!   the same line is written to the command's stdin, which is then closed.
//! - `HIVE_OUTPUT`: a path the command may write its output to, as JSON.
//! - `HIVE_SPAWN`: a path the command may write subtasks to, to add them to its plan (see
//!   [`crate::spawnfile`]): committed with the task's success, nothing when it fails.
//! - `HIVE_PROGRESS`: a path the command may write its progress to while it runs, one
//!   report a line (`0.42 copying files`, see [`crate::progressfile`]).
//!
//! The task's output (what its dependents receive) is the JSON in the `HIVE_OUTPUT` file
//! when the command wrote one (an empty file counts as none), else the JSON value that
//! ends its stdout, read whole when it spans several lines (pretty-printed, as `jq`
//! prints it), else the last line of its stdout that is a JSON value (all read from the
//! last 2 MiB it printed, however much came before), else nothing (`null` to dependents).
//! A `HIVE_OUTPUT` file that is not JSON fails the task, and so does a last line too long
//! to be read that ends like a JSON object or array.
//!
//! Every command runs in a process group of its own, and the whole group is killed when
//! the task stops, so a background child never outlives its task (a worker killed outright
//! leaves that to its guard process, or, were it killed too, to another worker on its host:
//! see [`crate::orphans`]): after `sh` exits; on a
//! timeout (the payload's `timeout_secs` or the task's) or its task's cancel, SIGTERM first
//! and SIGKILL once the worker's timeout grace has passed; and at once when the handler is
//! dropped (the worker's shutdown grace ran out). So is every process that left the group
//! but still carries the run's `HIVE_RUN_ID` ([`crate::process_group`]); one that dropped
//! it too may keep running, and the pipes are read for [`pipes::PIPES_GRACE`] at most after
//! the kill, so it cannot hold the task open.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use hive_client::{TaskContext, TaskError, TaskOutput};
use serde::Deserialize;

use crate::pipes::{self, Pipes};
use crate::process_group::ProcessGroup;
use crate::progressfile::ProgressFile;

/// The task type this handler runs.
pub const SHELL: &str = "shell";

/// How `hive worker run` runs its commands.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Between SIGTERM and SIGKILL for a command told to stop.
    pub stop_grace: Duration,
    /// Each line a command writes also goes to the worker's log (`--log-output`).
    pub log_output: bool,
}

/// How much of the end of stdout is read for the output: twice the default output limit,
/// so an output over the limit is still read whole, and refused naming its size.
const OUTPUT_TAIL_BYTES: usize = 2 * hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES;

/// A larger `HIVE_OUTPUT` file is refused without being read.
const OUTPUT_FILE_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellPayload {
    command: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// Exit statuses that fail the task for good, without its retries: the command's way to
    /// say that running it again cannot help (bad input, a missing resource).
    #[serde(default)]
    permanent_exit_codes: Vec<i64>,
}

/// Checks a `shell` payload as the handler will read it, so a task it would refuse is
/// refused when it is created rather than failing when it runs.
pub fn validate_payload(payload: &serde_json::Value) -> Result<(), String> {
    parse(payload).map(drop)
}

fn parse(payload: &serde_json::Value) -> Result<ShellPayload, String> {
    let p: ShellPayload = serde_json::from_value(payload.clone()).map_err(|e| {
        format!(
            "invalid shell payload: {e}; expected {{\"command\": \"...\", \"timeout_secs\": N, \
             \"permanent_exit_codes\": [N, …]}} (all but `command` optional)"
        )
    })?;
    if p.command.trim().is_empty() {
        return Err("invalid shell payload: `command` is empty".into());
    }
    if p.timeout_secs == Some(0) {
        return Err("invalid shell payload: `timeout_secs` must be at least 1".into());
    }
    if let Some(code) = p
        .permanent_exit_codes
        .iter()
        .find(|c| !(1..=255).contains(*c))
    {
        return Err(format!(
            "invalid shell payload: `permanent_exit_codes` holds {code}; exit statuses that \
             fail are 1 to 255"
        ));
    }
    Ok(p)
}

/// Runs one shell task (`builtin::handle` sends it only those); stdout and stderr become the
/// run's output log. A command told to stop (its timeout, or its task cancelled) gets
/// SIGTERM, and SIGKILL `options.stop_grace` later if any of its group is still running.
pub async fn handle(ctx: TaskContext, options: Options) -> Result<TaskOutput, TaskError> {
    let payload = parse(&ctx.task.payload).map_err(TaskError::permanent)?;
    let io = tempfile::Builder::new()
        .prefix(&crate::orphans::run_dir_prefix())
        .tempdir()
        .map_err(|e| TaskError::new(format!("cannot create the run's directory: {e}")))?;
    let inputs_path = io.path().join("inputs.json");
    let output_path = io.path().join("output.json");
    let spawn_path = io.path().join("spawn.json");
    let progress_path = io.path().join("progress");
    let mut inputs = serde_json::to_vec(ctx.inputs())
        .map_err(|e| TaskError::new(format!("cannot encode the inputs: {e}")))?;
    // A whole line: a command that echoes its inputs (`cat "$HIVE_INPUTS"`) and then prints
    // its output would otherwise print both on one line, which is no JSON.
    inputs.push(b'\n');
    std::fs::write(&inputs_path, &inputs)
        .map_err(|e| TaskError::new(format!("cannot write the inputs file: {e}")))?;
    let mut sh = tokio::process::Command::new("sh");
    sh.arg("-c")
        .arg(&payload.command)
        .env("HIVE_TASK_ID", ctx.task.id.to_string())
        .env("HIVE_RUN_NUMBER", ctx.run.run_number.to_string())
        .env("HIVE_ATTEMPT", ctx.task.attempts.to_string())
        .env("HIVE_WORKER_ID", ctx.run.worker_id.as_str())
        .env("HIVE_INPUTS", &inputs_path)
        .env("HIVE_OUTPUT", &output_path)
        .env("HIVE_SPAWN", &spawn_path)
        .env("HIVE_PROGRESS", &progress_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // `HIVE_RUN_ID` is set by the guard, which kills what carries it.
    let (mut child, group) = ProcessGroup::spawn(&mut sh, &ctx.run.id.to_string())
        .map_err(|e| TaskError::new(format!("cannot start sh: {e}")))?;
    // A command that never reads its stdin must not block on it: written from a task of its
    // own, and a closed pipe is no error. Stopped with the handler, in case a process that
    // outlives the command keeps the pipe open without reading it.
    let feeding = child.stdin.take().map(|mut stdin| {
        tokio::spawn(async move {
            let _ = stdin.write_all(&inputs).await;
        })
    });
    let _stop_feeding = feeding.map(|task| task.abort_handle()).map(AbortOnDrop);
    let forward = options.log_output.then_some(ctx.task.id);
    let pipes = Pipes::read(&mut child, OUTPUT_TAIL_BYTES, forward);
    let limit = payload
        .timeout_secs
        .map_or(Duration::MAX, Duration::from_secs);
    // The run's own stop signal (its task's timeout passed, or it was cancelled) stops the
    // group as the payload's `timeout_secs` does: SIGTERM, then SIGKILL after the grace (the
    // worker drops this handler after the same grace in any case).
    let mut progress = ProgressFile::new(progress_path);
    let exited = tokio::select! {
        never = progress.watch(&ctx) => match never {},
        waited = tokio::time::timeout(limit, child.wait()) => {
            waited.map_err(|_| TaskError::timed_out(format!(
                "command timed out after {}s and was stopped",
                payload.timeout_secs.unwrap_or_default()
            )))
        }
        () = ctx.cancelled() => {
            Err(TaskError::new(crate::builtin::STOPPED))
        }
    };
    if let (Err(_), Some(group)) = (&exited, &group) {
        group.stop(&mut child, options.stop_grace).await;
    }
    // Whatever `sh` left running in its group goes with it; then the pipes reach their end,
    // and what the command printed before it stopped is kept in every case.
    drop(group);
    let (out, err) = pipes.drain().await;
    let mut log = format!("{}{}", out.log(), err.log());
    // The last report, which the command may have written just before it ended.
    progress.look(&ctx, true);
    if let Some(refused) = progress.refused() {
        log.push_str(&format!("\n{refused}\n"));
    }
    if out.held_open || err.held_open {
        log.push_str(&format!(
            "\n[not read further: {}s after the command ended, a process it started still held \
             its output open, outside its process group and without its HIVE_RUN_ID]\n",
            pipes::PIPES_GRACE.as_secs()
        ));
    }
    let status = match exited {
        Ok(status) => status.map_err(|e| TaskError::new(format!("waiting for sh: {e}")))?,
        Err(stopped) => return Err(stopped.with_log(log)),
    };
    let failed = match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(format!("command exited with status {code}")),
        (None, Some(signal)) => Some(format!("command was killed by signal {signal}")),
        (None, None) => Some("command was killed by a signal".to_owned()),
    };
    match failed {
        None => {
            // The same command would write the same file again: refusing it is for good.
            let done = output(&output_path, out.end()).and_then(|result| {
                let spawned = crate::spawnfile::read(&spawn_path)?;
                Ok((result, spawned))
            });
            let (result, spawned) = match done {
                Ok(done) => done,
                Err(e) => return Err(TaskError::permanent(e).with_log(log)),
            };
            for subtask in spawned {
                if let Err(e) = ctx.spawn(subtask) {
                    return Err(e.with_log(log));
                }
            }
            Ok(TaskOutput {
                result,
                log: Some(log),
            })
        }
        Some(failed) => {
            let last_word = String::from_utf8_lossy(err.end().0);
            let message = with_last_word(failed, &last_word);
            let for_good = status
                .code()
                .is_some_and(|c| payload.permanent_exit_codes.contains(&i64::from(c)));
            let error = if for_good {
                TaskError::permanent(message)
            } else {
                TaskError::new(message)
            };
            Err(error.with_log(log))
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

/// The command's output: the `HIVE_OUTPUT` file's JSON (an empty file, or only
/// whitespace, is none written), else a multi-line JSON value that ends stdout
/// ([`trailing_value`]), else the last stdout line that is JSON, else none.
/// `stdout` is the end of what it printed, and whether more came before (the first line of
/// `stdout` is then cut, so it is not read). A last line (nothing but blanks after it) too
/// long to be read whole that ends like a JSON object or array is refused rather than
/// skipped: it is an output over the
/// limit, and skipping it would hand the dependents an older line, or nothing, without a
/// word.
fn output(
    file: &std::path::Path,
    (stdout, cut): (&[u8], bool),
) -> Result<Option<serde_json::Value>, String> {
    // The file's cap is above the output limit: below it, the size that counts is the
    // JSON's once parsed, without the file's whitespace.
    let limit = format!(
        "outputs are limited to {} MiB",
        hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES / (1024 * 1024)
    );
    if let Some(bytes) = crate::leftfile::read(file, "HIVE_OUTPUT", OUTPUT_FILE_MAX_BYTES, &limit)?
    {
        // A byte-order mark (editors and some tools on Windows write one) is not JSON.
        let json = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
        // Empty is not written: `jq … > "$HIVE_OUTPUT"` that selects nothing leaves the
        // file so, and the task has said nothing there, not something broken.
        if !json.iter().all(u8::is_ascii_whitespace) {
            return serde_json::from_slice(json)
                .map(Some)
                .map_err(|e| format!("the HIVE_OUTPUT file is not JSON: {e}"));
        }
    }
    let text = String::from_utf8_lossy(stdout);
    // The first line's start was not kept when more came before it.
    let (cut_line, whole) = match text.split_once('\n') {
        Some((first, rest)) if cut => (first, rest),
        None if cut => (&*text, ""),
        _ => ("", &*text),
    };
    // A progress bar redraws its line after each `\r`: a cut line holding one is such a
    // line's history, however it ends, and no output.
    let cut_line = if cut_line.contains('\r') {
        ""
    } else {
        cut_line
    };
    let trailing = trailing_value(whole);
    if trailing.is_none() {
        check_last_line(stdout, cut)?;
    }
    // Stdout cut, ending like a value spread over lines whose start was not kept: any line
    // of it read alone would be a piece of it, and the whole is over the output limit.
    let cut_value = cut && trailing.is_none() && ends_like_a_value(whole);
    let last_json = trailing.or_else(|| last_json_line(whole).filter(|_| !cut_value));
    // A cut line that ends like an object or array, if it is the last one printed; before
    // the end, only if it ends like one holding JSON values (`"]`, `1}`, `]]`): a log line
    // (`… PASSED [ 45%]` of a verbose test run) is no output at all, while `jq -c` printing
    // a huge value, then `echo done`, is one over the limit.
    let last = whole.trim().is_empty() && cut_line.trim_end().ends_with(['}', ']']);
    let cut_json = last || ends_like_json(cut_line);
    if cut_value || (last_json.is_none() && cut_json) {
        return Err(format!(
            "the output the command printed last (a line, or a value spread over lines) is \
             longer than the {} MiB read for an output (outputs are limited to {} MiB): \
             print a smaller one",
            OUTPUT_TAIL_BYTES / (1024 * 1024),
            hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES / (1024 * 1024)
        ));
    }
    Ok(last_json)
}

/// Refuses a last line (nothing but blanks after it) that is shaped like a JSON object or
/// array but is none: `{"score": NaN}`, Python's `{'a': 1}`, bytes that are not UTF-8.
/// Skipping it would hand the dependents an older line, or nothing, without a word. Read
/// from the bytes printed: the text the rest is read from has such bytes replaced.
fn check_last_line(stdout: &[u8], cut: bool) -> Result<(), String> {
    let whole = match stdout.iter().position(|b| *b == b'\n') {
        Some(at) if cut => &stdout[at + 1..],
        None if cut => &[],
        _ => stdout,
    };
    let Some(last) = whole
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .rfind(|l| !l.is_empty())
    else {
        return Ok(());
    };
    let shaped = match last {
        [b'{', .., b'}'] => true,
        [b'[', ..] => ends_like_json(&String::from_utf8_lossy(last)),
        _ => false,
    };
    match serde_json::from_slice::<serde_json::Value>(last) {
        Err(e) if shaped => Err(format!(
            "the last line the command printed looks like JSON but is not ({e}): print the \
             output with a JSON encoder (NaN, single quotes and bytes that are not UTF-8 are \
             not JSON), or end with a line that is not shaped like an object or array"
        )),
        _ => Ok(()),
    }
}

/// Whether `line` ends as a JSON object or array does: its closing bracket after the end
/// of a value (a string, number, literal, object or array) or its opening one.
fn ends_like_json(line: &str) -> bool {
    let line = line.trim_end();
    let Some(inner) = line.strip_suffix(['}', ']']) else {
        return false;
    };
    let before = inner.trim_end().chars().last();
    matches!(
        before,
        Some('"' | '}' | ']' | '{' | '[' | '0'..='9' | 'e' | 'l')
    )
}

/// A JSON value spread over the last lines of `text`, as `jq` and other tools print one
/// (pretty-printed): read whole, since any single line of it read alone would be a piece of
/// it (`"b"` from `["a", "b"]`). Looked for only when the last line that is not blank
/// starts like the end of one (`}` or `]`): the value must start a line of its own (after
/// spaces) and run to the end of `text`.
fn trailing_value(text: &str) -> Option<serde_json::Value> {
    if !ends_like_a_value(text) {
        return None;
    }
    // The only start such a value can have is the bracket matching the last one: found in
    // one pass, and parsed once, where trying every line that opens a bracket would parse
    // deep values again and again (seconds for a crafted 2 MiB).
    let start = opening_bracket(text.as_bytes())?;
    let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
    if !text[line_start..start].trim().is_empty() {
        return None;
    }
    serde_json::from_str(&text[start..]).ok()
}

/// Whether the last line of `text` that is not blank starts like the end of a value spread
/// over lines (`}` or `]`).
fn ends_like_a_value(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .is_some_and(|last| last.starts_with(['}', ']']))
}

/// Where the bracket that matches the last one in `bytes` is, counting brackets backwards
/// outside strings. A candidate only: what lies between may still be no JSON, which the
/// parse that follows tells.
fn opening_bracket(bytes: &[u8]) -> Option<usize> {
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if !matches!(bytes[end], b'}' | b']') {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    for at in (0..=end).rev() {
        match bytes[at] {
            b'"' if !escaped(bytes, at) => in_string = !in_string,
            _ if in_string => {}
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether the quote at `at` is escaped: an odd number of backslashes before it.
fn escaped(bytes: &[u8], at: usize) -> bool {
    bytes[..at]
        .iter()
        .rev()
        .take_while(|b| **b == b'\\')
        .count()
        % 2
        == 1
}

/// The last line of `text` that is a JSON value on its own.
fn last_json_line(text: &str) -> Option<serde_json::Value> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find_map(|l| serde_json::from_str(l).ok())
}

#[cfg(test)]
mod tests;
