//! Real `hive worker run` processes sharing one database: several processes drain a queue
//! completing each task exactly once; a SIGKILLed worker's task comes back after its lease
//! and completes once elsewhere, while its command is killed by the other worker; a frozen (SIGSTOPped) worker that resumes after its lease
//! is fenced out; and (Postgres) workers whose clocks are minutes off neither reclaim a
//! live task early nor hold their own leases too short or too long.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use hive_client::{Run, RunStatus, TaskId, TaskStatus};
use hive_store::testing::size;
use support::{Harness, eventually, logging_command, poll_until, read_log};
use tokio::time::Instant;

hive_store::per_backend!([sqlite, postgres], support::run_case =>
    four_processes_complete_each_task_once,
    killed_worker_task_completes_once_elsewhere,
    killed_worker_task_is_claimed_again_within_15_s_by_default,
    frozen_worker_is_fenced_out_after_resuming,
);

/// The guard of a worker's commands needs no database of its own kind.
mod guard {
    use super::*;

    hive_store::per_backend!([sqlite], support::run_case =>
        a_killed_workers_command_dies_with_it_with_no_other_worker,
    );
}

/// Only Postgres compares times on the server's clock across machines (SQLite's clock is
/// the one machine's).
mod clock {
    use super::*;

    hive_store::per_backend!([postgres], support::run_case =>
        skewed_clocks_neither_reclaim_early_nor_stretch_leases,
    );
}

/// Lease of the workers in the fault tests: short, so a fault shows within seconds.
const LEASE: Duration = Duration::from_secs(2);
const LEASE_SECS: &str = "2";
/// Reaper interval of the rescuing workers.
const REAP: Duration = Duration::from_millis(200);
const REAP_MS: &str = "200";
/// The backoff before a timed-out task may be claimed again: the first retry's delay under
/// the default retry policy.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// A worker of the fault tests: one task at a time under the short lease, plus `extra`.
fn fault_args<'a>(role: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--role",
        role,
        "--concurrency",
        "1",
        "--lease-secs",
        LEASE_SECS,
    ];
    args.extend_from_slice(extra);
    args
}

/// A rescuing worker: reaps and polls every [`REAP`], exits once idle.
fn rescuer_args(role: &str) -> Vec<&str> {
    fault_args(
        role,
        &[
            "--reap-interval-ms",
            REAP_MS,
            "--poll-ms",
            REAP_MS,
            "--exit-when-idle",
        ],
    )
}

/// Room for process start-up and a loaded 2-core machine; it bounds a wait, not a speed.
const SLACK: Duration = Duration::from_secs(5);

/// Battery item 1 across processes: four `hive worker run` processes drain one database;
/// each task's command runs once and completes once, nothing stays queued or held, and no
/// process sees "database is locked".
async fn four_processes_complete_each_task_once(h: Harness) {
    const PROCESSES: usize = 4;
    let n = size(400, 20_000);
    let log = h.path("executions.log");
    let ids = h
        .shell_tasks((0..n).map(|_| logging_command("", &log)))
        .await;
    let started = Instant::now();
    let mut workers: Vec<_> = (0..PROCESSES)
        .map(|i| {
            h.worker(
                &format!("drain-{i}"),
                &["--role", "drain", "--concurrency", "4", "--exit-when-idle"],
            )
        })
        .collect();
    let within = Duration::from_secs(60) + Duration::from_millis(20) * n as u32;
    let mut completed = 0;
    for w in &mut workers {
        let report = w.exit(within).await.assert_clean();
        assert_eq!(report.stale, 0, "{} had stale completions", w.name);
        assert_eq!(report.released, 0, "{} released tasks", w.name);
        completed += report.completed;
    }
    eprintln!(
        "DRAIN {}: {n} shell tasks by {PROCESSES} processes in {:?}",
        h.backend,
        started.elapsed()
    );
    assert_eq!(completed, n as u64, "the processes' completion counts");

    let mut executions: HashMap<_, Vec<_>> = HashMap::new();
    for e in read_log(&log) {
        executions.entry(e.task).or_default().push(e);
    }
    for id in &ids {
        let ran = executions.remove(id).unwrap_or_default();
        assert_eq!(ran.len(), 1, "task {id} ran {} times: {ran:?}", ran.len());
        let task = h.task(*id).await;
        assert_eq!(task.status, TaskStatus::Completed, "task {id}");
        assert_eq!(task.attempts, 1, "task {id}");
        assert_eq!(task.current_run_id, Some(ran[0].run), "task {id}");
        let runs = h.runs(*id).await;
        assert_eq!(runs.len(), 1, "task {id} has runs {runs:?}");
        assert_eq!(runs[0].status, RunStatus::Success, "task {id}");
        assert_eq!(runs[0].id, ran[0].run, "task {id}");
    }
    assert!(executions.is_empty(), "unknown tasks ran: {executions:?}");
    let counts = h.client.count_tasks(None).await.unwrap();
    for status in [
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::InProgress,
    ] {
        assert_eq!(
            counts.get(&status).copied().unwrap_or(0),
            0,
            "{status} tasks left"
        );
    }
}

