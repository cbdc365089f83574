//! `hive worker run` and the worker registry as an operator sees them: a start line and one
//! line per failed run, logged without colours to a stderr that is not a terminal; a second
//! Ctrl-C that stops the worker at once, killing its commands; `task runs` showing what each
//! run printed, a timed-out run included; `worker list` telling a silent worker (stale)
//! from a live one, as `hive status` counts them; and the load-test types `noop` and
//! `sleep`, with `--exec-log` recording each handler start; and the worker's probes beside
//! its metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::db::{Db, create_once, create_shell, create_task};

/// Generous bounds for a loaded 2-core machine; they bound waits, they measure nothing.
const WITHIN: Duration = Duration::from_secs(60);

fn wait_for(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_logs_its_start_and_each_failed_run_without_colours() {
    let db = Db::new();
    let id = db.ok(&create_once(
        "breaks",
        "shell",
        r#"{"command": "echo first line; exit 3"}"#,
        &[],
    ));
    let (ok, _, stderr) = db.run(&[
        "worker",
        "run",
        "--role",
        "builder",
        "--id",
        "w1",
        "--concurrency",
        "2",
        "--lease-secs",
        "9",
        "--exit-when-idle",
    ]);
    assert!(ok, "{stderr}");
    // stderr is a pipe here: no colour codes, whatever the level.
    assert!(!stderr.contains('\u{1b}'), "ANSI codes in {stderr:?}");
    let start = stderr
        .lines()
        .find(|l| l.contains("starting"))
        .unwrap_or_default();
    assert!(start.contains("INFO"), "{stderr}");
    assert!(
        start.contains("worker w1 starting: role builder, types shell, concurrency 2, lease 9s"),
        "{stderr}"
    );
    let failed = stderr
        .lines()
        .find(|l| l.contains("failed, run"))
        .unwrap_or_default();
    assert!(
        failed.contains(&format!(
            "task {} (breaks) failed, run 1, attempt 1 of 1: command exited with status 3",
            id.trim()
        )),
        "{stderr}"
    );
}

#[test]
fn task_runs_show_each_runs_output_and_a_timed_out_run_keeps_its_own() {
    let db = Db::new();
    let fails = db.ok(&create_once(
        "f",
        "shell",
        r#"{"command": "echo to stdout; echo to stderr >&2; exit 1"}"#,
        &[],
    ));
    // Stopped by the task's timeout (the worker's stop signal), and by the payload's.
    let stopped = db.ok(&create_once(
        "t",
        "shell",
        r#"{"command": "echo before the timeout; sleep 30"}"#,
        &["--timeout", "1"],
    ));
    let killed = db.ok(&create_shell(
        r#"{"command": "echo before the kill; sleep 30", "timeout_secs": 1}"#,
    ));
    let signalled = db.ok(&create_once(
        "s",
        "shell",
        r#"{"command": "echo going >&2; kill -9 $$"}"#,
        &[],
    ));
    let stderr = db.work_until_idle_logged(&["--concurrency", "4"]);
    // Stopped by its timeout, the run is logged as stopped, not as a failed attempt.
    assert!(
        stderr.contains(&format!(
            "task {} (t) stopped, run 1: its timeout passed or it was cancelled",
            stopped.trim()
        )),
        "{stderr}"
    );
    let table = db.ok(&["task", "runs", fails.trim()]);
    let log = table.split("--- run 1 (failure) output ---\n").nth(1);
    assert_eq!(log, Some("to stdout\nto stderr\n"), "{table}");
    let runs = db.json(&["task", "runs", fails.trim()]);
    assert_eq!(
        runs[0]["error_message"], "command exited with status 1: to stderr",
        "the last stderr line, not stdout's"
    );
    let runs = db.json(&["task", "runs", signalled.trim()]);
    assert_eq!(
        runs[0]["error_message"], "command was killed by signal 9: going",
        "{runs}"
    );
    let runs = db.json(&["task", "runs", stopped.trim()]);
    assert_eq!(runs[0]["status"], "timeout", "{runs}");
    assert_eq!(runs[0]["output_log"], "before the timeout\n", "{runs}");
    let runs = db.json(&["task", "runs", killed.trim()]);
    assert_eq!(runs[0]["output_log"], "before the kill\n", "{runs}");
}

/// A command stopped at its timeout (the payload's, or the task's through the worker's
/// stop signal) gets SIGTERM first, so a `trap` can clean up; one that ignores it is killed
/// once `--timeout-grace` has passed, with everything in its group, and its run keeps what
/// it printed.
#[test]
fn a_stopped_command_gets_sigterm_then_sigkill_after_the_grace() {
    let db = Db::new();
    let dir = db.dir.path();
    let cleanup = |name: &str| {
        format!(
            "trap 'echo cleaned up > \"{}\"; exit 1' TERM; sleep 30 & wait",
            dir.join(name).display()
        )
    };
    let payload_timeout = serde_json::json!({
        "command": cleanup("payload.trap"),
        "timeout_secs": 1,
    })
    .to_string();
    db.ok(&create_once("payload", "shell", &payload_timeout, &[]));
    let task_timeout = serde_json::json!({ "command": cleanup("task.trap") }).to_string();
    db.ok(&create_once(
        "task",
        "shell",
        &task_timeout,
        &["--timeout", "1"],
    ));
    let pid_file = dir.join("stubborn.pid");
    let stubborn = serde_json::json!({
        "command": format!(
            "trap '' TERM; sleep 300 & echo $! > \"{}\"; wait",
            pid_file.display()
        ),
        "timeout_secs": 1,
    })
    .to_string();
    let stubborn_id = db.ok(&create_once("stubborn", "shell", &stubborn, &[]));
    // Stopped by the worker at its task's timeout, it is killed once the grace has passed;
    // the worker waits for its handler longer than that, so its run keeps what it printed.
    let deaf = serde_json::json!({
        "command": "echo before the stop; trap '' TERM; sleep 300 & wait",
    })
    .to_string();
    let deaf_id = db.ok(&create_once("deaf", "shell", &deaf, &["--timeout", "1"]));
    let stderr = db.work_until_idle_logged(&["--concurrency", "4", "--timeout-grace", "1"]);
    for name in ["payload.trap", "task.trap"] {
        let cleaned = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert_eq!(
            cleaned, "cleaned up\n",
            "the {name} command's trap ran: {stderr}"
        );
    }
    // Its `sleep` ignored SIGTERM too (inherited), and went with the SIGKILL.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    wait_for("the stubborn command's sleep to be killed", || {
        !Path::new(&format!("/proc/{}", pid.trim())).exists()
    });
    let runs = db.json(&["task", "runs", stubborn_id.trim()]);
    assert_eq!(
        runs[0]["error_message"], "command timed out after 1s and was stopped",
        "{runs}"
    );
    // The payload's limit ends the run as the task's own does: counted as a timeout.
    assert_eq!(runs[0]["status"], "timeout", "{runs}");
    let runs = db.json(&["task", "runs", deaf_id.trim()]);
    assert_eq!(
        runs[0]["error_message"], "timed out after 1s; the handler stopped",
        "{runs}"
    );
    assert_eq!(runs[0]["output_log"], "before the stop\n", "{runs}");
}

