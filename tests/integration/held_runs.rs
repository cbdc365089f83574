//! What a worker holds stays what the store says it holds: a claim whose reply was lost is
//! given back within a heartbeat (not held for as long as the worker lives), and a task
//! cancelled from another process stops its running handler within a poll interval, also
//! on SQLite, where no notification crosses processes. A second process started with the
//! same worker id stops the first, rather than both giving back each other's runs, and
//! ends the runs a dead first process held with their attempts counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hive_client::{
    Client, ConnectOptions, NewTask, OpsConfig, RunStatus, TaskContext, TaskError, TaskStatus,
};
use hive_store::Store;

use crate::proxy::{Cut, Proxy};

mod one_id {
    use super::*;

    hive_store::per_backend!(hive_store::testing::TestStore::run, client_on =>
        a_second_process_with_the_same_worker_id_stops_the_first,
        a_worker_started_again_counts_the_attempt_its_dead_process_held,
        a_status_the_app_sets_outlives_the_heartbeats,
        a_stopping_worker_leaves_the_row_of_a_process_that_took_its_id,
    );
}

fn client_on(store: Arc<dyn Store>) -> Client {
    Client::from_store(store, OpsConfig::default())
}

/// Two runtimes under one worker id (two replicas of an app that hard-codes it): the first
/// sees the second's mark on the worker's row and stops with `WorkerIdTaken` within a
/// check, leaving the row registered; the second runs on and completes a task.
async fn a_second_process_with_the_same_worker_id_stops_the_first(c: Client) {
    let start = |c: &Client| {
        let w = c
            .worker("twin")
            .task_types(["twin-work"])
            .handle_signals(false)
            .poll_interval(Duration::from_millis(100))
            .heartbeat_interval(Duration::from_millis(200));
        let shutdown = w.shutdown_handle();
        let run = tokio::spawn(
            w.run(|_ctx: TaskContext| async { Ok::<_, TaskError>(serde_json::json!("done")) }),
        );
        (shutdown, run)
    };
    let (_first_stop, first) = start(&c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get_worker("twin").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the first never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (second_stop, second) = start(&c);
    let ended = tokio::time::timeout(Duration::from_secs(10), first).await;
    let ended = ended.expect("the first stops within a check").unwrap();
    match ended {
        Err(hive_client::Error::WorkerIdTaken { worker, .. }) => assert_eq!(worker, "twin"),
        other => panic!("the first should stop on the taken id, not {other:?}"),
    }
    assert!(
        c.get_worker("twin").await.unwrap().is_some(),
        "the first left the row to the second"
    );
    let id = c
        .create_task(NewTask::new("after", "twin-work"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get_task(id).await.unwrap().unwrap().status != TaskStatus::Completed {
        assert!(Instant::now() < deadline, "the second did not run the task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second_stop.shutdown();
    second.await.unwrap().unwrap();
}

/// A process under a fixed worker id claims a task and dies with it (a task that kills its
/// worker); its supervisor starts it again under the same id before the lease lapses. The
/// new process ends the dead one's run as timed out, its attempt counted: with no retries
/// left the task fails for good and its handler never runs again, where a run given back
/// uncounted would crash every restart.
async fn a_worker_started_again_counts_the_attempt_its_dead_process_held(c: Client) {
    const TYPE: &str = "kills-its-worker";
    let poison = c
        .create_task(NewTask::new("poison", TYPE).max_retries(0))
        .await
        .unwrap();
    let fine = c
        .create_task(NewTask::new("fine", TYPE).max_retries(1))
        .await
        .unwrap();
    c.register_worker("phoenix", "r", vec![]).await.unwrap();
    let id = hive_client::WorkerId::parse("phoenix").unwrap();
    let held = c
        .claim_tasks(&id, &[TYPE.to_owned()], 2, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(held.len(), 2);

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let w = c
        .worker("phoenix")
        .task_types([TYPE])
        .handle_signals(false)
        .poll_interval(Duration::from_millis(100));
    let shutdown = w.shutdown_handle();
    let run = tokio::spawn(w.run(move |_ctx: TaskContext| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, TaskError>(serde_json::json!("done")) }
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get_task(fine).await.unwrap().unwrap().status != TaskStatus::Completed {
        assert!(
            Instant::now() < deadline,
            "the task with a retry left never ran again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = c.get_task(poison).await.unwrap().unwrap();
    assert_eq!(
        dead.status,
        TaskStatus::Failed,
        "out of retries, it fails for good"
    );
    assert_eq!(dead.attempts, 1, "the dead process's attempt counted");
    let runs = c.list_runs(poison).await.unwrap();
    assert_eq!(runs.len(), 1, "never claimed again");
    assert_eq!(runs[0].status, RunStatus::Timeout);
    let error = runs[0].error_message.as_deref().unwrap_or_default();
    assert!(error.contains("started again"), "{error}");
    let statuses: Vec<RunStatus> = c
        .list_runs(fine)
        .await
        .unwrap()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![RunStatus::Timeout, RunStatus::Success]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the task with a retry left ran"
    );
    shutdown.shutdown();
    run.await.unwrap().unwrap();
}

/// A rolling restart under a fixed id: the new process registers the id while the old one
/// is still running, and the old one stops before its next check has seen that. Stopping,
/// it looks again and leaves the row (and the runs) to the new process.
async fn a_stopping_worker_leaves_the_row_of_a_process_that_took_its_id(c: Client) {
    let w = c
        .worker("rolling")
        .handle_signals(false)
        .poll_interval(Duration::from_secs(3600))
        .heartbeat_interval(Duration::from_secs(10))
        .lease(Duration::from_secs(60));
    let shutdown = w.shutdown_handle();
    let run = tokio::spawn(w.run(|_ctx: TaskContext| async { Ok::<_, TaskError>(()) }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get_worker("rolling").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let newer = hive_store::WorkerRegistration {
        id: hive_client::WorkerId::parse("rolling").unwrap(),
        role: "r".into(),
        capabilities: vec![],
        metadata: serde_json::json!({"instance": "the-newer-process", "pid": 4242}),
    };
    c.register_worker_with(&newer).await.unwrap();
    shutdown.shutdown();
    // Its first check may have seen the newer row already: then it stops on that.
    match tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
    {
        Ok(_) | Err(hive_client::Error::WorkerIdTaken { .. }) => {}
        Err(e) => panic!("the worker stopped on {e}"),
    }
    let row = c.get_worker("rolling").await.unwrap();
    assert_eq!(
        row.map(|w| w.metadata["instance"].clone()),
        Some(serde_json::json!("the-newer-process")),
        "the newer process's row is left"
    );
}

/// An app marks its running worker `error` with a reason (`set_worker_status`, how a worker
/// says what went wrong); the runtime's heartbeats keep the mark, where each used to set
/// the worker `active` again within a beat.
async fn a_status_the_app_sets_outlives_the_heartbeats(c: Client) {
    let w = c
        .worker("marked")
        .handle_signals(false)
        .heartbeat_interval(Duration::from_millis(50));
    let shutdown = w.shutdown_handle();
    let run = tokio::spawn(w.run(|_ctx: TaskContext| async { Ok::<_, TaskError>(()) }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get_worker("marked").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        c.set_worker_status("marked", hive_client::WorkerStatus::Error, Some("GPU gone"))
            .await
            .unwrap()
    );
    let beat_before = c
        .get_worker("marked")
        .await
        .unwrap()
        .unwrap()
        .last_heartbeat;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = c.get_worker("marked").await.unwrap().unwrap();
    assert!(w.last_heartbeat > beat_before, "the worker beat meanwhile");
    assert_eq!(w.status, hive_client::WorkerStatus::Error);
    assert_eq!(w.status_reason.as_deref(), Some("GPU gone"));
    shutdown.shutdown();
    run.await.unwrap().unwrap();
}

hive_store::per_backend!([sqlite, postgres], hive_store::testing::TestStore::run_with_url =>
    a_cancel_from_another_process_stops_the_handler,
    a_task_from_another_process_is_picked_up_without_polling,
);

mod lost_reply {
    use hive_store::testing::{TestStore, postgres, report_skip};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_claim_reply_is_given_back_within_a_heartbeat() {
        let Some(ts) = postgres().await else {
            return report_skip("held_runs::lost_reply");
        };
        TestStore::run_with_url(
            ts,
            super::a_lost_claim_reply_is_given_back_within_a_heartbeat,
        )
        .await;
    }
}

/// A second store on the same database: its own pool and, for SQLite, its own in-process
/// notifications, as another process would have.
async fn another_process(url: &str) -> Client {
    let options = ConnectOptions {
        schema: hive_store::SchemaPolicy::Existing,
        ..Default::default()
    };
    let store = hive_store::connect_with(url, &options).await.unwrap();
    Client::from_store(store, OpsConfig::default())
}

async fn a_cancel_from_another_process_stops_the_handler(store: Arc<dyn Store>, url: String) {
    let operator = Client::from_store(store, OpsConfig::default());
    let workers = another_process(&url).await;
    let poll = Duration::from_millis(200);
    let took = crate::worker::cancel_reaches_the_handler(&operator, &workers, poll).await;
    eprintln!(
        "CANCEL ACROSS PROCESSES: the handler stopped {took:?} after the cancel (poll interval {poll:?})"
    );
}

/// The claim of a task commits but its reply never reaches the worker (the connection dies
/// at that instant). Heartbeats extend every lease the store has the worker holding, so
/// without a check the task would stay `in_progress` for as long as the worker lives. The
/// worker gives it back within a heartbeat, claims it again and runs it once.
async fn a_lost_claim_reply_is_given_back_within_a_heartbeat(store: Arc<dyn Store>, url: String) {
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let workers = another_process(&format!("{proxied}&max_connections=1")).await;
    // Only a claim binds the task type (registration, which also names it, is done before
    // the cut is armed); the worker claims only when woken, never on a timer.
    const TYPE: &str = "lost-claim-reply";
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let shutdown;
    let run = {
        let w = workers
            .worker("forgetful")
            .task_types([TYPE])
            .handle_signals(false)
            .poll_interval(Duration::from_secs(3600))
            .lease(Duration::from_secs(3))
            .heartbeat_interval(Duration::from_millis(500));
        shutdown = w.shutdown_handle();
        tokio::spawn(w.run(move |_ctx: TaskContext| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, TaskError>(serde_json::json!("done")) }
        }))
    };
    let completed = |id| {
        let c = operator.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.get_task(id).await.unwrap().unwrap().status == TaskStatus::Completed {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("task {id} did not complete within 30 s");
        }
    };
    // A first task proves the worker is up, registered and idle.
    let first = operator
        .create_task(NewTask::new("first", TYPE))
        .await
        .unwrap();
    completed(first).await;
    proxy.cut_next_sending(TYPE.as_bytes(), Cut::AfterCommit);
    let created = Instant::now();
    let lost = operator
        .create_task(NewTask::new("lost", TYPE))
        .await
        .unwrap();
    let done = completed(lost).await;
    eprintln!(
        "LOST CLAIM REPLY: the task completed {:?} after it was created (heartbeat 500 ms)",
        done - created
    );
    let runs = operator.list_runs(lost).await.unwrap();
    let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![RunStatus::Cancelled, RunStatus::Success],
        "the claim whose reply was lost was given back, then run once"
    );
    let task = operator.get_task(lost).await.unwrap().unwrap();
    assert_eq!(task.attempts, 1, "giving a run back uses up no attempt");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "each task's handler ran once"
    );
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A worker idle on a 30 s poll picks up a task another process created at once: on
/// Postgres through NOTIFY, on SQLite through the watcher of the file's `data_version`.
/// Prints the median pickup of ten tasks created one after another.
async fn a_task_from_another_process_is_picked_up_without_polling(
    store: Arc<dyn Store>,
    url: String,
) {
    let operator = Client::from_store(store, OpsConfig::default());
    let workers = another_process(&url).await;
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let w = workers
        .worker("sleepy")
        .handle_signals(false)
        .poll_interval(Duration::from_secs(30));
    let shutdown = w.shutdown_handle();
    let run = tokio::spawn(w.run(move |_ctx: TaskContext| {
        let _ = started_tx.send(Instant::now());
        async { Ok::<_, TaskError>(serde_json::Value::Null) }
    }));
    // Let the worker register, claim nothing and settle on its poll.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pickups = Vec::new();
    for i in 0..10 {
        let created = Instant::now();
        operator
            .create_task(NewTask::new(format!("t{i}"), "x"))
            .await
            .unwrap();
        let at = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("picked up long before the 30 s poll")
            .unwrap();
        pickups.push(at - created);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pickups.sort();
    eprintln!(
        "PICKUP ACROSS PROCESSES {}: median {:?}, max {:?} (poll interval 30 s)",
        operator.store().backend(),
        pickups[pickups.len() / 2],
        pickups.last().unwrap()
    );
    shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
