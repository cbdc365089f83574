//! A worker's commits overlap: while one batch's transaction waits (here on a row another
//! connection holds), a full round of outcomes behind it commits in a second transaction
//! instead of waiting for the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_client::{Client, NewTask, OpsConfig, TaskContext, TaskError, TaskStatus};
use hive_store::Store;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::{Mutex, oneshot, watch};

hive_store::per_backend!([postgres], hive_store::testing::TestStore::run_with_url =>
    a_blocked_commit_does_not_hold_back_the_next_round,
);

async fn a_blocked_commit_does_not_hold_back_the_next_round(store: Arc<dyn Store>, url: String) {
    let c = Client::from_store(store, OpsConfig::default());
    let first = c
        .create_task(NewTask::new("held", "work").priority(10))
        .await
        .unwrap();
    let others: Vec<NewTask> = (0..3)
        .map(|i| NewTask::new(format!("t{i}"), "work"))
        .collect();
    let others = c.create_tasks(others).await.unwrap();
    // All four run at once. The first tells the test it runs and returns once the test
    // holds its row, so the commit carrying its outcome waits on that row; the others
    // return when the test lets them, with that commit already waiting.
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let gates = Arc::new(Mutex::new((Some(started_tx), Some(go_rx))));
    let (release_tx, release_rx) = watch::channel(false);
    let worker = c
        .worker("overlapping")
        .concurrency(4)
        .exit_when_idle(true)
        .handle_signals(false)
        .poll_interval(Duration::from_millis(50))
        .run(move |ctx: TaskContext| {
            let gates = gates.clone();
            let mut release = release_rx.clone();
            async move {
                if ctx.task.id == first {
                    let (started, go) = {
                        let mut g = gates.lock().await;
                        (g.0.take(), g.1.take())
                    };
                    if let (Some(started), Some(go)) = (started, go) {
                        let _ = started.send(());
                        let _ = go.await;
                    }
                } else {
                    let _ = release.wait_for(|r| *r).await;
                }
                Ok::<_, TaskError>(())
            }
        });
    let run = tokio::spawn(worker);
    tokio::time::timeout(Duration::from_secs(20), started_rx)
        .await
        .expect("the first task started")
        .unwrap();
    let mut holder = PgConnection::connect(&url).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(first.0)
        .execute(&mut holder)
        .await
        .unwrap();
    go_tx.send(()).unwrap();
    // The others return only once the first outcome's commit waits on the row.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))",
        )
        .fetch_one(&mut holder)
        .await
        .unwrap();
        if blocked > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first outcome's commit never reached the row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release_tx.send(true).unwrap();
    // With the first outcome's commit waiting on the row, the others still commit.
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &others {
        loop {
            let status = c.get_task(*id).await.unwrap().unwrap().status;
            if status == TaskStatus::Completed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} is {status:?} while another commit waits"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        c.get_task(first).await.unwrap().unwrap().status,
        TaskStatus::InProgress,
        "its commit still waits on the row"
    );
    holder.execute("ROLLBACK").await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker drained")
        .unwrap()
        .unwrap();
    assert_eq!(report.completed, 4, "{report:?}");
    assert_eq!(
        c.get_task(first).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
}
