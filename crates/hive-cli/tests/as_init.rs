//! `hive worker run` as PID 1 of its PID namespace, as in a container started without an
//! init: the processes its shell commands leave behind are handed to it when their `sh`
//! exits, and it must reap them, or each stays a zombie for as long as the worker lives.
//! Needs root (for `unshare --pid`), as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use hive_client::TaskStatus;
use support::{Harness, eventually};

hive_store::per_backend!([sqlite], support::run_case =>
    a_worker_that_is_pid_1_reaps_what_its_commands_leave,
);

/// Generous bounds for a loaded 2-core machine; they bound waits, they measure nothing.
const WITHIN: Duration = Duration::from_secs(60);

/// The processes whose parent is `parent`, with their state (`Z` for a zombie), from the
/// test's /proc.
fn children(parent: u32) -> Vec<(u32, String)> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
            let (state, ppid) = (fields.next()?, fields.next()?);
            (ppid == parent).then(|| (pid, state.to_owned()))
        })
        .collect()
}

/// Twenty commands each leave a background `sleep`, killed with the command's group when
/// it ends and by then the worker's child: every task completes on its first run (the
/// worker's own wait for each `sh` is never robbed by the reaping), and no zombie stays.
/// SIGTERM, which PID 1 would ignore without a handler, stops it cleanly.
async fn a_worker_that_is_pid_1_reaps_what_its_commands_leave(h: Harness) {
    let ids = h
        .shell_tasks((0..20).map(|_| "sleep 300 & echo started".to_owned()))
        .await;
    let mut worker = h.init_worker("init", &["--role", "r", "--concurrency", "4"]);
    for id in &ids {
        eventually(&format!("task {id} completed"), WITHIN, || async {
            (h.task(*id).await.status == TaskStatus::Completed).then_some(())
        })
        .await;
        let task = h.task(*id).await;
        assert_eq!(task.attempts, 1, "{}", h.describe(*id).await);
    }
    // `unshare` forked the worker: its only child.
    let init = match children(worker.pid()).as_slice() {
        [(pid, _)] => *pid,
        other => panic!(
            "unshare's children: {other:?}; stderr:\n{}",
            worker.stderr()
        ),
    };
    eventually("no zombie among the worker's children", WITHIN, || async {
        let zombies: Vec<u32> = children(init)
            .into_iter()
            .filter(|(_, state)| state == "Z")
            .map(|(pid, _)| pid)
            .collect();
        zombies.is_empty().then_some(())
    })
    .await;
    let term = std::process::Command::new("kill")
        .args(["-s", "TERM", &init.to_string()])
        .status()
        .expect("run kill");
    assert!(term.success(), "kill -s TERM {init}");
    // `unshare` exits with its child's status.
    let report = worker.exit(WITHIN).await.assert_clean();
    assert_eq!(report.completed, 20, "{report:?}");
}
