//! SQLite-specific checks the conformance suite does not make (URL forms, `:memory:`, WAL,
//! two pools on one file, statements past the bind limit, error mapping). That SQLite
//! behaves like MemoryStore is the state-machine property test in `state_machine.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use hive_store::models::{NewPlan, NewTask, PlanStatus, SubTask, TaskId, TaskStatus};
use hive_store::testing::fixtures::{claim_params, drain, listed, tasks};
use hive_store::{
    ClaimParams, ConnectOptions, Error, Outcome, RunOutcome, SchemaPolicy, Store, TaskFilter,
};

fn file_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:{}", dir.path().join("hive.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_url_is_one_private_database() {
    let s = hive_store::connect("sqlite::memory:").await.unwrap();
    let ids = s.insert_tasks(tasks("t", "x", 50)).await.unwrap().ids;
    // Readers and writers share the one connection; none may see another database.
    let workers: Vec<_> = (0..6)
        .map(|i| tokio::spawn(drain(s.clone(), format!("w{i}"), 3)))
        .collect();
    let mut done = Vec::new();
    for w in workers {
        done.extend(w.await.unwrap());
    }
    assert_eq!(
        done.into_iter().collect::<HashSet<_>>(),
        ids.into_iter().collect()
    );
    let other = hive_store::connect("sqlite::memory:").await.unwrap();
    assert!(
        other
            .list_tasks(&TaskFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let with_params =
        hive_store::connect("sqlite://:memory:?max_connections=3&acquire_timeout_secs=2")
            .await
            .unwrap();
    assert!(with_params.get_task(TaskId::new()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_url_forms_wal_and_table_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hive.db");
    let url = format!(
        "sqlite://{}?max_connections=2&acquire_timeout_secs=5",
        path.display()
    );
    let s = hive_store::connect(&url).await.unwrap();
    s.insert_tasks(vec![NewTask::new("a", "x")]).await.unwrap();
    // Opening again (the other URL form) runs the migrations again, harmlessly.
    let again = hive_store::connect(&file_url(&dir)).await.unwrap();
    assert_eq!(
        again
            .list_tasks(&TaskFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .unwrap();
    for t in ["tasks", "runs", "workers", "plans", "task_dependencies"] {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    // Payloads and results are in it: the file and its log are its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    for file in ["hive.db", "hive.db-wal", "hive.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
}

#[tokio::test]
async fn errors_are_portable() {
    // A path that cannot exist is a configuration error (not worth retrying), not an outage.
    match hive_store::connect("sqlite:/nonexistent-hive-dir/sub/hive.db").await {
        Err(Error::Misconfigured { target, reason }) => {
            assert_eq!(target, "/nonexistent-hive-dir/sub/hive.db");
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected misconfigured, got {other:?}"),
    }
    for bad in [
        "sqlite:",
        "sqlite:/tmp/h.db?max_connections=lots",
        "sqlite:/tmp/h.db?bogus=1",
    ] {
        assert!(
            matches!(
                hive_store::connect(bad).await,
                Err(Error::UnsupportedUrl(_))
            ),
            "{bad}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hive.db"), vec![b'x'; 8192]).unwrap();
    let err = hive_store::connect(&file_url(&dir)).await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. } | Error::Migration(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_claim_each_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = hive_store::connect(&file_url(&dir)).await.unwrap();
    let b = hive_store::connect(&file_url(&dir)).await.unwrap();
    let ids: HashSet<TaskId> = a
        .insert_tasks(tasks("t", "x", 400))
        .await
        .unwrap()
        .ids
        .into_iter()
        .collect();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(drain(s, format!("w{i}"), 1 + i % 4))
        })
        .collect();
    let mut done = Vec::new();
    for w in workers {
        done.extend(w.await.unwrap());
    }
    assert_eq!(done.len(), ids.len(), "no task claimed twice");
    assert_eq!(done.into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(
        b.count_tasks(None).await.unwrap()[&TaskStatus::Completed],
        400
    );
}

/// Workers started together on a file that does not exist yet (a fresh deployment) all
/// open it: their migrations race, and each gets a whole schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opening_a_new_file_at_once_all_migrate_it() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let url = file_url(&dir);
        let opening: Vec<_> = (0..6)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { hive_store::connect(&url).await })
            })
            .collect();
        for (i, o) in opening.into_iter().enumerate() {
            let store = o
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("store {i}: {e}"));
            store.insert_tasks(tasks("t", "x", 1)).await.unwrap();
        }
    }
}

/// A percent-encoded path names the file sqlx opens (`my%20jobs.db` is `my jobs.db`) in
/// every check Hive makes too: one that exists is found, its replacement noticed.
#[tokio::test]
async fn an_encoded_path_is_the_file_sqlx_opens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/my%20jobs%23.db", dir.path().display());
    let created = open(&url, SchemaPolicy::Migrate).await.unwrap();
    created.insert_tasks(tasks("t", "x", 1)).await.unwrap();
    assert!(dir.path().join("my jobs#.db").exists(), "the decoded name");
    let again = open(&url, SchemaPolicy::Existing).await.unwrap();
    assert_eq!(
        again.count_tasks(None).await.unwrap()[&TaskStatus::Queued],
        1
    );
    std::fs::rename(
        dir.path().join("my jobs#.db"),
        dir.path().join("elsewhere.db"),
    )
    .unwrap();
    let e = again.insert_tasks(tasks("u", "x", 1)).await.unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_past_the_bind_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = hive_store::connect(&file_url(&dir)).await.unwrap();
    let first = s
        .insert_tasks(
            (0..10)
                .map(|i| NewTask::new(format!("pre{i}"), "x").idempotency_key(format!("k{i}")))
                .collect(),
        )
        .await
        .unwrap()
        .ids;
    // 5000 rows span several statements; keys k0..k24 each appear twice, k0..k9 existed.
    let batch: Vec<NewTask> = (0..5000)
        .map(|i| {
            let t = NewTask::new(format!("t{i}"), "x");
            if i % 100 == 0 {
                t.idempotency_key(format!("k{}", (i / 100) % 25))
            } else {
                t
            }
        })
        .collect();
    let ids = s.insert_tasks(batch).await.unwrap().ids;
    assert_eq!(ids.len(), 5000);
    for (i, f) in first.iter().enumerate() {
        assert_eq!(ids[i * 100], *f);
    }
    assert_eq!(ids[1100], ids[3600]);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 4975);
    assert_eq!(
        s.count_tasks(None).await.unwrap()[&TaskStatus::Queued],
        4975
    );
    // A 4000-node chain: 4000 tasks and 3999 dependency rows in one transaction.
    let subtasks: Vec<SubTask> = (0..4000)
        .map(|i| {
            let st = SubTask::new(format!("n{i}"), format!("n{i}"), "chain");
            if i == 0 {
                st
            } else {
                st.depends_on([format!("n{}", i - 1)])
            }
        })
        .collect();
    let pid = s.insert_plan(NewPlan::new("big", subtasks)).await.unwrap();
    assert_eq!(s.materialize_plan(pid).await.unwrap(), Some(4000));
    let in_plan = TaskFilter::in_plan(pid);
    let chain = listed(&*s, in_plan).await;
    let met = s.dependencies_met(&chain).await.unwrap();
    assert_eq!(met.values().filter(|m| **m).count(), 1);
    let claims = s
        .claim_tasks(&ClaimParams {
            task_types: vec!["chain".into()],
            ..claim_params("w", 5)
        })
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    let failed = RunOutcome {
        run_id: claims[0].run.id,
        outcome: Outcome::Failure {
            error: "x".into(),
            retry: None,
        },
        output_log: None,
        waited: std::time::Duration::ZERO,
    };
    let rep = s.finish_runs(&[failed]).await.unwrap();
    assert_eq!(rep[0].cancelled_dependents.len(), 3999);
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.status, p.failed_subtasks, p.cancelled_subtasks),
        (PlanStatus::Failed, 1, 3999)
    );
}

