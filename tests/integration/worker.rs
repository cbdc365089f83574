//! The worker runtime: many workers under load complete every task exactly once; graceful
//! shutdown gives held tasks back; a panicking handler fails only its own task. Also the
//! helpers the other worker-driven files share (spawning workers, summing their reports).

use hive_store::testing::fixtures::tasks;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hive_client::store::TaskFilter;
use hive_client::{
    Client, Event, EventOrigin, Handler, NewTask, OpsConfig, Published, RetryPolicy, RunStatus,
    TaskContext, TaskError, TaskId, TaskStatus, WorkerPhase, WorkerReport,
};
use hive_store::Store;
use hive_store::testing::size;
use tokio::task::JoinSet;

/// A client on `store` that retries failed tasks at once.
pub(crate) fn client(store: Arc<dyn Store>) -> Client {
    client_retrying(store, RetryPolicy::IMMEDIATE)
}

/// A client on `store` that retries failed tasks under `retry`.
pub(crate) fn client_retrying(store: Arc<dyn Store>, retry: RetryPolicy) -> Client {
    let config = OpsConfig {
        retry,
        ..OpsConfig::default()
    };
    Client::from_store(store, config)
}

hive_store::per_backend!(hive_store::testing::TestStore::run, client =>
    eight_workers_complete_each_task_once,
    shutdown_releases_held_tasks,
    shutdown_now_skips_the_grace_and_releases_held_tasks,
    a_stopping_worker_tells_its_handlers_before_the_grace_ends,
    a_worker_told_to_stop_before_it_runs_stops_without_claiming,
    panicking_handler_fails_only_its_task,
    timeouts_stop_handlers_and_end_their_runs_timed_out,
    cancelling_a_task_stops_its_running_handler,
    progress_is_written_at_most_once_a_second_and_announced,
    a_spawn_refuses_at_once_what_it_can_know,
);

/// Starts `n` in-process workers (`{prefix}0`, `{prefix}1`, …) on one client, each running
/// `concurrency` handler calls at once and exiting once nothing is left to do.
pub(crate) fn spawn_workers<H: Handler + Clone>(
    c: &Client,
    prefix: &str,
    n: usize,
    concurrency: u32,
    handler: H,
) -> JoinSet<hive_client::Result<WorkerReport>> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let worker = c
            .worker(format!("{prefix}{i}"))
            .concurrency(concurrency)
            .exit_when_idle(true)
            .handle_signals(false)
            .poll_interval(Duration::from_millis(50));
        set.spawn(worker.run(handler.clone()));
    }
    set
}

/// Runs one no-op worker of concurrency 4 until nothing is left, within 30 s.
pub(crate) async fn drain_with_noop_worker(c: &Client, name: &str) -> WorkerReport {
    tokio::time::timeout(
        Duration::from_secs(30),
        c.worker(name)
            .concurrency(4)
            .exit_when_idle(true)
            .handle_signals(false)
            .poll_interval(Duration::from_millis(50))
            .run(|_ctx: TaskContext| async { Ok::<_, TaskError>(()) }),
    )
    .await
    .expect("the worker drained within 30 s")
    .expect("the worker ran")
}

/// Waits for every worker (failing the test after `limit`) and sums their reports.
pub(crate) async fn join_workers(
    mut set: JoinSet<hive_client::Result<WorkerReport>>,
    limit: Duration,
) -> WorkerReport {
    let mut total = WorkerReport::default();
    let joined = tokio::time::timeout(limit, async {
        while let Some(r) = set.join_next().await {
            total += &r.expect("worker task").expect("worker run");
        }
    })
    .await;
    assert!(joined.is_ok(), "workers did not drain within {limit:?}");
    total
}

/// Joins the workers, feeding every event that arrives meanwhile to `record`. Returns the
/// summed reports, or `None` when they did not all stop within `limit`.
pub(crate) async fn join_recording(
    workers: &mut JoinSet<hive_client::Result<WorkerReport>>,
    events: &mut hive_client::Subscription,
    limit: Duration,
    mut record: impl FnMut(hive_client::Published),
) -> Option<WorkerReport> {
    let mut report = WorkerReport::default();
    let drained = tokio::time::timeout(limit, async {
        loop {
            tokio::select! {
                Some(p) = events.recv() => record(p),
                joined = workers.join_next() => match joined {
                    Some(r) => report += &r.expect("worker task").expect("worker run"),
                    None => break,
                },
            }
        }
    })
    .await;
    drained.ok().map(|()| report)
}