/// What a command writes to `HIVE_PROGRESS` reaches its run while it runs; its last line,
/// written just before the command ends, is read too, and a line that is no report is
/// named in the run's log without failing the task.
#[test]
fn a_commands_progress_file_reaches_its_run() {
    let db = Db::new();
    let go = db.dir.path().join("go");
    let command = format!(
        "echo '0.25 downloading' > \"$HIVE_PROGRESS\"; \
         while [ ! -f '{}' ]; do sleep 0.05; done; \
         echo '0.9 almost there' >> \"$HIVE_PROGRESS\"; \
         echo 'half done' >> \"$HIVE_PROGRESS\"; echo finished",
        go.display()
    );
    let id = db.ok(&create_task(
        "p",
        "shell",
        &[
            "--payload",
            &serde_json::json!({ "command": command }).to_string(),
        ],
    ));
    let id = id.trim();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_hive"))
        .env("HIVE_DATABASE_URL", &db.url)
        .args(["worker", "run", "--role", "r", "--exit-when-idle"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the run's progress", || {
        let runs = db.json(&["task", "runs", id]);
        let progress = &runs[0]["progress"];
        progress["fraction"] == 0.25 && progress["message"] == "downloading"
    });
    // `task get --json` carries the running run's progress, as its table does.
    let task = db.json(&["task", "get", id]);
    assert_eq!(task["progress"]["message"], "downloading", "{task}");
    std::fs::write(&go, "").unwrap();
    assert!(worker.wait().unwrap().success());
    // A task no longer running has none.
    let task = db.json(&["task", "get", id]);
    assert!(task["progress"].is_null(), "{task}");
    let runs = db.json(&["task", "runs", id]);
    assert_eq!(runs[0]["status"], "success", "{runs}");
    let log = runs[0]["output_log"].as_str().unwrap_or_default();
    assert!(log.starts_with("finished\n"), "{log}");
    assert!(
        log.contains(
            "[HIVE_PROGRESS report refused: `half` is not a fraction from 0 to 1; \
             write a line such as `0.42 copying files`]"
        ),
        "{log}"
    );
}