async fn open(url: &str, schema: SchemaPolicy) -> Result<Arc<dyn Store>, Error> {
    let options = ConnectOptions {
        schema,
        ..Default::default()
    };
    hive_store::connect_with(url, &options).await
}

fn refusal(r: Result<Arc<dyn Store>, Error>) -> String {
    match r {
        Err(Error::Misconfigured { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn schema_policies_never_turn_a_foreign_or_missing_database_into_hives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    let url = format!("sqlite:{}", path.display());
    // Reading a file that does not exist says so, and creates nothing.
    let r = refusal(open(&url, SchemaPolicy::Existing).await);
    assert!(r.contains("does not exist"), "{r}");
    assert!(!path.exists());

    // An app's own database: refused for reading and for creating work, untouched.
    let foreign = dir.path().join("app.db");
    let pool = hive_store::testing::fixtures::foreign_sqlite(&foreign).await;
    let foreign_url = format!("sqlite:{}", foreign.display());
    let r = refusal(open(&foreign_url, SchemaPolicy::Existing).await);
    assert!(
        r.contains("not a Hive database") && r.contains("customers"),
        "{r}"
    );
    let r = refusal(open(&foreign_url, SchemaPolicy::MigrateIfOwned).await);
    assert!(r.contains("hive migrate"), "{r}");
    let tables = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert_eq!(tables(pool.clone()).await, vec!["customers".to_owned()]);
    // `hive migrate` (the Migrate policy) adds Hive's tables when asked to.
    open(&foreign_url, SchemaPolicy::Migrate).await.unwrap();
    assert!(tables(pool.clone()).await.contains(&"tasks".to_owned()));

    // An empty database is created for work, and then readable.
    let fresh = format!("sqlite:{}", dir.path().join("fresh.db").display());
    let s = open(&fresh, SchemaPolicy::MigrateIfOwned).await.unwrap();
    s.insert_tasks(vec![NewTask::new("a", "x")]).await.unwrap();
    let read = open(&fresh, SchemaPolicy::Existing).await.unwrap();
    assert_eq!(
        read.list_tasks(&TaskFilter::default()).await.unwrap().len(),
        1
    );

    // An older build's schema is not upgraded on the side by creating work: `hive
    // migrate` does it.
    let older = format!("sqlite:{}", dir.path().join("older.db").display());
    let pool = migrated_to(&older, 3).await;
    let r = refusal(open(&older, SchemaPolicy::MigrateIfOwned).await);
    assert!(
        r.contains("out of date") && r.contains("hive migrate"),
        "{r}"
    );
    let applied = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            hive_store::MIGRATIONS_TABLE
        )))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(applied(pool.clone()).await, 3, "nothing migrated");
    open(&older, SchemaPolicy::Migrate).await.unwrap();
    assert!(applied(pool).await > 3);
}