/// Asserts that no task is left queued, assigned or in progress.
pub(crate) async fn assert_nothing_open(c: &Client) {
    for status in [
        TaskStatus::Queued,
        TaskStatus::Assigned,
        TaskStatus::InProgress,
    ] {
        let filter = TaskFilter {
            status: Some(status),
            limit: Some(5),
            ..Default::default()
        };
        let left = c.list_tasks(&filter).await.unwrap();
        assert!(left.is_empty(), "tasks left {status}: {left:?}");
    }
}

/// Handler calls per task: the run number each call executed as.
type Calls = Arc<Mutex<HashMap<TaskId, Vec<u32>>>>;

/// Exactly once under load (issue 7, item 1): 8 workers × concurrency 8 drain the queue;
/// every task has one success run, the handler ran it once (a re-run is legitimate only
/// after its lease expired, which a 30 s lease never should), the completed-event stream
/// and the workers' reports count each task once, and nothing is left open.
async fn eight_workers_complete_each_task_once(c: Client) {
    const WORKERS: usize = 8;
    const CONCURRENCY: u32 = 8;
    let total = size(4_000, 160_000);
    let mut ids = Vec::with_capacity(total);
    for start in (0..total).step_by(5_000) {
        let batch = (start..total.min(start + 5_000))
            .map(|i| NewTask::new(format!("t{i}"), "noop"))
            .collect();
        ids.extend(c.create_tasks(batch).await.unwrap());
    }
    let calls: Calls = Arc::default();
    let handler = {
        let calls = calls.clone();
        move |ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls
                    .lock()
                    .unwrap()
                    .entry(ctx.task.id)
                    .or_default()
                    .push(ctx.run.run_number);
                Ok::<_, TaskError>(())
            }
        }
    };
    let mut events = c.subscribe().await.unwrap();
    let started = Instant::now();
    let mut workers = spawn_workers(&c, "w", WORKERS, CONCURRENCY, handler);
    let mut completions: HashMap<TaskId, u32> = HashMap::with_capacity(total);
    // Only this client's own events: other tests' schemas on the same Postgres database
    // share the notification channel, so remote events may name tasks of theirs.
    let mut record = |p: Published| {
        if let (EventOrigin::Local, Event::TaskCompleted { task_id, .. }) = (p.origin, p.event) {
            *completions.entry(task_id).or_default() += 1;
        }
    };
    let limit = Duration::from_secs(if hive_store::testing::soak() {
        1800
    } else {
        120
    });
    let report = join_recording(&mut workers, &mut events, limit, &mut record)
        .await
        .unwrap_or_else(|| panic!("workers did not drain within {limit:?}"));
    let elapsed = started.elapsed();
    // Every change was committed before its worker returned; its event may still be on its
    // way through the forwarder (slow on a loaded machine): take them until a quiet 2 s.
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        record(p);
    }
    eprintln!(
        "{}: {WORKERS} workers × concurrency {CONCURRENCY} drained {total} tasks in {elapsed:.2?} ({:.0} tasks/s)",
        c.store().backend(),
        total as f64 / elapsed.as_secs_f64()
    );

    assert_eq!(
        report,
        WorkerReport {
            completed: total as u64,
            ..Default::default()
        },
        "the workers' reports count each task completed once and nothing else"
    );
    assert_eq!(events.skipped(), 0, "the event check saw every event");
    assert_eq!(completions.len(), total, "a completed event for every task");
    assert!(
        completions.values().all(|n| *n == 1),
        "a task completed twice: {:?}",
        completions.iter().find(|(_, n)| **n > 1)
    );
    let calls = std::mem::take(&mut *calls.lock().unwrap());
    assert_eq!(calls.len(), total, "the handler saw every task");
    assert_each_task_completed_by_one_run(&c, &ids, &calls).await;
    let counts = c.count_tasks(None).await.unwrap();
    assert_eq!(
        counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        vec![(TaskStatus::Completed, total as u64)]
    );
    assert_nothing_open(&c).await;
    assert!(
        c.get_active_workers(None).await.unwrap().is_empty(),
        "workers unregister on exit"
    );
}

