//! What a worker process leaves behind and what it survives: a closed or stalled stderr
//! never wedges it (nor the database it holds the write lock of), and a shell command's
//! whole process group dies with its task (on `timeout_secs`, and when the worker's
//! shutdown grace runs out), so a released task's next run is the only one running; that
//! run sees a higher `HIVE_RUN_NUMBER`. Processes a command moves out of its group
//! (`setsid`, a daemon's double fork) die with it too, found by their `HIVE_RUN_ID`, and one
//! that also drops its `HIVE_RUN_ID` cannot hold its task open by keeping its stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use hive_client::{NewTask, TaskStatus};
use support::{Harness, eventually};
use tokio::io::AsyncReadExt;

hive_store::per_backend!([sqlite, postgres], support::run_case =>
    closed_stderr_never_wedges_a_worker,
    shell_commands_die_with_their_task,
    processes_that_leave_the_group_die_with_their_task,
);

/// Generous bounds for a loaded 2-core machine; they bound waits, they measure nothing.
const WITHIN: Duration = Duration::from_secs(60);

async fn all_completed(h: &Harness, ids: &[hive_client::TaskId]) {
    for id in ids {
        eventually(&format!("task {id} completed"), WITHIN, || async {
            (h.task(*id).await.status == TaskStatus::Completed).then_some(())
        })
        .await;
    }
}

async fn shell_tasks(h: &Harness, n: usize) -> Vec<hive_client::TaskId> {
    h.shell_tasks((0..n).map(|_| "true".to_owned())).await
}

/// The worker logs every SQL statement (`HIVE_LOG=debug`) to a stderr that is closed,
/// at start for one worker and mid-run for another: both keep completing tasks and
/// heartbeating, other writers are never locked out, and SIGTERM stops them cleanly.
async fn closed_stderr_never_wedges_a_worker(h: Harness) {
    // Closed before the worker writes anything (this exited 101 with a panic before).
    let first = shell_tasks(&h, 20).await;
    let (mut early, pipe) = h.worker_with_stderr_pipe("closed-at-start", &["--role", "r"]);
    drop(pipe);
    all_completed(&h, &first).await;

    // Closed after the worker has logged: it must not panic on a connection thread.
    let (mut late, mut pipe) = h.worker_with_stderr_pipe("closed-mid-run", &["--role", "r"]);
    let mut buf = [0u8; 4096];
    let got = tokio::time::timeout(WITHIN, pipe.read(&mut buf))
        .await
        .expect("the worker logs at debug level")
        .expect("read the worker's stderr");
    assert!(got > 0, "the worker's stderr closed by itself");
    drop(pipe);
    // Writers elsewhere are never locked out, and new work is still done.
    let second = shell_tasks(&h, 40).await;
    all_completed(&h, &second).await;

    for w in [&early, &late] {
        let before = h.registered_worker(&w.name).await.expect("registered");
        eventually(&format!("{} heartbeats", w.name), WITHIN, || async {
            let now = h.registered_worker(&w.name).await?;
            (now.last_heartbeat > before.last_heartbeat).then_some(())
        })
        .await;
        w.signal_worker("TERM");
    }
    for w in [&mut early, &mut late] {
        let exited = w.exit(WITHIN).await;
        assert!(
            exited.status.success(),
            "{} exited with {}",
            w.name,
            exited.status
        );
        assert!(
            h.registered_worker(&w.name).await.is_none(),
            "{} unregistered",
            w.name
        );
    }
}