#[tokio::test]
async fn a_database_migrated_by_an_earlier_build_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir);
    let s = open(&url, SchemaPolicy::Migrate).await.unwrap();
    s.insert_tasks(vec![NewTask::new("a", "x")]).await.unwrap();
    drop(s);
    // Earlier builds kept Hive's migrations in sqlx's default table.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE {} RENAME TO _sqlx_migrations",
        hive_store::MIGRATIONS_TABLE
    )))
    .execute(&pool)
    .await
    .unwrap();
    // Read as it is, then adopted by the first connect that may write.
    let read = open(&url, SchemaPolicy::Existing).await.unwrap();
    assert_eq!(
        read.list_tasks(&TaskFilter::default()).await.unwrap().len(),
        1
    );
    open(&url, SchemaPolicy::MigrateIfOwned).await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name LIKE '%migrations'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(names, vec![hive_store::MIGRATIONS_TABLE.to_owned()]);
}

/// A new database file with only the first `n` SQLite migrations applied, as an earlier
/// build left it.
async fn migrated_to(url: &str, n: usize) -> sqlx::SqlitePool {
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    let mut before = sqlx::migrate!("migrations/sqlite");
    before.migrations = std::borrow::Cow::Owned(before.migrations[..n].to_vec());
    before.dangerous_set_table_name(hive_store::MIGRATIONS_TABLE);
    before.run(&pool).await.unwrap();
    pool
}

/// A database from before plan subtasks had rows of their own (migrations 0001–0002, the
/// subtasks as a JSON column of the plan) keeps its plans' definitions when migrated.
#[tokio::test]
async fn a_plan_stored_before_plan_subtasks_keeps_its_definition() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir);
    let pool = migrated_to(&url, 2).await;
    let subtasks = serde_json::json!([
        {"id": "a", "title": "A", "description": "", "task_type": "x", "priority": 1,
         "payload": {"k": "ü"}, "dependencies": [], "estimated_duration": null, "max_retries": 2},
        {"id": "b", "title": "B", "description": "", "task_type": "x", "priority": 5,
         "payload": {}, "dependencies": ["a"], "estimated_duration": 30, "max_retries": null}
    ]);
    let id = hive_models::PlanId::new();
    sqlx::query(
        "INSERT INTO plans (id, title, description, status, total_subtasks, subtasks, \
                            created_at, updated_at) VALUES (?1, 'old', '', 'pending', 2, ?2, 1, 1)",
    )
    .bind(id.to_string())
    .bind(subtasks.to_string())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let s = open(&url, SchemaPolicy::Migrate).await.unwrap();
    let plan = s.get_plan(id).await.unwrap().unwrap();
    let ids: Vec<&str> = plan.subtasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(plan.subtasks[0].payload, serde_json::json!({"k": "ü"}));
    assert_eq!(plan.subtasks[0].max_retries, Some(2));
    assert_eq!(plan.subtasks[1].dependencies, ["a"]);
    assert_eq!(plan.subtasks[1].priority, 5);
    assert_eq!(s.materialize_plan(id).await.unwrap(), Some(2));
}