/// Per task, from the store: completed, attempts 1, one success run which is the current
/// run, any other run a lease timeout, and one handler call per run. Reads runs from 16
/// tasks at once so the full-size soak does not crawl.
async fn assert_each_task_completed_by_one_run(
    c: &Client,
    ids: &[TaskId],
    calls: &HashMap<TaskId, Vec<u32>>,
) {
    let calls = Arc::new(calls.clone());
    let mut checks = JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let (c, chunk, calls) = (c.clone(), chunk.to_vec(), calls.clone());
        checks.spawn(async move {
            let mut timeouts = 0;
            for id in chunk {
                let task = c.get_task(id).await.unwrap().unwrap();
                let runs = c.list_runs(id).await.unwrap();
                let successes: Vec<_> = runs
                    .iter()
                    .filter(|r| r.status == RunStatus::Success)
                    .collect();
                assert_eq!(successes.len(), 1, "one success run for {id}: {runs:?}");
                assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
                assert_eq!(task.current_run_id, Some(successes[0].id), "{task:?}");
                assert!(
                    runs.iter()
                        .all(|r| r.status == RunStatus::Success || r.status == RunStatus::Timeout),
                    "a run of {id} ended otherwise than by success or lease expiry: {runs:?}"
                );
                timeouts += runs.len() - 1;
                let ran: Vec<u32> = runs.iter().map(|r| r.run_number).collect();
                assert_eq!(
                    calls.get(&id),
                    Some(&ran),
                    "one handler call per run of {id}"
                );
            }
            timeouts
        });
    }
    let mut timeouts = 0;
    while let Some(n) = checks.join_next().await {
        timeouts += n.unwrap();
    }
    assert_eq!(timeouts, 0, "no lease of 30 s should expire in this test");
}

async fn shutdown_releases_held_tasks(c: Client) {
    stop_releasing_held_tasks(c, false).await;
}

async fn shutdown_now_skips_the_grace_and_releases_held_tasks(c: Client) {
    stop_releasing_held_tasks(c, true).await;
}

/// Three handlers that never return, then a stop: graceful with a grace of 100 ms, or at
/// once with a grace of an hour. Either way every task is given back, its attempt not
/// counted, and the worker unregisters.
async fn stop_releasing_held_tasks(c: Client, at_once: bool) {
    let ids = c.create_tasks(tasks("slow", "slow", 3)).await.unwrap();
    let grace = if at_once {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(100)
    };
    let worker = c
        .worker("sleepy")
        .concurrency(3)
        .handle_signals(false)
        .shutdown_grace(grace);
    let stop = worker.shutdown_handle();
    let health = worker.health_handle();
    assert_eq!(health.get().phase, WorkerPhase::NotStarted);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(worker.run(move |_ctx: TaskContext| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(());
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, TaskError>(())
        }
    }));
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .unwrap();
    }
    assert_eq!(health.get().phase, WorkerPhase::Running);
    assert_eq!(health.ready(), Ok(()));
    if at_once {
        stop.shutdown_now();
    } else {
        stop.shutdown();
    }
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.released, 3);
    assert_eq!(health.get().phase, WorkerPhase::Stopped);
    assert!(health.alive().is_err() && health.ready().is_err());
    for id in ids {
        let t = c.get_task(id).await.unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.attempts, 0, "a released task keeps its retries");
    }
    assert!(
        c.get_worker("sleepy").await.unwrap().is_none(),
        "unregistered"
    );
}

/// A graceful stop tells the handlers still running to stop `timeout_grace` before its
/// grace ends: one that then returns a result commits it; one that returns an error, and
/// one that never returns (dropped at the deadline), have their tasks given back, their
/// attempts not counted.
async fn a_stopping_worker_tells_its_handlers_before_the_grace_ends(c: Client) {
    const TYPE: &str = "told-to-stop";
    let mut ids = HashMap::new();
    for title in ["saves", "gives up", "ignores"] {
        ids.insert(
            title,
            c.create_task(NewTask::new(title, TYPE)).await.unwrap(),
        );
    }
    let worker = c
        .worker("told")
        .concurrency(3)
        .task_types([TYPE])
        .handle_signals(false)
        .shutdown_grace(Duration::from_secs(3))
        .timeout_grace(Duration::from_secs(1));
    let stop = worker.shutdown_handle();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(worker.run(move |ctx: TaskContext| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(());
            match ctx.task.title.as_str() {
                "saves" => {
                    ctx.cancelled().await;
                    Ok(serde_json::json!({"saved": "before the grace ended"}))
                }
                "gives up" => {
                    ctx.cancelled().await;
                    Err(TaskError::new("stopped half-way"))
                }
                _ => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(serde_json::Value::Null)
                }
            }
        }
    }));
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .unwrap();
    }
    stop.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let saved = c.get_task(ids["saves"]).await.unwrap().unwrap();
    assert_eq!(saved.status, TaskStatus::Completed, "{saved:?}");
    assert_eq!(
        saved.result,
        Some(serde_json::json!({"saved": "before the grace ended"}))
    );
    for title in ["gives up", "ignores"] {
        let t = c.get_task(ids[title]).await.unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::Queued, "{title}: {t:?}");
        assert_eq!(
            t.attempts, 0,
            "{title}: a task given back keeps its retries"
        );
    }
    assert_eq!(report.completed, 1, "{report:?}");
}

