//! Storage faults stay transient: a disk that fills during a drain is ridden out by the
//! same worker process (every task exactly once, the fault logged as transient and not per
//! attempt); a failed COMMIT or ROLLBACK never leaves SQLite's writer connection inside a
//! transaction; a statement timeout, a connection killed during COMMIT, serialization
//! failures and a write's future dropped half-way never leave a pooled connection inside
//! one; and a database file
//! removed under a worker stops it with one clear error.

use hive_store::testing::fixtures::{set_status, tasks};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_client::{Client, NewTask, TaskContext, TaskError, TaskId, TaskStatus};
use hive_store::models::NewTask as StoreTask;
use hive_store::testing::Tmpfs;
use hive_store::{ConnectOptions, DatabaseUrl, SqliteStore, StatusChange, Store, TxFault};
use sqlx::{Connection, PgConnection};

use crate::calls::Calls;
use crate::log_capture::Logs;
use crate::proxy::{Cut, Proxy};

/// Bounds a wait on a loaded 2-core machine; it measures nothing.
const WITHIN: Duration = Duration::from_secs(60);

mod sqlite {
    // Current-thread: the log capture sees only its own thread, and every task runs here.
    #[tokio::test]
    async fn a_full_disk_during_a_drain_is_ridden_out() {
        super::full_disk_during_a_drain().await;
    }