/// A database from before runs kept their own timestamps and plans their metadata
/// (migrations 0001–0003) is backfilled: a run was created when it started and last
/// changed when it ended (or started, while it runs); a plan's metadata is `{}`.
#[tokio::test]
async fn runs_and_plans_stored_before_seed_parity_are_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir);
    let pool = migrated_to(&url, 3).await;
    let (plan, task) = (hive_models::PlanId::new(), hive_models::TaskId::new());
    let (done, running) = (hive_models::RunId::new(), hive_models::RunId::new());
    let (plan_text, task_text) = (plan.to_string(), task.to_string());
    let rows: [(&'static str, Vec<String>); 4] = [
        (
            "INSERT INTO plans (id, title, status, total_subtasks, created_at, updated_at) \
             VALUES (?1, 'old', 'pending', 1, 1, 1)",
            vec![plan_text],
        ),
        (
            "INSERT INTO tasks (id, title, task_type, created_at, updated_at) \
             VALUES (?1, 't', 'x', 1, 1)",
            vec![task_text.clone()],
        ),
        (
            "INSERT INTO runs (id, task_id, worker_id, run_number, status, started_at, \
                               completed_at) \
             VALUES (?1, ?2, 'w', 1, 'failure', 2000000, 5000000), \
                    (?3, ?2, 'w', 2, 'running', 7000000, NULL)",
            vec![done.to_string(), task_text, running.to_string()],
        ),
        (
            "INSERT INTO workers (id, role, status, last_heartbeat, registered_at) \
             VALUES ('w', 'r', 'error', 1, 1)",
            vec![],
        ),
    ];
    for (sql, binds) in rows {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b);
        }
        q.execute(&pool).await.unwrap();
    }
    pool.close().await;
    let s = open(&url, SchemaPolicy::Migrate).await.unwrap();
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).unwrap();
    let r = s.get_run(done).await.unwrap().unwrap();
    assert_eq!((r.created_at, r.updated_at), (at(2), at(5)));
    let r = s.get_run(running).await.unwrap().unwrap();
    assert_eq!((r.created_at, r.updated_at), (at(7), at(7)));
    assert_eq!(
        s.get_plan(plan).await.unwrap().unwrap().metadata,
        serde_json::json!({})
    );
    let w = s
        .get_worker(&hive_models::WorkerId::parse("w").unwrap())
        .await;
    assert_eq!(w.unwrap().unwrap().status_reason, None);
}

/// `close` folds the write-ahead log into the file and removes it, with a subscriber's
/// watcher running; what comes after it fails instead of reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_the_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("hive.db-wal");
    let s = hive_store::connect(&file_url(&dir)).await.unwrap();
    let _events = s.subscribe().await.unwrap();
    s.insert_tasks(vec![NewTask::new("kept", "x")])
        .await
        .unwrap();
    let log = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    assert!(
        log(&wal) > 0,
        "the commit is in the log while the store is open"
    );
    s.close().await;
    assert_eq!(log(&wal), 0, "the log is folded into the file");
    assert!(
        !dir.path().join("hive.db-shm").exists(),
        "nor is shared memory left"
    );
    // Said so, and not as a blip to retry: a retry loop would spin until the exit.
    for e in [
        s.list_tasks(&TaskFilter::default()).await.unwrap_err(),
        s.insert_tasks(tasks("late", "x", 1)).await.unwrap_err(),
    ] {
        assert!(matches!(e, Error::Closed { .. }), "{e:?}");
        assert!(!e.is_transient() && e.is_about_the_database(), "{e}");
    }
    // The file alone holds the task: opened read-only and immutable, as a reader without
    // write access to the directory opens it.
    let only = format!(
        "sqlite:{}?immutable=1&mode=ro",
        dir.path().join("hive.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&only).await.unwrap();
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM tasks")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(titles, ["kept"]);
}

/// Another store's commit to the same file reaches a subscriber as `StoreChanged` (the
/// watcher of the file's `data_version`); a store dropped without being closed ends its
/// watcher, whose copy of the store's channel would otherwise keep the channel, and the
/// watcher's connection and timer, alive for the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watcher_wakes_on_another_store_and_ends_with_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir);
    let watched = hive_store::connect(&url).await.unwrap();
    let other = hive_store::connect(&url).await.unwrap();
    let mut rx = watched.subscribe().await.unwrap();
    // The watcher's first look sets its baseline: commit until one is seen.
    let woken = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            other
                .insert_tasks(vec![NewTask::new("a", "x")])
                .await
                .unwrap();
            let next = tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv());
            if let Ok(Ok(n)) = next.await
                && n.change == hive_store::Change::StoreChanged
            {
                return;
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "no wake-up for another store's commits");
    drop(watched);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the dropped store's channel is still open");
}