/// An exit status the payload lists as permanent fails the task at once, its retries left
/// unused; another status is retried; a status that cannot be one is refused at create.
#[test]
fn a_permanent_exit_code_fails_the_task_without_retries() {
    let db = Db::new();
    let payload = |code: u8| {
        serde_json::json!({
            "command": format!("echo bad input >&2; exit {code}"),
            "permanent_exit_codes": [64, 65],
        })
        .to_string()
    };
    let retried = ["--max-retries", "1", "--retry-base", "0.01", "--payload"];
    let for_good = db.ok(&create_task(
        "p",
        "shell",
        &[&retried[..], &[&payload(65)]].concat(),
    ));
    let again = db.ok(&create_task(
        "a",
        "shell",
        &[&retried[..], &[&payload(3)]].concat(),
    ));
    db.work_until_idle_logged(&[]);
    let runs = db.json(&["task", "runs", for_good.trim()]);
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(
        runs[0]["error_message"],
        "command exited with status 65: bad input"
    );
    assert_eq!(
        db.json(&["task", "get", for_good.trim()])["status"],
        "failed"
    );
    let runs = db.json(&["task", "runs", again.trim()]);
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(2),
        "retried once: {runs}"
    );

    let bad = serde_json::json!({"command": "true", "permanent_exit_codes": [0]}).to_string();
    let (ok, _, stderr) = db.run(&create_shell(&bad));
    assert!(!ok);
    assert!(
        stderr.contains("`permanent_exit_codes` holds 0; exit statuses that fail are 1 to 255"),
        "{stderr}"
    );
}

