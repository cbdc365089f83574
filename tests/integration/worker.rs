//! The worker runtime: many workers complete every task exactly once; graceful shutdown
//! gives held tasks back; a panicking handler fails only its own task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_client::{Client, NewTask, OpsConfig, RetryPolicy, TaskContext, TaskError, TaskStatus};
use hive_store::Store;

fn client(store: Arc<dyn Store>) -> Client {
    let config = OpsConfig {
        retry: RetryPolicy::IMMEDIATE,
        ..OpsConfig::default()
    };
    Client::from_store(store, config)
}

macro_rules! on_backends {
    ($($case:ident),+ $(,)?) => {
        mod memory { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $case() {
            hive_store::testing::memory().await.unwrap().run(|s| super::$case(super::client(s))).await } )+ }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $case() {
            hive_store::testing::sqlite().await.unwrap().run(|s| super::$case(super::client(s))).await } )+ }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $case() {
            match hive_store::testing::postgres().await {
                Some(ts) => ts.run(|s| super::$case(super::client(s))).await,
                None => hive_store::testing::report_skip(concat!("postgres::", stringify!($case))),
            } } )+ }
    };
}

on_backends!(
    four_workers_complete_each_task_once,
    shutdown_releases_held_tasks,
    panicking_handler_fails_only_its_task
);

async fn four_workers_complete_each_task_once(c: Client) {
    const PER_WORKER: usize = 1000;
    const WORKERS: usize = 4;
    let ids = c
        .create_tasks(
            (0..PER_WORKER * WORKERS)
                .map(|i| NewTask::new(format!("t{i}"), "noop"))
                .collect(),
        )
        .await
        .unwrap();
    let seen: Arc<Mutex<HashMap<hive_client::TaskId, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let seen = seen.clone();
        let worker = c
            .worker(format!("w{w}"))
            .role("noop")
            .concurrency(8)
            .exit_when_idle(true)
            .handle_signals(false)
            .poll_interval(Duration::from_millis(50));
        workers.push(tokio::spawn(worker.run(move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap().entry(ctx.task.id).or_default() += 1;
                Ok::<_, TaskError>(())
            }
        })));
    }
    let mut completed = 0;
    for w in workers {
        let report = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(report.stale, 0);
        completed += report.completed;
    }
    assert_eq!(completed as usize, ids.len());
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), ids.len());
        assert!(seen.values().all(|n| *n == 1), "a task ran twice");
    }
    let counts = c.count_tasks(None).await.unwrap();
    assert_eq!(
        counts.get(&TaskStatus::Completed),
        Some(&(ids.len() as u64))
    );
    assert!(
        c.get_active_workers(None).await.unwrap().is_empty(),
        "workers unregister on exit"
    );
}

async fn shutdown_releases_held_tasks(c: Client) {
    let ids = c
        .create_tasks(
            (0..3)
                .map(|i| NewTask::new(format!("slow{i}"), "slow"))
                .collect(),
        )
        .await
        .unwrap();
    let worker = c
        .worker("sleepy")
        .concurrency(3)
        .handle_signals(false)
        .shutdown_grace(Duration::from_millis(100));
    let stop = worker.shutdown_handle();
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
    stop.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.released, 3);
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

async fn panicking_handler_fails_only_its_task(c: Client) {
    let bad = c
        .create_task(NewTask::new("bad", "x").max_retries(1))
        .await
        .unwrap();
    let good = c
        .create_tasks(
            (0..5)
                .map(|i| NewTask::new(format!("good{i}"), "x"))
                .collect(),
        )
        .await
        .unwrap();
    let worker = c
        .worker("p")
        .concurrency(2)
        .exit_when_idle(true)
        .handle_signals(false)
        .poll_interval(Duration::from_millis(20));
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        worker.run(move |ctx: TaskContext| async move {
            if ctx.task.id == bad {
                panic!("handler bug");
            }
            Ok::<_, TaskError>(serde_json::json!({"ok": ctx.task.title}))
        }),
    )
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
}