async fn a_worker_told_to_stop_before_it_runs_stops_without_claiming(c: Client) {
    let id = c.create_task(NewTask::new("t", "x")).await.unwrap();
    let worker = c.worker("early").handle_signals(false);
    worker.shutdown_handle().shutdown();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        worker.run(|_ctx: TaskContext| async { Ok::<_, TaskError>(()) }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.completed, 0);
    let t = c.get_task(id).await.unwrap().unwrap();
    assert_eq!((t.status, t.attempts), (TaskStatus::Queued, 0));
    assert!(c.get_worker("early").await.unwrap().is_none());
}

async fn panicking_handler_fails_only_its_task(c: Client) {
    // A panic inside the handler's future, then one in its synchronous part, before it
    // returns a future: each fails its task alone, and the worker's slots come back.
    let bad = panics_fail_only_their_task(&c, "p", |bad| {
        move |ctx: TaskContext| async move {
            if ctx.task.id == bad {
                panic!("handler bug");
            }
            Ok::<_, TaskError>(serde_json::json!({"ok": ctx.task.title}))
        }
    })
    .await;
    let early = panics_fail_only_their_task(&c, "q", |bad| {
        move |ctx: TaskContext| {
            assert!(ctx.task.id != bad, "handler bug");
            async move { Ok::<_, TaskError>(serde_json::json!({"ok": ctx.task.title})) }
        }
    })
    .await;
    assert_ne!(bad, early);
}

/// Creates a task that `handler_for(its id)` panics on (one retry) and five it completes,
/// runs a two-slot worker until idle, and checks that only the first failed.
async fn panics_fail_only_their_task<H: hive_client::Handler>(
    c: &Client,
    name: &str,
    handler_for: impl FnOnce(TaskId) -> H,
) -> TaskId {
    let bad = c
        .create_task(NewTask::new("bad", name).max_retries(1))
        .await
        .unwrap();
    let good = c.create_tasks(tasks("good", name, 5)).await.unwrap();
    let worker = two_slots(c.worker(name).task_types([name]));
    let report = tokio::time::timeout(Duration::from_secs(60), worker.run(handler_for(bad)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.completed, 5);
    assert_eq!(report.failed, 1);
    let t = c.get_task(bad).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("handler panicked: handler bug"),
        "{t:?}"
    );
    assert_eq!(
        c.list_runs(bad).await.unwrap().len(),
        2,
        "retried once, then failed"
    );
    for id in good {
        assert_eq!(
            c.get_task(id).await.unwrap().unwrap().status,
            TaskStatus::Completed
        );
    }
    bad
}

