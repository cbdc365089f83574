//! Flow control across worker processes: a type's concurrency limit and serial keys hold
//! across four `hive worker run` processes on a SQLite file and eight on Postgres, set and lifted with `hive
//! limit` while they run; `hive queue pause` stops claims at once and `resume` lets them
//! go on; bad input is refused before anything is written.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hive_client::{NewTask, TaskId, TaskStatus};
use support::db::Db;
use support::{Harness, eventually};

hive_store::per_backend!([sqlite, postgres], support::run_case =>
    limits_and_pauses_hold_across_worker_processes,
    a_plan_files_keyed_subtasks_hold_their_limit_across_processes,
);

/// A shell command logging `SCOPE start|end NANOS` around a short sleep.
fn spanned(scope: &str, log: &str) -> String {
    format!(
        r#"echo "{scope} start $(date +%s%N)" >> '{log}'; sleep 0.25; echo "{scope} end $(date +%s%N)" >> '{log}'"#
    )
}

fn shell(title: String, command: String) -> NewTask {
    NewTask::new(title, "shell").payload(serde_json::json!({ "command": command }))
}

/// The most spans open at once per scope, from the log.
fn peaks(log: &str) -> HashMap<String, i32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut events: HashMap<String, Vec<(u128, i32)>> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [scope, what, at] = parts[..] else {
            panic!("bad log line `{line}`")
        };
        let d = if what == "start" { 1 } else { -1 };
        events
            .entry(scope.to_owned())
            .or_default()
            .push((at.parse().unwrap(), d));
    }
    events
        .into_iter()
        .map(|(scope, mut e)| {
            e.sort();
            let (mut open, mut peak) = (0, 0);
            for (_, d) in e {
                open += d;
                peak = peak.max(open);
            }
            (scope, peak)
        })
        .collect()
}