    #[tokio::test]
    async fn failed_commit_and_rollback_leave_the_writer_clean() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("sqlite:{}", dir.path().join("hive.db").display());
        super::commit_and_rollback_faults(&file).await;
    }

    /// The in-memory database is its one connection: kept through a failed rollback (a new
    /// one would be a new, empty database), its next write rolling back first.
    #[tokio::test]
    async fn failed_commit_and_rollback_keep_the_in_memory_database() {
        super::commit_and_rollback_faults("sqlite::memory:").await;
    }

    #[tokio::test]
    async fn a_write_dropped_half_way_leaves_the_writer_clean() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("hive.db").display());
        let store = hive_store::SqliteStore::connect(
            &hive_store::DatabaseUrl::new(url),
            &Default::default(),
        )
        .await
        .unwrap();
        super::dropped_writes(&store, &store).await;
    }

    /// In memory, the database is its one connection: a dropped write must not close it.
    #[tokio::test]
    async fn a_write_dropped_half_way_keeps_an_in_memory_database() {
        use hive_store::Store;
        let url = hive_store::DatabaseUrl::new("sqlite::memory:");
        let store = hive_store::SqliteStore::connect(&url, &Default::default())
            .await
            .unwrap();
        let first = store
            .insert_tasks(vec![super::StoreTask::new("first", "x")])
            .await
            .unwrap()
            .ids[0];
        super::dropped_writes(&store, &store).await;
        assert!(store.get_task(first).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_database_file_stops_a_worker_with_one_error() {
        super::removed_file().await;
    }
}

hive_store::per_backend!([postgres], hive_store::testing::TestStore::run_with_url =>
    a_statement_timeout_mid_transaction_leaves_the_pool_clean,
    a_connection_killed_during_commit_leaves_the_pool_clean,
    serialization_failures_leave_the_pool_clean,
    a_write_dropped_half_way_leaves_the_pool_clean,
    a_read_only_server_is_a_transient_fault,
    a_spawn_cut_at_commit_is_all_or_nothing,
    a_plan_left_unsettled_by_a_crash_is_settled_by_the_reaper,
);

/// Fills the disk under a draining worker, waits until it has met the fault, makes room:
/// the same worker finishes every task, each handler call exactly once.
async fn full_disk_during_a_drain() {
    let Some(disk) = Tmpfs::mount(
        "storage_faults::sqlite::a_full_disk_during_a_drain",
        16 * 1024,
    ) else {
        return;
    };
    let (logs, _capture) = Logs::capture();
    let url = format!("sqlite:{}", disk.path().join("hive.db").display());
    let client = Client::connect(&url).await.unwrap();
    let n = 300;
    let ids: HashSet<TaskId> = client
        .create_tasks(tasks("t", "fill", n))
        .await
        .unwrap()
        .into_iter()
        .collect();
    // Leave a little room, which the runs' results will use up.
    let ballast = disk.path().join("ballast");
    fill_but(&ballast, disk.path(), 192 * 1024);

    let calls = Calls::default();
    let worker = client
        .worker("filler")
        .concurrency(8)
        .lease(Duration::from_secs(120))
        .poll_interval(Duration::from_millis(100))
        .exit_when_idle(true)
        .handle_signals(false);
    let running = tokio::spawn({
        let calls = calls.clone();
        worker.run(move |ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.record(&ctx);
                // Big enough that the batches' commits soon need more room than is left.
                Ok::<_, TaskError>(serde_json::json!({ "blob": "x".repeat(1024) }))
            }
        })
    });
    let started = Instant::now();
    while !logs.text().contains("storage full") {
        assert!(
            started.elapsed() < WITHIN,
            "the disk never filled; logs:\n{}",
            logs.text()
        );
        assert!(
            !running.is_finished(),
            "the worker stopped: {}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full for a while, then room again: the worker must resume by itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(&ballast).unwrap();
    let report = match tokio::time::timeout(WITHIN, running).await {
        Ok(r) => r.unwrap().unwrap(),
        Err(_) => panic!(
            "the worker did not resume and finish once there was room; logs:\n{}",
            logs.text()
        ),
    };
    let text = logs.text();
    assert_eq!(report.completed, n as u64, "{report:?}");
    let calls = calls.all();
    assert_eq!(calls.len(), n, "each handler ran exactly once");
    let called: HashSet<TaskId> = calls.iter().map(|(t, _)| *t).collect();
    assert_eq!(called, ids);
    for id in &ids {
        assert_eq!(
            client.get_task(*id).await.unwrap().unwrap().status,
            TaskStatus::Completed
        );
    }
    assert!(!text.contains("transaction depth"), "{text}");
    let warnings = text.matches("failed (transient)").count();
    assert!(warnings >= 1, "the fault is logged as transient:\n{text}");
    assert!(
        warnings <= 8,
        "{warnings} warnings: each loop logs once per interval, not per attempt:\n{text}"
    );
}

/// Writes a file that leaves only `keep` bytes free on the filesystem of `dir`.
fn fill_but(file: &std::path::Path, dir: &std::path::Path, keep: u64) {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes");
    let size = avail.saturating_sub(keep);
    std::fs::write(file, vec![0u8; usize::try_from(size).unwrap()]).unwrap();
}

async fn commit_and_rollback_faults(url: &str) {
    let url = DatabaseUrl::new(url);
    let store = SqliteStore::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    let insert = |title: &'static str| {
        let store = &store;
        async move { store.insert_tasks(vec![StoreTask::new(title, "x")]).await }
    };
    let a = insert("a").await.unwrap().ids[0];
    // COMMIT fails: nothing of the transaction stays, and the next write works.
    store.inject_fault(TxFault::Commit);
    insert("lost to commit").await.unwrap_err();
    insert("c").await.unwrap();
    // ROLLBACK fails after a refused change: the connection is replaced, not reused open.
    store.inject_fault(TxFault::Rollback);
    let refused = store
        .set_task_status(a, StatusChange::to(TaskStatus::Completed))
        .await;
    assert!(refused.is_err(), "queued → completed is illegal");
    insert("d").await.unwrap();
    // Both at once: the COMMIT fails and so does the ROLLBACK that follows.
    store.inject_fault(TxFault::Commit);
    store.inject_fault(TxFault::Rollback);
    insert("lost to both").await.unwrap_err();
    insert("f").await.unwrap();
    let titles = titles(&store).await;
    assert_eq!(titles, ["a", "c", "d", "f"]);
    assert_eq!(
        store.get_task(a).await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
}

/// A write whose future is dropped at any point (a worker's heartbeat aborted at shutdown,
/// a caller's timeout) leaves the store able to run the next one, committed for all to see:
/// each step of the transaction still runs on the connection after the drop, `BEGIN`
/// included. The dropped inserts carry idempotency keys, which make them transactions on
/// every backend; the next one does not, so a transaction left open would swallow it.
/// `observer` reads through other connections.
async fn dropped_writes(store: &dyn Store, observer: &dyn Store) {
    for polls in 1..=12 {
        let key = format!("dropped after {polls} polls");
        let keyed = StoreTask::new(&key, "x").idempotency_key(&key);
        let mut dropped = Box::pin(store.insert_tasks(vec![keyed]));
        for _ in 0..polls {
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(dropped.as_mut().poll(cx)));
            if polled.await.is_ready() {
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(dropped);
        let after = format!("after {polls} polls");
        let id = store
            .insert_tasks(vec![StoreTask::new(&after, "x")])
            .await
            .unwrap_or_else(|e| panic!("the write {after} failed: {e}"))
            .ids[0];
        assert!(
            observer.get_task(id).await.unwrap().is_some(),
            "the write {after} was not committed"
        );
    }
}

/// A server that takes no writes (a standby, or a failover target not yet promoted) is a
/// transient fault that workers retry, not an error that fails their tasks for good.
async fn a_read_only_server_is_a_transient_fault(_: Arc<dyn Store>, url: String) {
    let read_only = tagged_store(&url, &tag(), "-c default_transaction_read_only=on").await;
    let e = read_only
        .insert_tasks(vec![StoreTask::new("t", "x")])
        .await
        .unwrap_err();
    assert!(matches!(e, hive_store::Error::Unavailable { .. }), "{e:?}");
    assert!(e.is_transient() && e.to_string().contains("25006"), "{e}");
}

async fn a_write_dropped_half_way_leaves_the_pool_clean(observer: Arc<dyn Store>, url: String) {
    let tag = tag();
    let store = tagged_store(&url, &tag, "").await;
    dropped_writes(&*store, &*observer).await;
    no_open_transaction(&url, &tag).await;
}

async fn removed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hive.db");
    let client = Client::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    client.create_task(NewTask::new("one", "x")).await.unwrap();
    let worker = client
        .worker("orphaned")
        .poll_interval(Duration::from_millis(50))
        .handle_signals(false);
    let running = tokio::spawn(
        worker.run(|_ctx: TaskContext| async { Ok::<_, TaskError>(serde_json::Value::Null) }),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for f in ["hive.db", "hive.db-wal", "hive.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    client
        .create_task(NewTask::new("never seen", "x"))
        .await
        .expect_err("the writer notices the file is gone");
    let err = tokio::time::timeout(WITHIN, running)
        .await
        .expect("the worker stops instead of hanging")
        .unwrap()
        .expect_err("the worker ends with the error");
    let shown = err.to_string();
    assert!(shown.contains("removed"), "{shown}");
    assert!(!err.is_transient());
}

/// `url` with one more query parameter.
fn with_query(url: &str, key: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.query_pairs_mut().append_pair(key, value);
    u.into()
}

/// A store on its own one-connection pool, named so its backends can be found.
async fn tagged_store(url: &str, tag: &str, options: &str) -> Arc<dyn Store> {
    let mut u = with_query(url, "application_name", tag);
    u = with_query(&u, "max_connections", "1");
    if !options.is_empty() {
        // The schema option is already there; server settings join it.
        let mut parsed = url::Url::parse(&u).unwrap();
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "options" {
                    format!("{v} {options}")
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        u = parsed.into();
    }
    let options = ConnectOptions {
        schema: hive_store::SchemaPolicy::Existing,
        ..Default::default()
    };
    hive_store::connect_with(&u, &options).await.unwrap()
}

/// Asserts that no backend under `tag` sits inside a transaction. A connection the client
/// dropped may take the server a moment to notice, so this waits (briefly) for that.
async fn no_open_transaction(url: &str, tag: &str) {
    let mut admin = PgConnection::connect(url).await.unwrap();
    let started = Instant::now();
    loop {
        let states: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(state, '') FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(tag)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        if states.iter().all(|s| !s.contains("transaction")) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "connections of {tag}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tag() -> String {
    format!("hive-tx-{}", uuid::Uuid::new_v4().simple())
}

/// A row lock held elsewhere makes the store's transaction time out half-way.
async fn a_statement_timeout_mid_transaction_leaves_the_pool_clean(
    store: Arc<dyn Store>,
    url: String,
) {
    let id = store
        .insert_tasks(vec![StoreTask::new("locked", "x")])
        .await
        .unwrap()
        .ids[0];
    let tag = tag();
    let timed = tagged_store(&url, &tag, "-c statement_timeout=300").await;
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(id.0)
        .execute(&mut *held)
        .await
        .unwrap();
    let err = timed
        .set_task_status(id, StatusChange::to(TaskStatus::Cancelled))
        .await
        .expect_err("the lock outlasts the statement timeout");
    assert!(err.to_string().contains("57014"), "{err}");
    held.rollback().await.unwrap();
    no_open_transaction(&url, &tag).await;
    // The same one-connection pool works at once.
    set_status(&*timed, id, TaskStatus::Cancelled).await;
    assert_eq!(
        timed.get_task(id).await.unwrap().unwrap().status,
        TaskStatus::Cancelled
    );
}

/// The connection dies with the COMMIT on the wire: before the server sees it, and after
/// (the reply lost). Either way the pool opens a fresh connection for the next operation.
async fn a_connection_killed_during_commit_leaves_the_pool_clean(_: Arc<dyn Store>, url: String) {
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let tag = tag();
    let store = tagged_store(&proxied, &tag, "").await;
    let key = |k: &str| StoreTask::new(k, "x").idempotency_key(k);
    for (cut, title) in [(Cut::BeforeCommit, "before"), (Cut::AfterCommit, "after")] {
        proxy.cut_next_commit(cut);
        // With an idempotency key, the insert runs in a transaction.
        let err = store
            .insert_tasks(vec![key(title)])
            .await
            .expect_err("the connection is cut during COMMIT");
        assert!(err.is_transient(), "{err}");
        no_open_transaction(&url, &tag).await;
        // Retrying is safe: the key makes the insert happen once, whichever way it went.
        let ids = store.insert_tasks(vec![key(title)]).await.unwrap().ids;
        let again = store.insert_tasks(vec![key(title)]).await.unwrap().ids;
        assert_eq!(ids, again);
    }
    let titles = titles(&*store).await;
    assert_eq!(titles.len(), 2, "{titles:?}");
}

/// Under SERIALIZABLE, concurrent changes of one task make transactions fail with
/// serialization errors; the store retries them, and no connection is left open.
async fn serialization_failures_leave_the_pool_clean(store: Arc<dyn Store>, url: String) {
    let id = store
        .insert_tasks(vec![StoreTask::new("contended", "x")])
        .await
        .unwrap()
        .ids[0];
    let tag = tag();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores
            .push(tagged_store(&url, &tag, "-c default_transaction_isolation=serializable").await);
    }
    let mut changes = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        for j in 0..10 {
            let s = s.clone();
            changes.push(tokio::spawn(async move {
                let change = StatusChange {
                    metadata: Some(serde_json::json!({ format!("k{i}"): j })),
                    ..StatusChange::to(TaskStatus::Queued)
                };
                s.set_task_status(id, change).await
            }));
        }
    }
    let mut conflicts = 0;
    for c in changes {
        match c.await.unwrap() {
            Ok(_) => {}
            Err(e) if e.is_transient() => conflicts += 1,
            Err(e) => panic!("not a serialization failure: {e}"),
        }
    }
    eprintln!(
        "SERIALIZATION postgres: {conflicts} of 40 contended changes still conflicting after retries"
    );
    no_open_transaction(&url, &tag).await;
    for s in &stores {
        let change = StatusChange {
            metadata: Some(serde_json::json!({ "after": true })),
            ..StatusChange::to(TaskStatus::Queued)
        };
        s.set_task_status(id, change).await.unwrap().unwrap();
    }
    let metadata = store.get_task(id).await.unwrap().unwrap().metadata;
    assert_eq!(metadata["after"], true);
}

/// The titles of every task, in queue order.
async fn titles(store: &dyn Store) -> Vec<String> {
    let tasks = store.list_tasks(&Default::default()).await.unwrap();
    tasks.into_iter().map(|t| t.title).collect()
}

/// A spawn commits with its spawner's success or not at all. The connection dies with the
/// COMMIT on the wire (a worker killed between its handler's return and the commit, as
/// the database sees it): before the server sees it, and after. Either way the plan holds
/// the whole fan-out once or none of it, and the worker's retry never adds it twice.
async fn a_spawn_cut_at_commit_is_all_or_nothing(_: Arc<dyn Store>, url: String) {
    use hive_store::testing::fixtures::{claim_params, node, plan};
    use hive_store::{Finished, Outcome, RunOutcome, TaskFilter};
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let store = tagged_store(&proxied, &tag(), "").await;
    for (cut, after_retry) in [
        (Cut::BeforeCommit, Finished::Completed),
        (Cut::AfterCommit, Finished::Stale),
    ] {
        let pid = store
            .insert_plan(plan(vec![node("split", &[]), node("join", &["split"])]))
            .await
            .unwrap();
        store.materialize_plan(pid).await.unwrap();
        let claim = store.claim_tasks(&claim_params("w", 1)).await.unwrap();
        let spawn: Vec<_> = (0..3)
            .map(|i| node(&format!("chunk-{i}"), &["split"]))
            .collect();
        let outcome = RunOutcome {
            run_id: claim[0].run.id,
            outcome: Outcome::Success {
                result: None,
                spawn,
            },
            output_log: None,
            waited: std::time::Duration::ZERO,
        };
        proxy.cut_next_commit(cut);
        let err = store
            .finish_runs(std::slice::from_ref(&outcome))
            .await
            .expect_err("the connection is cut during COMMIT");
        assert!(err.is_transient(), "{err}");
        let report = store.finish_runs(&[outcome]).await.unwrap();
        assert_eq!(report[0].finished, after_retry, "{cut:?}");
        let tasks = store.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
        let mut ids: Vec<_> = tasks
            .iter()
            .map(|t| t.plan_subtask_id.clone().unwrap())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["chunk-0", "chunk-1", "chunk-2", "join", "split"],
            "{cut:?}: the fan-out once"
        );
        let join = tasks
            .iter()
            .find(|t| t.plan_subtask_id.as_deref() == Some("join"))
            .unwrap();
        assert_eq!(join.pending_dependencies, 3, "{cut:?}");
        assert_eq!(
            store.get_plan(pid).await.unwrap().unwrap().total_subtasks,
            5
        );
        // Out of the next round's way.
        store.cancel_plan(pid).await.unwrap();
    }
}

/// A process that dies between committing a plan's last finish and settling the plan
/// (re-reading its counts to move it) leaves it open with every subtask done; the next
/// reap, from any worker, settles it, once.
async fn a_plan_left_unsettled_by_a_crash_is_settled_by_the_reaper(
    store: Arc<dyn Store>,
    url: String,
) {
    use hive_store::models::PlanStatus;
    use hive_store::testing::fixtures::{claim_params, node, plan, reap_params, success};
    let pid = store
        .insert_plan(plan(vec![node("a", &[]), node("b", &[])]))
        .await
        .unwrap();
    store.materialize_plan(pid).await.unwrap();
    let claims = store.claim_tasks(&claim_params("w", 2)).await.unwrap();
    let outcomes: Vec<_> = claims.iter().map(|c| success(c.run.id)).collect();
    store.finish_runs(&outcomes).await.unwrap();
    assert_eq!(
        store.get_plan(pid).await.unwrap().unwrap().status,
        PlanStatus::Completed
    );
    // The state a crash before the settle leaves: counts done, status still open.
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE plans SET status = 'in_progress' WHERE id = $1")
        .bind(pid.0)
        .execute(&mut conn)
        .await
        .unwrap();
    let mut notes = store.subscribe().await.unwrap();
    store.reap(&reap_params()).await.unwrap();
    store.reap(&reap_params()).await.unwrap();
    let p = store.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 2));
    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(n) = notes.recv().await
                && matches!(n.change, hive_store::Change::PlanStatus { plan_id, status }
                    if plan_id == pid && status == PlanStatus::Completed)
            {
                return;
            }
        }
    })
    .await;
    assert!(moved.is_ok(), "the settle is announced");
}