/// `--log-output` writes each line a command prints to the worker's log with its task id
/// and stream: control characters escaped, a long line cut, a last line without its
/// newline included. Without the flag none of it is there.
#[test]
fn log_output_forwards_each_line_to_the_workers_log() {
    let db = Db::new();
    let command = "echo 'to stdout'; printf 'wipe\\033[2J\\n'; echo 'to stderr' >&2; \
                   head -c 5000 /dev/zero | tr '\\0' x; echo; printf 'no newline'";
    let payload = serde_json::json!({ "command": command }).to_string();
    let first = db.ok(&create_shell(&payload));
    let stderr = db.work_until_idle_logged(&["--log-output"]);
    let line = |text: &str, stream: &str| {
        stderr.lines().any(|l| {
            l.contains(&format!("hive::output: {text} task_id={}", first.trim()))
                && l.ends_with(&format!("stream=\"{stream}\""))
        })
    };
    assert!(line("to stdout", "stdout"), "{stderr}");
    assert!(line("to stderr", "stderr"), "{stderr}");
    assert!(line("wipe\\u{1b}[2J", "stdout"), "{stderr}");
    assert!(
        line(&format!("{} …", "x".repeat(4096)), "stdout"),
        "{stderr}"
    );
    assert!(line("no newline", "stdout"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escaped: {stderr}");

    db.ok(&create_shell(&payload));
    let stderr = db.work_until_idle_logged(&[]);
    assert!(!stderr.contains("hive::output"), "{stderr}");
}

#[test]
fn a_second_ctrl_c_stops_a_worker_at_once() {
    let db = Db::new();
    let pid_file = db.dir.path().join("child.pid");
    let task = db.ok(&create_shell(&format!(
        r#"{{"command": "sleep 300 & echo $! > '{}'; wait"}}"#,
        pid_file.display()
    )));
    let log = db.dir.path().join("worker.stderr");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_hive"))
        .env("HIVE_DATABASE_URL", &db.url)
        .args(["worker", "run", "--role", "r", "--shutdown-grace", "600"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    // The shell creates the file before `echo` writes to it: wait for the whole line.
    let read_pid = || {
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        text.ends_with('\n')
            .then(|| text.trim().parse::<u32>().ok())
            .flatten()
    };
    wait_for("the command's child pid", || read_pid().is_some());
    let child = read_pid().unwrap();
    let pid = worker.id().to_string();
    let interrupt = || {
        let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(status.success());
    };
    interrupt();
    // The first one is graceful: the worker says so and waits for its running task.
    wait_for("the graceful stop line", || {
        stderr().contains("Ctrl-C again to stop at once")
    });
    assert!(
        worker.try_wait().unwrap().is_none(),
        "still in its grace: {}",
        stderr()
    );
    let stopping = Instant::now();
    interrupt();
    let status = worker.wait().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(20), "{}", stderr());
    assert_eq!(status.code(), Some(130), "{}", stderr());
    assert!(stderr().contains("stopping at once"), "{}", stderr());
    assert!(
        !stderr().contains("exiting without waiting"),
        "the database answered: {}",
        stderr()
    );
    wait_for("the command's child killed", || {
        !Path::new(&format!("/proc/{child}")).exists()
    });
    // Given back, not left to its lease: queued again, its attempt not
    // counted, and the worker gone from the registry.
    let got = db.json(&["task", "get", task.trim()]);
    assert_eq!(got["status"], "queued", "{got}");
    assert_eq!(got["attempts"], 0, "{got}");
    let workers = db.json(&["worker", "list"]);
    assert_eq!(workers, serde_json::json!([]), "unregistered");
}

#[test]
fn worker_list_tells_a_silent_worker_from_a_live_one_as_status_does() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Registers the workers, `silent`'s last heartbeat an hour ago (microseconds since the
    // epoch).
    let register = |ids: &'static [&'static str]| {
        rt.block_on(async {
            let client = hive_client::Client::connect(&db.url).await.unwrap();
            for id in ids {
                client.register_worker(id, "r", vec![]).await.unwrap();
            }
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query(
                "UPDATE workers SET last_heartbeat = last_heartbeat - 3600000000 \
                 WHERE id = 'silent'",
            )
            .execute(&mut c)
            .await
            .unwrap();
        })
    };
    register(&["live", "silent"]);
    let table = db.ok(&["worker", "list"]);
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!(" {id} ")))
            .unwrap()
            .to_owned()
    };
    assert!(row("live").contains(" active "), "{table}");
    assert!(row("silent").contains(" stale "), "{table}");
    let listed = db.json(&["worker", "list"]);
    let alive: Vec<(&str, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_str().unwrap(), w["alive"].as_bool().unwrap()))
        .collect();
    assert_eq!(alive, [("live", true), ("silent", false)]);
    assert_eq!(db.json(&["status"])["active_workers"], 1);

    // Pruning takes the workers silent for longer than asked, never a live one.
    let out = db.json(&["worker", "prune", "--silent-for", "2h"]);
    assert_eq!(
        out,
        serde_json::json!({"removed": []}),
        "silent for an hour only"
    );
    let out = db.ok(&["worker", "prune", "--silent-for", "30m"]);
    assert_eq!(out.trim(), "1 silent worker(s) removed");
    let (ok, _, stderr) = db.run(&["worker", "prune", "--silent-for", "soon"]);
    assert!(!ok && stderr.contains("soon"), "{stderr}");
    let ids: Vec<_> = db
        .json(&["worker", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["live"]);
    register(&["silent"]);

    // A live worker is not removed by mistake; a silent one is.
    let (ok, _, stderr) = db.run(&["worker", "unregister", "live"]);
    assert!(!ok && stderr.contains("is alive"), "{stderr}");
    let out = db.ok(&["worker", "unregister", "silent"]);
    assert_eq!(
        out.trim(),
        "worker silent unregistered; 0 task(s) back in the queue"
    );
    let out = db.json(&["worker", "unregister", "live", "--force"]);
    assert_eq!(out, serde_json::json!({"id": "live", "requeued": []}));
    assert!(db.json(&["worker", "list"]).as_array().unwrap().is_empty());

    // Silent, but holding a run whose lease holds: it may be cut off, not dead, and its
    // run released would run twice at once. Kept, unless forced.
    register(&["silent"]);
    let held = rt.block_on(async {
        let client = hive_client::Client::connect(&db.url).await.unwrap();
        let id = client
            .create_task(hive_client::NewTask::new("held", "x"))
            .await
            .unwrap();
        let silent = hive_client::WorkerId::parse("silent").unwrap();
        let lease = std::time::Duration::from_secs(3600);
        let claimed = client
            .claim_tasks(&silent, &["x".to_owned()], 1, lease)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        id
    });
    let (ok, _, stderr) = db.run(&["worker", "unregister", "silent"]);
    assert!(!ok && stderr.contains("leases hold until"), "{stderr}");
    let out = db.json(&["worker", "unregister", "silent", "--force"]);
    assert_eq!(
        out,
        serde_json::json!({"id": "silent", "requeued": [held.to_string()]})
    );
}

