//! Retries (issue 7, item 9), through the worker runtime with a real backoff: a task whose
//! handler always fails ends `failed` after exactly `max_retries + 1` runs, each retry
//! starting no earlier than its backoff allows (on the store's clock); a permanent failure
//! fails at once; a task that recovers completes on the attempt that succeeds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_client::{
    Client, NewTask, RetryPolicy, Run, RunStatus, Task, TaskContext, TaskError, TaskStatus,
    WorkerReport,
};
use hive_store::Store;

use crate::worker::{join_workers, spawn_workers};

const POLICY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max: Duration::from_secs(2),
    jitter: hive_client::Jitter::None,
};

fn client(store: Arc<dyn Store>) -> Client {
    crate::worker::client_retrying(store, POLICY)
}

hive_store::per_backend!(hive_store::testing::TestStore::run, client =>
    always_failing_task_fails_after_max_retries_plus_one_runs,
    permanent_failure_fails_at_once,
    task_completes_on_the_attempt_that_succeeds,
    a_snoozed_task_runs_again_later_without_using_an_attempt,
);

/// Runs one task to its end with two workers (so a retry could be picked up early by the
/// idle one, were the backoff not enforced) whose handler fails while `fail(run_number)`
/// says so. Returns the task, its runs, the run numbers the handler was called with, and
/// the summed worker report.
async fn run_to_end(
    c: &Client,
    max_retries: u32,
    fail: fn(u32) -> Option<TaskError>,
) -> (Task, Vec<Run>, Vec<u32>, WorkerReport) {
    let id = c
        .create_task(NewTask::new("flaky", "flaky").max_retries(max_retries))
        .await
        .unwrap();
    let calls: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler = {
        let calls = calls.clone();
        move |ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.lock().unwrap().push(ctx.run.run_number);
                match fail(ctx.run.run_number) {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
        }
    };
    let workers = spawn_workers(c, "retry", 2, 2, handler);
    let report = join_workers(workers, Duration::from_secs(60)).await;
    let task = c.get_task(id).await.unwrap().unwrap();
    let runs = c.list_runs(id).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    (task, runs, calls, report)
}

/// Each retry started no earlier than the previous run's end plus the backoff for that
/// attempt (`base × 2^(attempt−1)`), both read from the store's clock.
fn assert_backoff_respected(runs: &[Run]) {
    for pair in runs.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let ended = prev.completed_at.expect("a finished run has an end");
        let backoff = POLICY.backoff(prev.run_number);
        let gap = next.started_at - ended;
        assert!(
            gap.to_std().is_ok_and(|gap| gap >= backoff),
            "run {} started {gap} after run {} ended; the backoff is {backoff:?}",
            next.run_number,
            prev.run_number
        );
    }
}

fn statuses(runs: &[Run]) -> Vec<RunStatus> {
    runs.iter().map(|r| r.status).collect()
}

async fn always_failing_task_fails_after_max_retries_plus_one_runs(c: Client) {
    const MAX_RETRIES: u32 = 3;
    let (task, runs, calls, report) = run_to_end(&c, MAX_RETRIES, |run| {
        Some(TaskError::new(format!("boom {run}")))
    })
    .await;
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    assert_eq!(task.attempts, MAX_RETRIES + 1);
    assert_eq!(task.last_error.as_deref(), Some("boom 4"));
    assert_eq!(statuses(&runs), vec![RunStatus::Failure; 4], "{runs:?}");
    assert_eq!(
        runs.iter().map(|r| r.run_number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(calls, [1, 2, 3, 4], "the handler was called once per run");
    assert_backoff_respected(&runs);
    assert_eq!(
        report,
        WorkerReport {
            failed: 1,
            retried: u64::from(MAX_RETRIES),
            ..Default::default()
        }
    );
}

async fn permanent_failure_fails_at_once(c: Client) {
    let (task, runs, calls, report) =
        run_to_end(&c, 3, |_| Some(TaskError::permanent("bad input"))).await;
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    assert_eq!(task.attempts, 1);
    assert_eq!(task.last_error.as_deref(), Some("bad input"));
    assert_eq!(statuses(&runs), [RunStatus::Failure], "{runs:?}");
    assert_eq!(calls, [1]);
    assert_eq!(
        report,
        WorkerReport {
            failed: 1,
            ..Default::default()
        }
    );
}

async fn task_completes_on_the_attempt_that_succeeds(c: Client) {
    let (task, runs, calls, report) = run_to_end(&c, 3, |run| {
        (run < 3).then(|| TaskError::new(format!("not yet {run}")))
    })
    .await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.attempts, 3);
    assert_eq!(
        statuses(&runs),
        [RunStatus::Failure, RunStatus::Failure, RunStatus::Success],
        "{runs:?}"
    );
    assert_eq!(calls, [1, 2, 3]);
    assert_backoff_respected(&runs);
    assert_eq!(
        report,
        WorkerReport {
            completed: 1,
            retried: 2,
            ..Default::default()
        }
    );
}

/// A handler that snoozes is called again once the snooze has passed; the snoozed run ends
/// `cancelled` and uses up no attempt, even with no retries left.
async fn a_snoozed_task_runs_again_later_without_using_an_attempt(c: Client) {
    const SNOOZE: Duration = Duration::from_millis(300);
    let (task, runs, calls, report) =
        run_to_end(&c, 0, |run| (run == 1).then(|| TaskError::snooze(SNOOZE))).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.attempts, 1, "the snoozed run gave its attempt back");
    assert_eq!(
        statuses(&runs),
        [RunStatus::Cancelled, RunStatus::Success],
        "{runs:?}"
    );
    assert_eq!(calls, [1, 2]);
    let gap = runs[1].started_at - runs[0].completed_at.unwrap();
    assert!(
        gap.to_std().is_ok_and(|g| g >= SNOOZE),
        "run 2 started {gap} after the snooze began; the snooze is {SNOOZE:?}"
    );
    assert_eq!(
        report,
        WorkerReport {
            completed: 1,
            snoozed: 1,
            ..Default::default()
        }
    );
}