fn hive(h: &Harness, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["--database-url", &h.url])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hive {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn all_completed(h: &Harness, ids: &[TaskId], within: Duration) {
    eventually("every task completed", within, || async {
        for id in ids {
            if h.task(*id).await.status != TaskStatus::Completed {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn limits_and_pauses_hold_across_worker_processes(h: Harness) {
    let log = h.path("spans.log");
    // 16 slots either way; on Postgres 8 processes, each claiming from its claim loop and
    // its completer: 16 claimers at once.
    let (processes, concurrency) = if h.backend == "postgres" {
        (8, "2")
    } else {
        (4, "4")
    };
    let args = [
        "--role",
        "r",
        "--concurrency",
        concurrency,
        "--poll-ms",
        "200",
    ];
    let _workers: Vec<_> = (0..processes)
        .map(|i| h.worker(&format!("w{i}"), &args))
        .collect();
    for i in 0..processes {
        h.wait_registered(&format!("w{i}"), Duration::from_secs(30))
            .await;
    }

    // A type limit set while the workers run.
    hive(
        &h,
        &["limit", "set", "--type", "shell", "--concurrency", "3"],
    );
    let typed: Vec<NewTask> = (0..15)
        .map(|i| shell(format!("typed {i}"), spanned("type", &log)))
        .collect();
    let ids = h.client.create_tasks(typed).await.unwrap();
    all_completed(&h, &ids, Duration::from_secs(60)).await;
    let listed = hive(&h, &["queue", "list"]);
    assert!(listed.contains("shell"), "{listed}");

    // Lifted; now keys: one serial, one of two at once.
    hive(&h, &["limit", "delete", "--type", "shell"]);
    let mut keyed = Vec::new();
    for i in 0..8 {
        keyed.push(shell(format!("a {i}"), spanned("acct-a", &log)).concurrency_key("acct-a"));
        keyed.push(
            shell(format!("b {i}"), spanned("acct-b", &log))
                .concurrency_key("acct-b")
                .concurrency_limit(2),
        );
    }
    let ids = h.client.create_tasks(keyed).await.unwrap();
    all_completed(&h, &ids, Duration::from_secs(60)).await;
    let peaks = peaks(&log);
    assert_eq!(
        (peaks["type"], peaks["acct-a"], peaks["acct-b"]),
        (3, 1, 2),
        "each limit held across {processes} processes and was reached: {peaks:?}"
    );

    // Paused: nothing of the type starts; resumed: it all runs.
    hive(&h, &["queue", "pause", "shell"]);
    let paused: Vec<NewTask> = (0..3)
        .map(|i| shell(format!("paused {i}"), "true".into()))
        .collect();
    let ids = h.client.create_tasks(paused).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for id in &ids {
        assert_eq!(
            h.task(*id).await.status,
            TaskStatus::Queued,
            "a paused type is not claimed"
        );
    }
    assert!(hive(&h, &["queue", "list"]).contains("paused"));
    hive(&h, &["queue", "resume", "shell"]);
    all_completed(&h, &ids, Duration::from_secs(10)).await;
    eprintln!("FLOW {}: {processes} processes, peaks {peaks:?}", h.backend);
}

/// A TOML plan file whose fan-out shares a concurrency key: however many slots two worker
/// processes have, at most the key's limit of those subtasks run at once, and the join after
/// them still runs.
async fn a_plan_files_keyed_subtasks_hold_their_limit_across_processes(h: Harness) {
    let log = h.path("spans.log");
    let mut toml = String::from("title = \"keyed fan-out\"\n");
    let mut fan = Vec::new();
    for i in 0..6 {
        let id = format!("gpu-{i}");
        toml.push_str(&format!(
            "[[subtasks]]\nid = \"{id}\"\ntitle = \"{id}\"\ntask_type = \"shell\"\n\
             concurrency_key = \"gpu\"\nconcurrency_limit = 2\n\
             payload = {{ command = {command:?} }}\n",
            command = spanned("gpu", &log),
        ));
        fan.push(format!("{id:?}"));
    }
    toml.push_str(&format!(
        "[[subtasks]]\nid = \"join\"\ntitle = \"join\"\ntask_type = \"shell\"\n\
         dependencies = [{}]\npayload = {{ command = \"true\" }}\n",
        fan.join(", ")
    ));
    let file = h.path("keyed.toml");
    std::fs::write(&file, toml).unwrap();
    let plan_id = hive(&h, &["plan", "submit", &file]).trim().to_owned();
    let args = ["--role", "r", "--concurrency", "4", "--exit-when-idle"];
    let mut workers: Vec<_> = (0..2).map(|i| h.worker(&format!("k{i}"), &args)).collect();
    for w in &mut workers {
        let exited = w.exit(Duration::from_secs(60)).await;
        assert!(exited.status.success(), "{exited:?}");
    }
    let results = hive(&h, &["--json", "plan", "results", &plan_id]);
    let results: serde_json::Value = serde_json::from_str(&results).unwrap();
    assert_eq!(results["status"], "completed", "{results}");
    let peaks = peaks(&log);
    assert_eq!(
        peaks["gpu"], 2,
        "the key's limit held and was reached: {peaks:?}"
    );
}

#[test]
fn bad_limits_are_refused_before_anything_is_written() {
    let db = Db::new();
    db.ok(&["migrate"]);
    db.ok(&support::db::create_task("t", "email", &[]));
    let before = db.snapshot();
    for (args, want) in [
        (
            &["limit", "set", "--type", "email", "--concurrency", "0"][..],
            "between 1 and",
        ),
        (
            &["limit", "set", "--type", "email", "--rate", "5/1w"][..],
            "unit",
        ),
        (&["limit", "set", "--type", "email"][..], "--concurrency"),
        (
            &["limit", "set", "--type", "emial", "--concurrency", "2"][..],
            "unknown task type `emial`: no task, worker or schedule uses it (check the spelling, \
             or pass --new-type to set it before its first task)",
        ),
        (
            &["queue", "pause", "emial"][..],
            "unknown task type `emial`: no task, worker or schedule uses it (check the spelling, \
             or pass --new-type",
        ),
        (&["queue", "resume", "email"][..], "not paused"),
        (&["limit", "delete", "--key", "acct"][..], "has no limit"),
        (
            &[
                "task",
                "create",
                "--title",
                "t",
                "--type",
                "x",
                "--concurrency-limit",
                "2",
            ][..],
            "needs a `concurrency_key`",
        ),
    ] {
        let mut c = db.hive();
        c.args(args);
        db.refused(&mut c, &format!("{args:?}"), want, &before);
    }
    // A new type is allowed when asked for.
    db.ok(&[
        "limit",
        "set",
        "--type",
        "later",
        "--rate",
        "60/1m",
        "--new-type",
    ]);
    let listed = db.ok(&["limit", "list"]);
    assert!(
        listed.contains("later") && listed.contains("60/1m"),
        "{listed}"
    );
}