fn read_pid(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn gone(pid: u32, what: &str) {
    eventually(&format!("{what} (pid {pid}) gone"), WITHIN, || async {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;
}

/// A background `sleep` started by a command dies when the command times out, and when
/// the worker's shutdown grace runs out; the released task runs again with run number 2.
async fn shell_commands_die_with_their_task(h: Harness) {
    let timed_pid = h.path("timed.pid");
    let held_pid = h.path("held.pid");
    let runs = h.path("held.runs");
    let timed = h
        .client
        .create_task(
            NewTask::new("times out", "shell")
                .payload(serde_json::json!({
                    "command": format!("sleep 300 & echo $! > '{timed_pid}'; wait"),
                    "timeout_secs": 1,
                }))
                .max_retries(0),
        )
        .await
        .unwrap();
    let held = h
        .client
        .create_task(
            NewTask::new("held at shutdown", "shell").payload(serde_json::json!({
                "command": format!(
                    "echo \"$HIVE_RUN_NUMBER $HIVE_ATTEMPT\" >> '{runs}'; \
                     sleep 300 & echo $! > '{held_pid}'; wait"
                ),
            })),
        )
        .await
        .unwrap();
    let mut first = h.worker(
        "first",
        &[
            "--role",
            "r",
            "--concurrency",
            "2",
            "--shutdown-grace",
            "0.5",
        ],
    );

    // Timeout: the run fails and the command's child goes with it.
    eventually("the timed-out task failed", WITHIN, || async {
        (h.task(timed).await.status == TaskStatus::Failed).then_some(())
    })
    .await;
    let pid = eventually("the timed command's child pid", WITHIN, || async {
        read_pid(&timed_pid)
    })
    .await;
    gone(pid, "the timed-out command's child").await;
    let error = h.task(timed).await.last_error.unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");

    // Shutdown: the grace runs out, the task is given back, its command's child is killed.
    let pid = eventually("the held command's child pid", WITHIN, || async {
        read_pid(&held_pid)
    })
    .await;
    first.signal_worker("TERM");
    let report = first.exit(WITHIN).await.assert_clean();
    assert_eq!(report.released, 1, "the held task is released");
    gone(pid, "the released command's child").await;
    assert_eq!(h.task(held).await.status, TaskStatus::Queued);

    // The next run is told it is another run, though the released one used no attempt.
    std::fs::remove_file(&held_pid).unwrap();
    let mut second = h.worker("second", &["--role", "r", "--shutdown-grace", "0.5"]);
    let pid = eventually("the second run's child pid", WITHIN, || async {
        read_pid(&held_pid)
    })
    .await;
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        lines, "1 1\n2 1\n",
        "run numbers and attempts of the two runs"
    );
    second.signal_worker("TERM");
    second.exit(WITHIN).await.assert_clean();
    gone(pid, "the second run's child").await;
}

/// A command that starts `setsid` processes (one keeping the command's stdout, one a
/// daemon's double fork with its output elsewhere) completes as soon as it ends, and both
/// processes die with it; one that also drops `HIVE_RUN_ID` is left running (the documented
/// way to start something meant to outlive its task), and holding stdout open it delays
/// its task by the pipes' grace only, which the run's log records. A command still running
/// when the worker's shutdown grace runs out loses its moved-out process too.
async fn processes_that_leave_the_group_die_with_their_task(h: Harness) {
    let (kept, daemon, unmarked, held) = (
        h.path("kept.pid"),
        h.path("daemon.pid"),
        h.path("unmarked.pid"),
        h.path("held.pid"),
    );
    // Each waits until its process has left the group, so the group's kill alone misses it.
    let wait_for = |pid: &str| format!("while [ ! -s '{pid}' ]; do sleep 0.05; done");
    let ids = h
        .shell_tasks([
            format!(
                "setsid sh -c 'echo $$ > \"$1\"; exec sleep 300' _ '{kept}' & {}; echo kept",
                wait_for(&kept)
            ),
            format!(
                "(setsid sh -c 'sleep 301 & echo $! > \"$1\"' _ '{daemon}' > /dev/null 2>&1 &); \
                 {}; echo daemon",
                wait_for(&daemon)
            ),
            format!(
                "env -u HIVE_RUN_ID setsid sh -c 'echo $$ > \"$1\"; exec sleep 302' _ '{unmarked}' & \
                 {}; echo unmarked",
                wait_for(&unmarked)
            ),
        ])
        .await;
    // Still running when the worker stops: its handler is dropped when the grace runs out.
    let running = h
        .shell_tasks([format!(
            "setsid sh -c 'echo $$ > \"$1\"; exec sleep 303' _ '{held}' & wait"
        )])
        .await;
    let mut worker = h.worker(
        "detaching",
        &[
            "--role",
            "r",
            "--concurrency",
            "4",
            "--shutdown-grace",
            "0.5",
        ],
    );
    all_completed(&h, &ids).await;
    for (id, pid_file, echoed) in [(ids[0], &kept, "kept"), (ids[1], &daemon, "daemon")] {
        let pid = read_pid(pid_file).expect("the command wrote its process's pid");
        gone(
            pid,
            &format!("the process `{echoed}` moved out of its group"),
        )
        .await;
        let runs = h.runs(id).await;
        let log = runs[0].output_log.clone().unwrap_or_default();
        assert_eq!(log, format!("{echoed}\n"), "{}", h.describe(id).await);
    }
    let pid = read_pid(&unmarked).expect("the unmarked command wrote its pid");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "a process without HIVE_RUN_ID outside the group is left alone"
    );
    let log = h.runs(ids[2]).await[0]
        .output_log
        .clone()
        .unwrap_or_default();
    let _ = nix_kill(pid);
    assert!(log.starts_with("unmarked\n"), "{log}");
    assert!(
        log.contains("[not read further: 2s after the command ended"),
        "{log}"
    );
    let pid = eventually("the running command's process", WITHIN, || async {
        read_pid(&held)
    })
    .await;
    worker.signal_worker("TERM");
    let report = worker.exit(WITHIN).await.assert_clean();
    assert_eq!(report.released, 1, "the running task is given back");
    gone(pid, "the process a released command moved out of its group").await;
    assert_eq!(h.task(running[0]).await.status, TaskStatus::Queued);
}

fn nix_kill(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
}