/// A command whose first attempt runs `wait` before logging; later attempts log at once.
fn first_attempt_waits(wait: &str, log: &str) -> String {
    logging_command(
        &format!(r#"if [ "$HIVE_ATTEMPT" = 1 ]; then {wait}; fi; "#),
        log,
    )
}

/// Battery item 2: a worker process is SIGKILLed while it runs a task. The reaper of
/// another process closes that run as `timeout` once the lease expires, and the other
/// process completes the task once; recovery takes about lease + reaper interval + the
/// first retry's backoff. The dead worker's command, left running, is killed by the
/// other worker's sweep.
async fn killed_worker_task_completes_once_elsewhere(h: Harness) {
    let log = h.path("executions.log");
    let [id] = h.shell_tasks([first_attempt_waits("sleep 60", &log)]).await[..] else {
        unreachable!()
    };
    let mut doomed = h.worker("doomed", &fault_args("crash", &[]));
    let first = h.wait_in_progress(id, "doomed", SLACK * 4).await;
    let mut rescuer = h.worker("rescuer", &rescuer_args("crash"));
    h.wait_registered("rescuer", SLACK * 4).await;

    // The worker alone, as the OOM killer does: its command runs on.
    doomed.crash_alone().await;
    let killed_at = Instant::now();
    // Read before the reaper can close the run: the lease as the dead worker left it.
    let at_kill = h.client.store().now().await.unwrap();
    let lease_left = h
        .client
        .get_run(first.id)
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at;
    let bound = LEASE + REAP + RETRY_BACKOFF + SLACK;
    let completed = poll_until(bound * 2, || async {
        (h.task(id).await.status == TaskStatus::Completed).then_some(())
    })
    .await;
    if completed.is_none() {
        panic!(
            "the task did not complete within {:?} of the crash; {}\nrescuer's stderr:\n{}",
            bound * 2,
            h.describe(id).await,
            rescuer.stderr()
        );
    }
    let recovery = killed_at.elapsed();
    eprintln!(
        "RECOVERY {}: SIGKILL to completed in {recovery:?} (lease {LEASE:?}, reaper {REAP:?}, \
         retry backoff {RETRY_BACKOFF:?})",
        h.backend
    );
    assert!(
        recovery < bound,
        "recovery took {recovery:?}, more than lease + reaper + backoff + slack = {bound:?}"
    );

    let report = rescuer.exit(SLACK * 2).await.assert_clean();
    assert_eq!(report.completed, 1);
    let runs = timed_out_then_succeeded(&h, id).await;
    let expires = lease_left.expect("the run was still leased when its worker died");
    let (reaped, claimed) = (runs[0].completed_at.unwrap(), runs[1].started_at);
    eprintln!(
        "RECOVERY {} breakdown (database clock): lease left at kill {} ms, reaped {} ms after \
         expiry, claimed {} ms after reaping, completed {} ms after claiming",
        h.backend,
        (expires - at_kill).num_milliseconds(),
        (reaped - expires).num_milliseconds(),
        (claimed - reaped).num_milliseconds(),
        (runs[1].completed_at.unwrap() - claimed).num_milliseconds(),
    );
    assert_eq!(runs[0].id, first.id);
    assert_eq!(runs[0].worker_id.as_str(), "doomed");
    assert_eq!(runs[1].worker_id.as_str(), "rescuer");
    let task = h.task(id).await;
    assert_eq!(task.current_run_id, Some(runs[1].id));
    let executions = read_log(&log);
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!((executions[0].attempt, executions[0].run), (2, runs[1].id));
    // The dead worker's `sleep 60` did not run on beside the task's next run: the
    // rescuer's sweep for commands of dead workers killed it.
    let mark = format!("HIVE_RUN_ID={}", first.id);
    let gone = poll_until(ORPHAN_SWEEP + SLACK * 2, || async {
        (running_with(&mark) == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the dead worker's command still runs");
}

/// A host's only worker is SIGKILLed while its command runs: no other worker is there to
/// sweep, yet the command does not outlive it by more than moments — the worker's guard,
/// a child that outlives it, kills it once the worker is dead.
async fn a_killed_workers_command_dies_with_it_with_no_other_worker(h: Harness) {
    let dir_file = h.path("run-dir");
    let command = format!("dirname \"$HIVE_INPUTS\" > '{dir_file}'; sleep 60");
    let [id] = h.shell_tasks([command]).await[..] else {
        unreachable!()
    };
    let mut lonely = h.worker("lonely", &fault_args("lonely", &[]));
    let run = h.wait_in_progress(id, "lonely", SLACK * 4).await;
    let mark = format!("HIVE_RUN_ID={}", run.id);
    assert!(
        poll_until(SLACK, || async { (running_with(&mark) > 0).then_some(()) })
            .await
            .is_some(),
        "the command started"
    );
    let written = poll_until(SLACK, || async {
        let dir = std::fs::read_to_string(&dir_file).unwrap_or_default();
        dir.ends_with('\n').then_some(dir)
    });
    let run_dir = std::path::PathBuf::from(written.await.expect("the command wrote").trim());
    assert!(run_dir.join("inputs.json").exists(), "{run_dir:?}");
    lonely.crash_alone().await;
    let gone = poll_until(SLACK, || async { (running_with(&mark) == 0).then_some(()) }).await;
    assert!(gone.is_some(), "the dead worker's command still runs");
    let removed = poll_until(SLACK, || async { (!run_dir.exists()).then_some(()) }).await;
    assert!(
        removed.is_some(),
        "the dead worker's run directory is left: {run_dir:?}"
    );
}

/// How often a worker sweeps for the commands of dead workers on its host.
const ORPHAN_SWEEP: Duration = Duration::from_secs(5);

/// How many live (not zombie) processes hold `var` (`NAME=value`) in their environment.
fn running_with(var: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|entry| {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
            !zombie && environ.split(|b| *b == 0).any(|v| v == var.as_bytes())
        })
        .count()
}

/// Under default settings (no lease, heartbeat or reaper flags), a SIGKILLed worker's task
/// is claimed by another worker within 15 s: at most a lease (10 s) after the last
/// heartbeat, a reaper pass (2 s), the first retry's backoff (1 s) and a poll (1 s).
async fn killed_worker_task_is_claimed_again_within_15_s_by_default(h: Harness) {
    let [id] = h.shell_tasks(["sleep 60".to_owned()]).await[..] else {
        unreachable!()
    };
    let mut doomed = h.worker("doomed", &["--role", "crash"]);
    let first = h.wait_in_progress(id, "doomed", SLACK * 4).await;
    let _rescuer = h.worker("rescuer", &["--role", "crash"]);
    h.wait_registered("rescuer", SLACK * 4).await;
    doomed.crash().await;
    let at_kill = h.client.store().now().await.unwrap();
    let claimed = poll_until(Duration::from_secs(15) + SLACK * 2, || async {
        let runs = h.client.list_runs(id).await.unwrap();
        runs.iter().find(|r| r.id != first.id).map(|r| r.started_at)
    })
    .await;
    let Some(claimed) = claimed else {
        panic!("not claimed again; {}", h.describe(id).await);
    };
    let after = (claimed - at_kill).to_std().unwrap_or_default();
    eprintln!(
        "RECOVERY {} with defaults: claimed again {after:?} after the kill",
        h.backend
    );
    assert!(
        after < Duration::from_secs(15) + SLACK,
        "claimed again after {after:?}"
    );
}

/// Battery item 3: worker A is frozen (SIGSTOP) past its lease; worker B reaps the task,
/// claims it and completes it. When A resumes (SIGCONT), its heartbeat revives nothing, it
/// learns that its run ended elsewhere and stops its handler (the command's process group
/// is killed before it does its work), and its late report is rejected as stale: the task
/// stays completed with B's run.
async fn frozen_worker_is_fenced_out_after_resuming(h: Harness) {
    let log = h.path("executions.log");
    let gate = h.path("release-a");
    let wait_for_gate = format!("while [ ! -e '{gate}' ]; do sleep 0.05; done");
    let [id] = h
        .shell_tasks([first_attempt_waits(&wait_for_gate, &log)])
        .await[..]
    else {
        unreachable!()
    };
    // A's own reaper stays out of the way: only its heartbeats touch the store.
    let mut a = h.worker(
        "frozen",
        &fault_args(
            "stale",
            &["--reap-interval-ms", "600000", "--exit-when-idle"],
        ),
    );
    let first = h.wait_in_progress(id, "frozen", SLACK * 4).await;
    freeze_outside_transactions(&h, &a, first.id).await;
    let frozen_at = Instant::now();

    let mut b = h.worker("rescuer", &rescuer_args("stale"));
    let report = b
        .exit(LEASE + REAP + RETRY_BACKOFF + SLACK * 4)
        .await
        .assert_clean();
    assert_eq!(report.completed, 1, "B completes the task");
    assert!(
        frozen_at.elapsed() > LEASE,
        "A stayed frozen past its lease"
    );
    let runs = timed_out_then_succeeded(&h, id).await;
    let (timed_out, second) = (runs[0].clone(), runs[1].clone());
    assert_eq!(timed_out.id, first.id);
    assert_eq!(
        timed_out.lease_expires_at, None,
        "a closed run holds no lease"
    );
    assert_eq!(second.worker_id.as_str(), "rescuer");
    a.signal("CONT");
    // A's overdue heartbeat runs at once and must not extend or reopen run 1; A's check of
    // what it holds finds run 1 gone and stops the command waiting on the gate (never
    // opened), and A, idle, exits. Its report for run 1 is stale.
    let report = a.exit(SLACK * 4).await.assert_clean();
    assert_eq!(
        (report.completed, report.stale),
        (0, 1),
        "A's late report is rejected as stale"
    );
    let after_resume = h.client.get_run(first.id).await.unwrap().unwrap();
    assert_eq!(after_resume, timed_out, "A changed its timed-out run");
    let task = h.task(id).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.current_run_id, Some(second.id), "run 2 stays current");
    let runs = h.runs(id).await;
    assert_eq!(
        runs,
        [timed_out, second.clone()],
        "A's completion changed a run"
    );
    // Only B's execution ran to its end: A's was stopped when A learned of it.
    let executions: Vec<_> = read_log(&log)
        .into_iter()
        .map(|e| (e.attempt, e.run))
        .collect();
    assert_eq!(executions, [(2, second.id)]);
}

/// SIGSTOPs `worker` between two of its heartbeats, never inside a transaction: an SQLite
/// writer frozen while holding the write lock blocks every other process, which no lease
/// can fix. It stops the worker right after a heartbeat committed (run `run`'s lease moved),
/// then proves the write lock is free with a write of its own; if that write waits, the
/// worker was caught mid-write, so it is resumed and the freeze tried again.
async fn freeze_outside_transactions(
    h: &Harness,
    worker: &support::WorkerProcess,
    run: hive_client::RunId,
) {
    let lease_of = || async {
        let run = h.client.get_run(run).await.unwrap().unwrap();
        run.lease_expires_at
    };
    for _ in 0..5 {
        let seen = lease_of().await;
        eventually("a heartbeat extending the lease", SLACK * 2, || async {
            (lease_of().await != seen).then_some(())
        })
        .await;
        worker.signal("STOP");
        // A heartbeat of an unknown worker: a write transaction that changes nothing.
        let probe = h.client.update_worker_heartbeat("lock-probe", None);
        tokio::pin!(probe);
        tokio::select! {
            written = &mut probe => {
                written.unwrap();
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        worker.signal("CONT");
        probe.await.unwrap();
    }
    panic!(
        "{} was inside a write transaction at every freeze",
        worker.name
    );
}

/// Battery item 5 (Postgres only: an SQLite database's clock is each process's own): a
/// normal worker holds a long task while a worker 10 minutes ahead and one 10 minutes
/// behind, each holding a long task of its own, reap every 200 ms. No task is reclaimed,
/// and each live lease always ends between now and now + lease on the database clock.
async fn skewed_clocks_neither_reclaim_early_nor_stretch_leases(h: Harness) {
    const HOLD: &str = "sleep 6"; // three leases
    let log = h.path("executions.log");
    let mut worker_args = rescuer_args("clock");
    worker_args.extend(["--heartbeat-ms", "300"]);
    let mut held = Vec::new();
    let mut workers = Vec::new();
    for (name, skew) in [
        ("on-time", None),
        ("ahead", Some("+10m")),
        ("behind", Some("-10m")),
    ] {
        // Each worker is started with exactly one ready task, which it takes.
        let [id] = h
            .shell_tasks([logging_command(&format!("{HOLD}; "), &log)])
            .await[..]
        else {
            unreachable!()
        };
        workers.push(match skew {
            Some(offset) => h.skewed_worker(name, offset, &worker_args),
            None => h.worker(name, &worker_args),
        });
        let first = h.wait_in_progress(id, name, SLACK * 4).await;
        held.push(Held {
            id,
            name,
            skew,
            first,
        });
        check_held_leases(&h, &held).await;
    }
    // While all three hold their tasks, the skewed reapers run 5 times a second.
    let mut samples_with_all_held = 0;
    loop {
        let held_now = check_held_leases(&h, &held).await;
        if held_now == 0 {
            break;
        }
        if held_now == held.len() {
            samples_with_all_held += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        samples_with_all_held >= 5,
        "the three tasks were seen held together only {samples_with_all_held} times"
    );

    for w in &mut workers {
        let report = w.exit(SLACK * 6).await.assert_clean();
        assert_eq!((report.completed, report.stale), (1, 0), "{}", w.name);
    }
    for Held {
        id,
        name,
        skew,
        first,
    } in &held
    {
        let runs = h.runs(*id).await;
        assert_eq!(runs.len(), 1, "{name}'s task ran more than once: {runs:?}");
        assert_eq!(runs[0].status, RunStatus::Success, "{name}");
        // The run id is a UUIDv7 stamped with the claiming process's own clock: proof that
        // the process really ran skewed.
        let process_clock_ms = uuid_v7_millis(&first.id.to_string());
        let skew_ms = process_clock_ms - first.started_at.timestamp_millis();
        let expected_ms = match skew {
            Some(s) if s.starts_with('+') => 600_000,
            Some(_) => -600_000,
            None => 0,
        };
        assert!(
            (skew_ms - expected_ms).abs() < 60_000,
            "{name}'s clock was {skew_ms} ms off the database's; expected about {expected_ms} ms \
             (is libfaketime working?)"
        );
    }
    let executions = read_log(&log);
    assert_eq!(executions.len(), 3, "{executions:?}");
}

/// A task a worker of the clock test took, and the run it took it with.
struct Held {
    id: hive_client::TaskId,
    name: &'static str,
    skew: Option<&'static str>,
    first: hive_client::Run,
}

/// Fails when a held task was taken back (a reaper reclaimed it early) or a live lease ends
/// later than one lease from the database's now; returns how many are still held.
async fn check_held_leases(h: &Harness, held: &[Held]) -> usize {
    let mut still_held = 0;
    for Held {
        id, name, first, ..
    } in held
    {
        let task = h.task(*id).await;
        if task.status == TaskStatus::Completed {
            continue;
        }
        assert!(
            task.status == TaskStatus::InProgress && task.current_run_id == Some(first.id),
            "{name}'s task was taken back: status {}, runs {:?}",
            task.status,
            h.runs(*id).await
        );
        let run = h.client.get_run(first.id).await.unwrap().unwrap();
        let Some(until) = run.lease_expires_at else {
            continue; // finished between the two reads
        };
        still_held += 1;
        // Read after the run, so no heartbeat falls between the two reads.
        let now = h.client.store().now().await.unwrap();
        let left_ms = (until - now).num_milliseconds();
        assert!(
            left_ms > 0 && left_ms <= LEASE.as_millis() as i64,
            "{name}'s lease ends {left_ms} ms from the database's now; expected within {LEASE:?}"
        );
    }
    still_held
}

/// The Unix time in milliseconds a UUIDv7 was stamped with (its first 48 bits).
fn uuid_v7_millis(uuid: &str) -> i64 {
    let hex: String = uuid.chars().filter(|c| *c != '-').take(12).collect();
    i64::from_str_radix(&hex, 16).expect("a UUID's hex digits")
}

/// The task's two runs: the dead worker's, timed out, then the rescuer's success.
async fn timed_out_then_succeeded(h: &Harness, id: TaskId) -> Vec<Run> {
    let runs = h.runs(id).await;
    let statuses: Vec<_> = runs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Timeout, RunStatus::Success],
        "{runs:?}"
    );
    runs
}