/// A handler past its timeout is told to stop: one that listens returns and is reported as
/// stopped; one that does not is dropped after the grace. Both runs end `timeout`, and a
/// task without its own timeout gets the worker's.
async fn timeouts_stop_handlers_and_end_their_runs_timed_out(c: Client) {
    let once = |title: &str| NewTask::new(title, "x").max_retries(0);
    let ids = c
        .create_tasks(vec![once("polite").timeout_secs(1), once("deaf")])
        .await
        .unwrap();
    let (polite, deaf) = (ids[0], ids[1]);
    let worker = two_slots(c.worker("t"))
        .task_timeout(Duration::from_millis(300))
        .timeout_grace(Duration::from_millis(200));
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        worker.run(move |ctx: TaskContext| async move {
            if ctx.task.title == "polite" {
                ctx.cancelled().await;
                assert!(ctx.is_cancelled());
            } else {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, TaskError>(serde_json::json!("too late"))
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.failed, 2, "{report:?}");
    for (id, error) in [
        (polite, "timed out after 1s; the handler stopped"),
        (deaf, "timed out after 0.3s; the handler was dropped"),
    ] {
        let t = c.get_task(id).await.unwrap().unwrap();
        assert_eq!(
            (t.status, t.last_error.as_deref()),
            (TaskStatus::Failed, Some(error))
        );
        assert_eq!(t.result, None, "a late return is not an output");
        let runs = c.list_runs(id).await.unwrap();
        assert_eq!(runs[0].status, hive_client::RunStatus::Timeout);
    }
}

/// A worker of two slots that exits when idle, polling every 20 ms, without signal handlers.
fn two_slots(w: hive_client::WorkerBuilder) -> hive_client::WorkerBuilder {
    w.concurrency(2)
        .exit_when_idle(true)
        .handle_signals(false)
        .poll_interval(Duration::from_millis(20))
}

/// Cancelling a task whose handler is running fires the handler's stop signal (through the
/// store's notifications, so on Postgres from any process): the handler returns, its late
/// report is stale, and the task stays cancelled.
async fn cancelling_a_task_stops_its_running_handler(c: Client) {
    let took = cancel_reaches_the_handler(&c, &c, Duration::from_millis(20)).await;
    eprintln!("CANCEL: the handler stopped {took:?} after the cancel");
}

/// Cancels, through `operator`, a task whose handler runs in a worker on `workers` (polling
/// every `poll`), and checks that the handler was told to stop: the idle worker exits,
/// having completed nothing, and task and run end `cancelled`. Returns how long the
/// handler took to stop.
pub(crate) async fn cancel_reaches_the_handler(
    operator: &Client,
    workers: &Client,
    poll: Duration,
) -> Duration {
    let id = operator
        .create_task(NewTask::new("long", "x"))
        .await
        .unwrap();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let worker = two_slots(workers.worker("c"))
        .poll_interval(poll)
        .timeout_grace(Duration::from_secs(30));
    let run = tokio::spawn(worker.run(move |ctx: TaskContext| {
        if let Some(tx) = started_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        async move {
            tokio::select! {
                () = ctx.cancelled() => Err(TaskError::new("stopped")),
                () = tokio::time::sleep(Duration::from_secs(3600)) => Ok(serde_json::Value::Null),
            }
        }
    }));
    tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .unwrap()
        .unwrap();
    let asked = std::time::Instant::now();
    assert!(operator.cancel_task(id, None).await.unwrap());
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the handler stopped, so the idle worker exits")
        .unwrap()
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(report.completed, 0);
    let t = operator.get_task(id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Cancelled);
    let runs = operator.list_runs(id).await.unwrap();
    assert_eq!(runs[0].status, hive_client::RunStatus::Cancelled);
    took
}

/// A handler reporting progress every 50 ms for 2.5 s: the run shows the latest report, an
/// event carries each write, and writes come at most once a second. A fraction outside
/// `[0, 1]` is refused.
async fn progress_is_written_at_most_once_a_second_and_announced(c: Client) {
    let id = c.create_task(NewTask::new("steps", "x")).await.unwrap();
    let mut events = c.subscribe().await.unwrap();
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = refused.clone();
    let started = Instant::now();
    let report = two_slots(c.worker("p"))
        .run(move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = ctx.progress(1.5, "").err().map(|e| e.to_string());
                for i in 1..=50 {
                    ctx.progress(f64::from(i) / 50.0, format!("step {i}"))
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(serde_json::Value::Null)
            }
        })
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.completed, 1);
    let refused = refused.lock().unwrap().clone().unwrap_or_default();
    assert!(refused.contains("progress"), "{refused}");
    let mut writes = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
        if let Event::TaskProgress {
            task_id, fraction, ..
        } = p.event
            && task_id == id
        {
            writes.push(fraction);
        }
    }
    let most = elapsed.as_secs_f64().ceil() as usize + 1;
    assert!(
        (2..=most).contains(&writes.len()),
        "{} writes in {elapsed:?}: {writes:?}",
        writes.len()
    );
    assert!(writes.windows(2).all(|w| w[0] < w[1]), "{writes:?}");
    let run = &c.list_runs(id).await.unwrap()[0];
    let p = run
        .progress
        .as_ref()
        .expect("the run keeps its last progress");
    assert_eq!(p.fraction, *writes.last().unwrap());
    assert!(
        p.message.as_deref().is_some_and(|m| m.starts_with("step ")),
        "{p:?}"
    );
}