/// The run's duration in milliseconds, from `hive task runs --json`'s timestamps.
fn run_ms(run: &serde_json::Value) -> i64 {
    let at =
        |field: &str| chrono::DateTime::parse_from_rfc3339(run[field].as_str().unwrap()).unwrap();
    (at("completed_at") - at("started_at")).num_milliseconds()
}

#[test]
fn noop_and_sleep_tasks_run_and_each_handler_start_is_in_the_exec_log() {
    let db = Db::new();
    let noop = db.ok(&create_task(
        "n",
        "noop",
        &["--payload", r#"{"ignored": 1}"#],
    ));
    let sleeps: Vec<String> = (0..3)
        .map(|_| db.ok(&create_task("s", "sleep", &["--payload", r#"{"ms": 200}"#])))
        .collect();
    let exec_log = db.dir.path().join("exec.log");
    let (ok, _, stderr) = db.run(&[
        "worker",
        "run",
        "--role",
        "load",
        "--id",
        "w-load",
        "--type",
        "noop",
        "--type",
        "sleep",
        "--concurrency",
        "4",
        "--exec-log",
        exec_log.to_str().unwrap(),
        "--exit-when-idle",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("types noop,sleep"), "{stderr}");
    let log = std::fs::read_to_string(&exec_log).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");
    for id in std::iter::once(&noop).chain(&sleeps) {
        let id = id.trim();
        let task = db.json(&["task", "get", id]);
        assert_eq!(task["status"], "completed", "{task}");
        assert_eq!(task["result"], serde_json::Value::Null, "{task}");
        let runs = db.json(&["task", "runs", id]);
        assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
        let run = &runs[0];
        let line = format!("{id}\t{}\t1\tw-load", run["id"].as_str().unwrap());
        assert!(log.lines().any(|l| l == line), "{line:?} not in {log}");
        if task["task_type"] == "sleep" {
            assert!(run_ms(run) >= 200, "a 200 ms sleep took {} ms", run_ms(run));
        }
    }
}

#[test]
fn a_bad_sleep_payload_is_refused_at_create_and_fails_its_run_naming_the_problem() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let before = db.snapshot();
    db.refused(
        db.hive()
            .args(create_task("s", "sleep", &["--payload", r#"{"ms": -1}"#])),
        "task create",
        "invalid sleep payload: `ms` must be a whole number of milliseconds from 0 to 3600000, not -1",
        &before,
    );
    let plan = db.write(
        "plan.json",
        r#"{"title": "p", "subtasks": [{"id": "nap", "title": "nap", "task_type": "sleep", "payload": {}}]}"#,
    );
    db.refused(
        db.hive().args(["plan", "submit", &plan]),
        "plan submit",
        "subtask `nap`: invalid sleep payload: `ms` is missing",
        &before,
    );
    // One written by another client, which the CLI's check never saw.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = rt.block_on(async {
        let client = hive_client::Client::connect(&db.url).await.unwrap();
        client
            .create_task(
                hive_client::NewTask::new("bad", "sleep")
                    .payload(serde_json::json!({"seconds": 1})),
            )
            .await
            .unwrap()
    });
    db.work_until_idle(&["--type", "sleep"]);
    let task = db.json(&["task", "get", &id.to_string()]);
    // Permanent: one attempt, whatever the retries left.
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(
        task["last_error"],
        "invalid sleep payload: unknown field `seconds`; expected {\"ms\": N} with N from 0 to 3600000",
        "{task}"
    );
}

#[test]
fn a_sleep_stops_when_its_run_is_told_to() {
    let db = Db::new();
    let id = db.ok(&create_once(
        "long",
        "sleep",
        r#"{"ms": 3600000}"#,
        &["--timeout", "1"],
    ));
    db.ok(&[
        "worker",
        "run",
        "--role",
        "r",
        "--type",
        "sleep",
        "--exit-when-idle",
    ]);
    let runs = db.json(&["task", "runs", id.trim()]);
    assert_eq!(runs[0]["status"], "timeout", "{runs}");
    // Ended at the 1 s timeout: a handler deaf to its stop signal would be dropped only
    // after the worker's timeout grace (5 s more).
    assert!(run_ms(&runs[0]) < 5_000, "{runs}");
}

/// `--role` may be left out: the worker's role is then `worker`, and so is the start of its
/// name.
#[test]
fn a_worker_without_a_role_is_a_worker() {
    let db = Db::new();
    db.ok(&create_task("t", "noop", &[]));
    let (ok, _, stderr) = db.run(&["worker", "run", "--type", "noop", "--exit-when-idle"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("role worker,"), "{stderr}");
    assert!(stderr.contains(" worker-"), "{stderr}");
    assert_eq!(
        db.json(&["task", "list", "--status", "completed"])[0]["title"],
        "t"
    );
}

/// One HTTP/1.0 GET: the status and the body, or None when nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WITHIN)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: hive\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// `--metrics-bind` serves the worker's probes beside `/metrics`: ready while its beats are
/// stored; not ready, but alive, while another process holds the database's write lock
/// for longer than the lease (the database, not the worker, is at fault); ready again
/// once the lock is let go.
#[test]
fn the_metrics_address_serves_the_workers_probes() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut worker = Command::new(env!("CARGO_BIN_EXE_hive"))
        .env("HIVE_DATABASE_URL", &db.url)
        .args(["worker", "run", "--type", "noop", "--lease-secs", "1"])
        .args(["--metrics-bind", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| http_get(&addr, path);
    wait_for("the worker ready", || {
        get("/readyz") == Some((200, "ok\n".into()))
    });
    assert_eq!(get("/healthz"), Some((200, "ok\n".into())));
    let (status, metrics) = get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("hive_workers_alive 1"), "{metrics}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut holder = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut c)
            .await
            .unwrap();
        c
    });
    wait_for("the worker not ready", || {
        get("/readyz").is_some_and(|(status, why)| {
            status == 503 && why.contains("longer than the lease (1s)")
        })
    });
    assert_eq!(get("/healthz"), Some((200, "ok\n".into())), "alive");
    rt.block_on(sqlx::query("ROLLBACK").execute(&mut holder))
        .unwrap();
    wait_for("the worker ready again", || {
        get("/readyz") == Some((200, "ok\n".into()))
    });
    let status = Command::new("kill")
        .args(["-INT", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(worker.wait().unwrap().success());
}

/// A worker waiting for a database not up yet answers its probes (alive, not ready; no
/// metrics yet), and stops at SIGTERM as a graceful stop: exit 0, its (empty) report on
/// stderr and, with `--json`, on stdout.
#[test]
fn a_worker_stopped_while_its_database_is_down_stops_gracefully() {
    use support::free_port;
    // A port nothing listens on: every connection is refused, and retried.
    let url = format!("postgres://root@127.0.0.1:{}/test", free_port());
    let probes = format!("127.0.0.1:{}", free_port());
    let worker = Command::new(env!("CARGO_BIN_EXE_hive"))
        .args([
            "--json",
            "--database-url",
            &url,
            "worker",
            "run",
            "--type",
            "noop",
        ])
        .args(["--metrics-bind", &probes])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = |path| http_get(&probes, path).map(|(status, _)| status);
    wait_for("the probes", || status("/healthz") == Some(200));
    assert_eq!(status("/readyz"), Some(503));
    assert_eq!(status("/metrics"), Some(503));
    let (stderr, report) = stopped_by_sigterm(worker);
    assert!(stderr.contains("stopped: 0 completed"), "{stderr}");
    assert_eq!(report["completed"], 0, "{report}");
    assert_eq!(report["left_queued"], serde_json::json!([]), "{report}");
}

/// A worker meant to finish the queue, stopped by SIGTERM with ready tasks left, says it
/// was stopped before it ran them, not that they were not ready.
#[test]
fn a_worker_stopped_with_ready_tasks_says_so() {
    let db = Db::new();
    let long = serde_json::json!({ "ms": 600_000 }).to_string();
    for i in 0..3 {
        db.ok(&[
            "task",
            "create",
            "--title",
            &format!("s{i}"),
            "--type",
            "sleep",
            "--payload",
            &long,
        ]);
    }
    let worker = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .env("HIVE_DATABASE_URL", &db.url)
        .args([
            "--json",
            "worker",
            "run",
            "--type",
            "sleep",
            "--exit-when-idle",
        ])
        .args(["--concurrency", "1", "--shutdown-grace", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("a task to start", || {
        db.json(&["task", "list", "--status", "in_progress"])
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    let (stderr, report) = stopped_by_sigterm(worker);
    assert_eq!(
        report["left_queued"],
        serde_json::json!([{ "task_type": "sleep", "queued": 3, "why": "stopped" }]),
        "{report}"
    );
    assert!(
        stderr.contains("the worker was stopped before it ran them"),
        "{stderr}"
    );
}

/// Sends SIGTERM to a `hive --json worker run` and waits for it: it must exit 0; its
/// stderr, and the report it printed on stdout.
fn stopped_by_sigterm(worker: std::process::Child) -> (String, serde_json::Value) {
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let out = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let report = serde_json::from_slice(&out.stdout).unwrap();
    (stderr, report)
}
