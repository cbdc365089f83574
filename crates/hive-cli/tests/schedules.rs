//! Schedules across processes: three `hive schedule run` processes on one database create
//! exactly one task per slot, none missing; a scheduler waits for a database not up yet
//! and stops at a signal whatever it waits for; a worker schedules unless told
//! `--no-schedules`; bad schedules are refused before anything is written.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hive_client::models::{Missed, NewSchedule, ScheduledTask};
use hive_client::store::TaskFilter;
use hive_client::{Client, OpsConfig};
use hive_store::Store;
use support::db::Db;

hive_store::per_backend!([sqlite, postgres], hive_store::testing::TestStore::run_with_url =>
    three_schedulers_create_one_task_per_slot,
);

async fn three_schedulers_create_one_task_per_slot(store: Arc<dyn Store>, url: String) {
    let client = Client::from_store(store, OpsConfig::default());
    let every_second = NewSchedule::new("tick", "* * * * * *", ScheduledTask::new("tick", "tick"))
        .missed(Missed::CatchUp { limit: 10 });
    client.add_schedule(every_second).await.unwrap();
    let mut schedulers: Vec<tokio::process::Child> = (0..3)
        .map(|_| {
            scheduler(&[
                "--database-url",
                &url,
                "schedule",
                "run",
                "--interval-ms",
                "100",
            ])
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    schedulers.iter().for_each(terminate);
    for s in &mut schedulers {
        let status = tokio::time::timeout(Duration::from_secs(10), s.wait())
            .await
            .expect("a scheduler stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    }
    let tasks = client
        .list_tasks(&TaskFilter {
            task_type: Some("tick".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let slots: Vec<String> = tasks
        .iter()
        .map(|t| t.metadata["slot"].as_str().unwrap().to_owned())
        .collect();
    let distinct: BTreeSet<chrono::DateTime<chrono::Utc>> =
        slots.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(
        distinct.len(),
        slots.len(),
        "a slot created two tasks: {slots:?}"
    );
    assert!(distinct.len() >= 2, "the schedule fired: {slots:?}");
    let (first, last) = (*distinct.first().unwrap(), *distinct.last().unwrap());
    assert_eq!(
        (last - first).num_seconds() + 1,
        distinct.len() as i64,
        "every second between the first and last slot has its task: {slots:?}"
    );
    let s = client.get_schedule("tick").await.unwrap().unwrap();
    assert_eq!(s.last_fired, Some(last));
    eprintln!(
        "SCHEDULES {}: 3 schedulers, {} slots, one task each",
        client.store().backend(),
        distinct.len()
    );
}

/// A scheduler whose step waits on the database (another process holds SQLite's write
/// lock, which it would wait 10 s for) still stops at SIGTERM without waiting for the step.
#[tokio::test]
async fn a_scheduler_waiting_on_the_database_stops_at_a_signal() {
    use sqlx::Connection;
    let db = Db::new();
    every_second(&db, "x");
    let mut holder = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    // Its report comes before its connections close (which waits up to 5 s for the one
    // still waiting on the lock), and well before the step's 10 s would have passed.
    stops_at_a_signal_with_its_report(&[
        "--database-url",
        &db.url,
        "schedule",
        "run",
        "--interval-ms",
        "100",
    ])
    .await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}

/// A scheduler still connecting (to a server that accepts and never answers) stops at
/// SIGTERM with its report, as it does once connected, not by the signal's default action.
#[tokio::test]
async fn a_scheduler_still_connecting_stops_at_a_signal() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://root@{}/test", silent.local_addr().unwrap());
    // Accepts, then holds each connection without a word until the test ends.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    stops_at_a_signal_with_its_report(&["--database-url", &url, "schedule", "run"]).await;
}

/// A scheduler started while its Postgres cannot be reached (nothing listens on its port
/// yet) waits for it, as a worker does, and fires once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_started_before_its_database_waits_for_it() {
    let Some(ts) = hive_store::testing::postgres().await else {
        return hive_store::testing::report_skip(
            "a_scheduler_started_before_its_database_waits_for_it",
        );
    };
    ts.run_with_url(|store, url| async move {
        use tokio::io::AsyncBufReadExt;
        let client = Client::from_store(store, OpsConfig::default());
        let every_second =
            NewSchedule::new("tick", "* * * * * *", ScheduledTask::new("tick", "tick"));
        client.add_schedule(every_second).await.unwrap();
        let server = url::Url::parse(&url).unwrap();
        let server = format!(
            "{}:{}",
            server.host_str().unwrap(),
            server.port().unwrap_or(5432)
        );
        // A port nothing listens on until the relay below opens it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut late = url::Url::parse(&url).unwrap();
        late.set_host(Some("127.0.0.1")).unwrap();
        late.set_port(Some(port)).unwrap();
        let mut scheduler = scheduler(&[
            "--database-url",
            late.as_str(),
            "schedule",
            "run",
            "--interval-ms",
            "100",
        ]);
        let mut said = tokio::io::BufReader::new(scheduler.stdout.take().unwrap()).lines();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(scheduler.try_wait().unwrap().is_none(), "still waiting");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let relay = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let filter = TaskFilter {
            task_type: Some("tick".into()),
            ..Default::default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client.list_tasks(&filter).await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the scheduler fired nothing once its database answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        terminate(&scheduler);
        let line = tokio::time::timeout(Duration::from_secs(10), said.next_line())
            .await
            .expect("the scheduler stopped")
            .unwrap()
            .unwrap_or_default();
        assert!(
            line.starts_with("scheduler stopped: ") && !line.contains(": 0 slots"),
            "{line}"
        );
        let status = tokio::time::timeout(Duration::from_secs(30), scheduler.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
        relay.abort();
    })
    .await;
}

/// Starts `hive` with `args` (a scheduler), sends it SIGTERM 1.5 s later, and checks that
/// it says it stopped within 4 s and exits 0.
async fn stops_at_a_signal_with_its_report(args: &[&str]) {
    use tokio::io::AsyncBufReadExt;
    let mut scheduler = scheduler(args);
    let mut said = tokio::io::BufReader::new(scheduler.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(scheduler.try_wait().unwrap().is_none(), "still running");
    terminate(&scheduler);
    let line = tokio::time::timeout(Duration::from_secs(4), said.next_line())
        .await
        .expect("the scheduler stopped without finishing what it waited for")
        .unwrap();
    assert_eq!(
        line.as_deref(),
        Some("scheduler stopped: 0 slots fired, 0 skipped (overlaps)")
    );
    let status = tokio::time::timeout(Duration::from_secs(30), scheduler.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A hangup stops a scheduler gracefully, unless it was started under `nohup`, which it
/// then honours: logging out of the session that started it leaves it running.
#[tokio::test]
async fn a_hangup_stops_a_scheduler_unless_started_under_nohup() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hive.db").display());
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["--database-url", url.as_str(), "migrate"])
        .status()
        .unwrap();
    assert!(migrated.success());
    let args = ["--database-url", url.as_str(), "schedule", "run"];
    let hangup = |child: &tokio::process::Child| {
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
    };
    let mut plain = scheduler(&args);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hangup(&plain);
    let status = tokio::time::timeout(Duration::from_secs(30), plain.wait())
        .await
        .expect("a hangup stops it")
        .unwrap();
    assert!(status.success(), "gracefully: {status}");

    let mut under_nohup = tokio::process::Command::new("nohup")
        .arg(env!("CARGO_BIN_EXE_hive"))
        .args(args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hangup(&under_nohup);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        under_nohup.try_wait().unwrap().is_none(),
        "still running after the hangup nohup ignores"
    );
    terminate(&under_nohup);
    let status = tokio::time::timeout(Duration::from_secs(30), under_nohup.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `hive` with `args`, its report read from a pipe.
fn scheduler(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn terminate(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
}

#[test]
fn bad_schedules_are_refused_before_anything_is_written() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let before = db.snapshot();
    let add = |extra: &[&str]| {
        let mut c = db.hive();
        c.args(["schedule", "add", "nightly", "--title", "t", "--type", "x"])
            .args(extra);
        c
    };
    for (args, want) in [
        (&["--cron", "* * *"][..], "3 fields"),
        (&["--cron", "99 * * * *"][..], "`cron`"),
        (
            &["--cron", "0 0 31 2 *"][..],
            "`0 0 31 2 *` never fires: no date matches it",
        ),
        (
            &["--cron", "0 2 * * *", "--tz", "Mars/Olympus"][..],
            "Mars/Olympus",
        ),
        (
            &[
                "--cron",
                "0 2 * * *",
                "--missed",
                "catch-up",
                "--catch-up-limit",
                "0",
            ][..],
            "missed.limit",
        ),
        (
            &[
                "--cron",
                "0 2 * * *",
                "--overlap",
                "skip",
                "--missed",
                "catch-up",
            ][..],
            "`skip` cannot go with catching up several missed slots",
        ),
        (
            &["--cron", "0 2 * * *", "--catch-up-limit", "3"][..],
            "--catch-up-limit: only with --missed catch-up",
        ),
    ] {
        db.refused(
            &mut add(args),
            &format!("schedule add {args:?}"),
            want,
            &before,
        );
    }
    db.ok(&[
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--title",
        "t",
        "--type",
        "x",
    ]);
    let listed = db.json(&["schedule", "list"]);
    assert_eq!(listed[0]["name"], "nightly");
    assert!(listed[0]["next_slot"].is_string(), "{listed}");
    let again = db
        .hive()
        .args([
            "schedule",
            "add",
            "nightly",
            "--cron",
            "0 3 * * *",
            "--title",
            "t",
            "--type",
            "x",
        ])
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a second schedule of the same name is refused"
    );
    db.ok(&["schedule", "pause", "nightly"]);
    assert_eq!(db.json(&["schedule", "get", "nightly"])["enabled"], false);
    db.ok(&["schedule", "resume", "nightly"]);
    db.ok(&["schedule", "delete", "nightly"]);
    assert_eq!(db.json(&["schedule", "list"]), serde_json::json!([]));
}

/// A worker runs the scheduler unless told `--no-schedules` (a fleet where a few workers
/// schedule spares the others' queries): each works a 2.5 s `sleep` task while a schedule
/// fires every second; only the one that schedules creates its tasks.
#[test]
fn a_worker_schedules_unless_told_not_to() {
    let db = Db::new();
    every_second(&db, "tick");
    let ticks = |db: &Db| {
        db.json(&["task", "list", "--type", "tick"])
            .as_array()
            .unwrap()
            .len()
    };
    let nap = ["--payload", r#"{"ms": 2500}"#];
    db.ok(&support::db::create_task("nap", "sleep", &nap));
    db.work_until_idle(&["--type", "sleep", "--no-schedules"]);
    assert_eq!(
        ticks(&db),
        0,
        "a worker told --no-schedules created scheduled tasks"
    );
    db.ok(&support::db::create_task("nap", "sleep", &nap));
    db.work_until_idle(&["--type", "sleep"]);
    assert!(
        ticks(&db) >= 1,
        "the schedule fired while a scheduling worker ran"
    );
}

/// Adds the schedule `tick`: a task of `task_type` every second.
fn every_second(db: &Db, task_type: &str) {
    db.ok(&[
        "schedule",
        "add",
        "tick",
        "--cron",
        "* * * * * *",
        "--title",
        "Tick",
        "--type",
        task_type,
    ]);
}

/// A schedule of a plan: each slot makes one whole plan (the file's subtasks and
/// dependencies, the slot in its metadata) that a worker runs to completion; a plan file
/// no slot could submit, or a plan given with a task's options, is refused with nothing
/// written.
#[test]
fn a_schedule_of_a_plan_runs_the_workflow_at_each_slot() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let plan = db.write(
        "nightly.toml",
        r#"
title = "nightly ✓"
metadata = { team = "data" }

[[subtasks]]
id = "fetch"
title = "Fetch"
task_type = "noop"

[[subtasks]]
id = "sum"
title = "Sum"
task_type = "noop"
dependencies = ["fetch"]
"#,
    );
    let keyed = db.write(
        "keyed.json",
        r#"{"title": "k", "idempotency_key": "mine",
            "subtasks": [{"id": "a", "title": "A", "task_type": "noop"}]}"#,
    );
    let no_command = db.write(
        "shell.json",
        r#"{"title": "s", "subtasks": [{"id": "a", "title": "A", "task_type": "shell"}]}"#,
    );
    let before = db.snapshot();
    let add = [
        "schedule",
        "add",
        "nightly",
        "--cron",
        "* * * * * *",
        "--plan",
    ];
    let adding = |file: &str| {
        let mut c = db.hive();
        c.args(add).arg(file);
        c
    };
    db.refused(
        &mut adding(&keyed),
        "a keyed plan",
        "plan.idempotency_key",
        &before,
    );
    db.refused(
        &mut adding(&no_command),
        "a shell subtask without a command",
        "subtask `a`",
        &before,
    );
    let (ok, _, stderr) = db.run(&[&add[..], &[plan.as_str(), "--title", "t"]].concat());
    assert!(!ok && stderr.contains("--title"), "{stderr}");
    assert_eq!(db.snapshot(), before, "nothing written");

    db.ok(&[&add[..], &[plan.as_str()]].concat());
    let listed = db.ok(&["schedule", "list"]);
    assert!(
        listed.contains("plan of 2") && listed.contains("nightly ✓"),
        "{listed}"
    );
    // A worker busy for 2.5 s schedules meanwhile and runs each slot's plan.
    db.ok(&support::db::create_task(
        "nap",
        "sleep",
        &["--payload", r#"{"ms": 2500}"#],
    ));
    db.work_until_idle(&["--type", "sleep", "--type", "noop"]);
    db.ok(&["schedule", "pause", "nightly"]);
    // What the last slot made as the worker left.
    db.work_until_idle(&["--type", "noop", "--no-schedules"]);

    let plans = db.json(&["plan", "list"]);
    let plans = plans.as_array().unwrap();
    assert!(plans.len() >= 2, "the schedule fired: {plans:?}");
    let mut slots = BTreeSet::new();
    for p in plans {
        assert_eq!(p["title"], "nightly ✓");
        assert_eq!(p["status"], "completed", "{p}");
        assert_eq!(p["total_subtasks"], 2);
        assert_eq!(p["metadata"]["team"], "data");
        assert_eq!(p["metadata"]["schedule"], "nightly");
        slots.insert(p["metadata"]["slot"].as_str().unwrap().to_owned());
    }
    assert_eq!(slots.len(), plans.len(), "one plan per slot: {plans:?}");
    // Did the last run succeed: the listing says.
    let got = db.json(&["schedule", "get", "nightly"]);
    assert_eq!(got["last_run"]["kind"], "plan", "{got}");
    assert_eq!(got["last_run"]["status"], "completed", "{got}");
    let listed = db.ok(&["schedule", "list"]);
    assert!(listed.contains("plan completed"), "{listed}");
    // Night by night: each slot's plan, newest first.
    let runs = db.json(&["schedule", "runs", "nightly", "--limit", "100"]);
    let runs = runs.as_array().unwrap();
    let made: Vec<_> = runs.iter().filter(|r| !r["run"].is_null()).collect();
    assert_eq!(made.len(), plans.len(), "{runs:?}");
    assert!(
        made.iter().all(|r| r["run"]["status"] == "completed"),
        "{runs:?}"
    );
    let table = db.ok(&["schedule", "runs", "nightly"]);
    assert!(
        table.trim_start().starts_with("SLOT") && table.contains("completed"),
        "{table}"
    );
    let (ok, _, stderr) = db.run(&["schedule", "runs", "nightly", "--limit", "0"]);
    assert!(!ok && stderr.contains("--limit"), "{stderr}");
}

/// `schedule add --replace`, as a deploy script declares its schedules at every run:
/// created, then unchanged, then redefined in place (an operator's pause kept), where a
/// plain `add` of a taken name is refused.
#[test]
fn a_schedule_added_again_with_replace_is_redefined_in_place() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let declare = |cron: &str| {
        db.json(&[
            "schedule",
            "add",
            "report",
            "--cron",
            cron,
            "--title",
            "Report",
            "--type",
            "noop",
            "--replace",
        ])
    };
    assert_eq!(declare("0 2 * * *")["change"], "created");
    assert_eq!(declare("0 2 * * *")["change"], "unchanged");
    db.ok(&["schedule", "pause", "report"]);
    let redefined = declare("0 3 * * *");
    assert_eq!(redefined["change"], "redefined");
    assert_eq!(
        (redefined["cron"].as_str(), redefined["enabled"].as_bool()),
        (Some("0 3 * * *"), Some(false))
    );
    let stored = db.json(&["schedule", "get", "report"]);
    assert_eq!(
        (stored["cron"].as_str(), stored["enabled"].as_bool()),
        (Some("0 3 * * *"), Some(false))
    );
    assert_eq!(stored["overlap"], "allow");
    // Skipping overlaps is part of the definition.
    let skipping = db.json(&[
        "schedule",
        "add",
        "report",
        "--cron",
        "0 3 * * *",
        "--title",
        "Report",
        "--type",
        "noop",
        "--overlap",
        "skip",
        "--replace",
    ]);
    assert_eq!(
        (skipping["change"].as_str(), skipping["overlap"].as_str()),
        (Some("redefined"), Some("skip"))
    );
    // As is queueing them, which goes with catching up several slots.
    let queueing = db.json(&[
        "schedule",
        "add",
        "report",
        "--cron",
        "0 3 * * *",
        "--title",
        "Report",
        "--type",
        "noop",
        "--overlap",
        "queue",
        "--missed",
        "catch-up",
        "--catch-up-limit",
        "5",
        "--replace",
    ]);
    assert_eq!(
        (queueing["change"].as_str(), queueing["overlap"].as_str()),
        (Some("redefined"), Some("queue"))
    );
    assert_eq!(db.json(&["schedule", "get", "report"])["overlap"], "queue");
    let shown = db.ok(&["schedule", "get", "report"]);
    for line in [
        "schedule report\n",
        "\ncron:        0 3 * * * (UTC)\n",
        "\nmissed:      catch up (at most 5 missed slots)\n",
        "\noverlap:     queue\n",
        "\nlast manual: -\n",
        "\ncreates:     noop: Report\n",
        "\nstate:       paused\n",
        "\nnext slot:   -\n",
    ] {
        assert!(shown.contains(line), "{line:?} in:\n{shown}");
    }
    db.ok(&["schedule", "resume", "report"]);
    let shown = db.ok(&["schedule", "get", "report"]);
    assert!(
        shown.contains("\nnext slot:   20") && !shown.contains("overdue"),
        "resumed: a slot ahead, on time: {shown}"
    );
    let (ok, _, stderr) = db.run(&[
        "schedule",
        "add",
        "report",
        "--cron",
        "0 4 * * *",
        "--title",
        "Report",
        "--type",
        "noop",
    ]);
    assert!(
        !ok && stderr.contains("exists"),
        "without --replace: {stderr}"
    );
    assert_eq!(db.json(&["schedule", "get", "report"])["cron"], "0 3 * * *");
}

/// `schedule trigger`: a paused schedule run by hand creates its task now, once per key;
/// an unknown name is refused.
#[test]
fn a_schedule_is_run_by_hand() {
    let db = Db::new();
    db.ok(&["migrate"]);
    db.ok(&[
        "schedule",
        "add",
        "report",
        "--cron",
        "0 2 * * *",
        "--title",
        "Report",
        "--type",
        "noop",
        "--paused",
    ]);
    let first = db.json(&["schedule", "trigger", "report", "--idempotency-key", "k1"]);
    let again = db.json(&["schedule", "trigger", "report", "--idempotency-key", "k1"]);
    assert_eq!(first, again, "one task per key");
    assert_eq!(first["kind"], "task");
    let id = first["id"].as_str().unwrap();
    let task = db.json(&["task", "get", id]);
    assert_eq!(
        (
            task["metadata"]["manual"].as_bool(),
            task["status"].as_str()
        ),
        (Some(true), Some("queued"))
    );
    let other = db.ok(&["schedule", "trigger", "report"]);
    assert!(
        other.starts_with("schedule report run by hand: task "),
        "{other}"
    );
    let (ok, _, stderr) = db.run(&["schedule", "trigger", "ghost"]);
    assert!(
        !ok && stderr.contains("schedule `ghost` not found"),
        "{stderr}"
    );
    let listed = db.json(&["task", "list", "--type", "noop"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
}