/// `ctx.spawn` refuses at once what needs no store to know (a subtask's own fields, its id
/// repeating the spawner's or an earlier spawn's), so the handler learns before doing its
/// work; what it took is added with the spawner's success. A clone of the context kept past
/// the handler's return can spawn no more.
async fn a_spawn_refuses_at_once_what_it_can_know(c: Client) {
    use hive_client::{NewPlan, SubTask};
    let plan = c
        .submit_plan(NewPlan::new(
            "grows",
            vec![
                SubTask::new("split", "Split", "split"),
                SubTask::new("join", "Join", "join").depends_on(["split"]),
            ],
        ))
        .await
        .unwrap();
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::new(Mutex::new(None));
    let handler = {
        let (refusals, kept) = (refusals.clone(), kept.clone());
        move |ctx: TaskContext| {
            if ctx.task.task_type == "split" {
                *kept.lock().unwrap() = Some(ctx.clone());
                let mut seen = refusals.lock().unwrap();
                for sub in [
                    SubTask::new("blank", "Blank type", " "),
                    SubTask::new("split", "Again", "chunk"),
                    SubTask::new("chunk", "Chunk", "chunk").depends_on(["split"]),
                    SubTask::new("chunk", "Chunk again", "chunk"),
                    SubTask::new("nul", "Nul", "chunk").payload(serde_json::json!({"k": "a\0"})),
                ] {
                    seen.push(ctx.spawn(sub).err().map(|e| e.message));
                }
            }
            async { Ok::<_, TaskError>(()) }
        }
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        c.worker("spawner")
            .exit_when_idle(true)
            .handle_signals(false)
            .run(handler),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.completed, 3, "split, chunk and join");
    let seen = refusals.lock().unwrap().clone();
    let refused = |i: usize, what: &str| {
        let e = seen[i].as_deref().unwrap_or("");
        assert!(e.contains("cannot spawn") && e.contains(what), "{i}: {e:?}");
    };
    refused(0, "task_type");
    refused(1, "this subtask's");
    assert_eq!(seen[2], None, "a valid spawn is taken");
    refused(3, "one spawned before");
    refused(4, "payload");
    let late = kept.lock().unwrap().take().unwrap();
    let e = late
        .spawn(SubTask::new("late", "Late", "chunk"))
        .expect_err("a spawn after the handler returned would be lost");
    assert!(e.message.contains("has ended"), "{}", e.message);
    let p = c.get_plan(plan).await.unwrap().unwrap();
    assert_eq!(p.total_subtasks, 3);
    assert_eq!(p.status, hive_client::PlanStatus::Completed);
}

/// A worker told to stop at once drops the handlers still running: each one's progress
/// writer and stop signal go with it, so a process that runs worker after worker (an app
/// embedding them) does not gather tasks waiting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_dropped_at_once_leave_no_task_behind() {
    let c = client(hive_store::testing::memory().await.unwrap().store);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let mut after = Vec::new();
    for round in 0..3 {
        c.create_tasks(tasks("t", "stuck", 2)).await.unwrap();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let worker = c
            .worker(format!("w{round}"))
            .concurrency(2)
            .shutdown_grace(Duration::ZERO)
            .handle_signals(false);
        let stop = worker.shutdown_handle();
        let run = tokio::spawn(worker.run(move |ctx: TaskContext| {
            let started = started_tx.clone();
            async move {
                ctx.progress(0.5, "half way").unwrap();
                let _ = started.send(());
                std::future::pending::<Result<(), TaskError>>().await
            }
        }));
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(30), started.recv())
                .await
                .expect("every handler starts");
        }
        stop.shutdown_now();
        let report = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(report.released, 2);
        // Aborted tasks are gone once the runtime has polled them out.
        let settled = Instant::now();
        let mut last = alive();
        while settled.elapsed() < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = last.min(alive());
        }
        after.push(last);
    }
    // The first round may start tasks that live as long as the client (its event bus).
    assert_eq!(
        after[1], after[2],
        "alive tasks after each round: {after:?}"
    );
}
