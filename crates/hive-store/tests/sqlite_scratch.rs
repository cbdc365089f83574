//! SQLite-specific checks the conformance suite does not make (URL forms, `:memory:`, WAL,
//! two pools on one file, statements past the bind limit, error mapping), and a
//! differential run: one long scenario must log the same on MemoryStore and SqliteStore.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hive_store::models::{
    NewPlan, NewTask, PlanStatus, RetryPolicy, RunId, SubTask, TaskId, TaskStatus, WorkerId,
    WorkerStatus,
};
use hive_store::{
    ClaimParams, Error, Finished, Notification, Outcome, PruneParams, ReapParams, RunOutcome,
    StatusChange, Store, TaskFilter, WorkerRegistration,
};
use serde_json::json;

fn file_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite:{}", dir.path().join("hive.db").display())
}

fn success(run_id: RunId) -> RunOutcome {
    RunOutcome {
        run_id,
        outcome: Outcome::Success { result: None },
        output_log: None,
    }
}

/// Claims and finishes until the queue is empty; returns the tasks this worker took.
async fn drain_queue(s: Arc<dyn Store>, worker: String, batch: u32) -> Vec<TaskId> {
    let mut mine = Vec::new();
    loop {
        let claims = s.claim_tasks(&cp(&worker, batch)).await.unwrap();
        if claims.is_empty() {
            return mine;
        }
        let outcomes: Vec<RunOutcome> = claims.iter().map(|c| success(c.run.id)).collect();
        for r in s.finish_runs(&outcomes).await.unwrap() {
            assert_eq!(r.finished, Finished::Completed);
        }
        mine.extend(claims.into_iter().map(|c| c.task.id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_url_is_one_private_database() {
    let s = hive_store::connect("sqlite::memory:").await.unwrap();
    let ids = s
        .insert_tasks(
            (0..50)
                .map(|i| NewTask::new(format!("t{i}"), "x"))
                .collect(),
        )
        .await
        .unwrap();
    // Readers and writers share the one connection; none may see another database.
    let workers: Vec<_> = (0..6)
        .map(|i| tokio::spawn(drain_queue(s.clone(), format!("w{i}"), 3)))
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
}

#[tokio::test]
async fn errors_are_portable() {
    match hive_store::connect("sqlite:/nonexistent-hive-dir/sub/hive.db").await {
        Err(Error::Unavailable { target, .. }) => {
            assert_eq!(target, "/nonexistent-hive-dir/sub/hive.db")
        }
        other => panic!("expected unavailable, got {other:?}"),
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
        .insert_tasks(
            (0..400)
                .map(|i| NewTask::new(format!("t{i}"), "x"))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .collect();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(drain_queue(s, format!("w{i}"), 1 + i % 4))
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
        .unwrap();
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
    let ids = s.insert_tasks(batch).await.unwrap();
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
    let pid = s
        .insert_plan(NewPlan {
            title: "big".into(),
            description: String::new(),
            parent_task_id: None,
            subtasks,
        })
        .await
        .unwrap();
    assert_eq!(s.materialize_plan(pid).await.unwrap(), Some(4000));
    let chain: Vec<TaskId> = s
        .list_tasks(&TaskFilter {
            plan_id: Some(pid),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    let met = s.dependencies_met(&chain).await.unwrap();
    assert_eq!(met.values().filter(|m| **m).count(), 1);
    let claims = s
        .claim_tasks(&ClaimParams {
            task_types: vec!["chain".into()],
            ..cp("w", 5)
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
    };
    let rep = s.finish_runs(&[failed]).await.unwrap();
    assert_eq!(rep[0].cancelled_dependents.len(), 3999);
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.status, p.failed_subtasks, p.cancelled_subtasks),
        (PlanStatus::Failed, 1, 3999)
    );
}

type S = Arc<dyn Store>;

struct Log {
    lines: Vec<String>,
    names: HashMap<TaskId, String>,
    rx: tokio::sync::broadcast::Receiver<Notification>,
}

impl Log {
    async fn refresh(&mut self, s: &S) {
        for t in s.list_tasks(&TaskFilter::default()).await.unwrap() {
            self.names.insert(t.id, t.title.clone());
        }
    }
    fn name(&self, id: &TaskId) -> String {
        self.names.get(id).cloned().unwrap_or_else(|| "?".into())
    }
    fn push(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }
    async fn snapshot(&mut self, s: &S, label: &str) {
        self.refresh(s).await;
        let tasks = s.list_tasks(&TaskFilter::default()).await.unwrap();
        for t in &tasks {
            let deps: Vec<String> = t.dependencies.iter().map(|d| self.name(d)).collect();
            let runs = s.list_runs(t.id).await.unwrap();
            let runs: Vec<String> = runs
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}:{}:{:?}:{:?}:{:?}:{}",
                        r.run_number,
                        r.status,
                        r.worker_id,
                        r.error_message,
                        r.output_log,
                        r.result_data,
                        r.lease_expires_at.is_some()
                    )
                })
                .collect();
            self.push(format!(
                "{label} task {} st={} pend={} att={} worker={:?} deps={:?} err={:?} res={:?} runat={} cur={} meta={} runs={:?}",
                t.title, t.status, t.pending_dependencies, t.attempts, t.assigned_worker, deps, t.last_error, t.result,
                t.run_at.is_some(), t.current_run_id.is_some(), t.metadata, runs
            ));
        }
        let counts = s.count_tasks(None).await.unwrap();
        self.push(format!("{label} counts {counts:?}"));
        for p in s.list_plans(None, None).await.unwrap() {
            self.push(format!(
                "{label} plan {} st={} c={} f={} t={} m={}",
                p.title,
                p.status,
                p.completed_subtasks,
                p.failed_subtasks,
                p.total_subtasks,
                p.materialized
            ));
        }
        for w in s.list_workers(&Default::default()).await.unwrap() {
            self.push(format!(
                "{label} worker {} st={} role={} caps={:?}",
                w.id, w.status, w.role, w.capabilities
            ));
        }
        self.drain(s).await;
    }
    async fn drain(&mut self, s: &S) {
        self.refresh(s).await;
        while let Ok(n) = self.rx.try_recv() {
            let t = n.task_id.map(|t| self.name(&t));
            self.lines.push(format!(
                "note {:?} task={:?} plan={} worker={:?} status={:?}",
                n.kind,
                t,
                n.plan_id.is_some(),
                n.worker_id,
                n.status
            ));
        }
    }
}

fn w(n: &str) -> WorkerId {
    WorkerId::parse(n).unwrap()
}

fn cp(worker: &str, limit: u32) -> ClaimParams {
    ClaimParams {
        worker_id: w(worker),
        task_types: vec![],
        limit,
        lease: Duration::from_secs(60),
    }
}

fn ok(run: RunId) -> RunOutcome {
    RunOutcome {
        run_id: run,
        outcome: Outcome::Success {
            result: Some(json!({"r": 1})),
        },
        output_log: Some("log".into()),
    }
}
fn bad(run: RunId, retry: Option<RetryPolicy>) -> RunOutcome {
    RunOutcome {
        run_id: run,
        outcome: Outcome::Failure {
            error: "boom".into(),
            retry,
        },
        output_log: None,
    }
}

fn node(id: &str, deps: &[&str]) -> SubTask {
    let mut s = SubTask::new(id, id, "test").depends_on(deps.iter().copied());
    s.max_retries = Some(0);
    s
}

async fn claim_named(s: &S, log: &mut Log, worker: &str, limit: u32) -> Vec<(String, RunId)> {
    let claims = s.claim_tasks(&cp(worker, limit)).await.unwrap();
    log.refresh(s).await;
    let out: Vec<(String, RunId)> = claims
        .iter()
        .map(|c| (c.task.title.clone(), c.run.id))
        .collect();
    log.push(format!(
        "claimed {:?}",
        out.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    ));
    for c in &claims {
        let stored = s.get_task(c.task.id).await.unwrap().unwrap();
        assert_eq!(stored, c.task, "claim returns the stored task");
        assert_eq!(
            s.get_run(c.run.id).await.unwrap().unwrap(),
            c.run,
            "claim returns the stored run"
        );
    }
    out
}

async fn finish(s: &S, log: &mut Log, outs: Vec<RunOutcome>) {
    let reps = s.finish_runs(&outs).await.unwrap();
    log.refresh(s).await;
    for r in reps {
        let fin = match r.finished {
            hive_store::Finished::Retrying { .. } => "retrying".to_string(),
            f => format!("{f:?}"),
        };
        let cancelled: Vec<String> = r.cancelled_dependents.iter().map(|d| log.name(d)).collect();
        let line = format!(
            "finish task={:?} {fin} plan={} cancelled={cancelled:?} trans={:?}",
            r.task_id.map(|t| log.name(&t)),
            r.plan_id.is_some(),
            r.plan_transition
        );
        log.push(line);
    }
}

async fn scenario(s: S) -> Vec<String> {
    let rx = s.subscribe().await.unwrap();
    let mut log = Log {
        lines: vec![],
        names: HashMap::new(),
        rx,
    };
    // Plan listed out of topological order, with a diamond and a long chain.
    let plan = NewPlan {
        title: "p1".into(),
        description: String::new(),
        parent_task_id: None,
        subtasks: vec![
            node("d", &["b", "c"]),
            node("g", &["f", "d"]),
            node("c", &["a"]),
            node("b", &["a", "a"]),
            node("a", &[]),
            node("f", &["e"]),
            node("e", &["c"]),
            node("h", &[]),
            node("z", &["g", "h", "d"]),
        ],
    };
    let pid = s.insert_plan(plan).await.unwrap();
    assert_eq!(s.materialize_plan(pid).await.unwrap(), Some(9));
    log.snapshot(&s, "mat").await;
    let mut met: Vec<(String, bool)> = {
        let tasks = s.list_tasks(&TaskFilter::default()).await.unwrap();
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        let m = s.dependencies_met(&ids).await.unwrap();
        tasks.iter().map(|t| (t.title.clone(), m[&t.id])).collect()
    };
    met.sort();
    log.push(format!("met {met:?}"));
    // a and h claimable.
    let c = claim_named(&s, &mut log, "w1", 10).await;
    let outs = c.iter().map(|(_, r)| ok(*r)).collect();
    finish(&s, &mut log, outs).await;
    log.snapshot(&s, "s1").await;
    // b, c claimable; complete c, fail b for good (cascade: d, g, z; not e/f).
    let c = claim_named(&s, &mut log, "w2", 10).await;
    let mut outs = vec![];
    for (name, run) in &c {
        outs.push(if name == "b" {
            bad(*run, Some(RetryPolicy::IMMEDIATE))
        } else {
            ok(*run)
        });
    }
    finish(&s, &mut log, outs).await;
    log.snapshot(&s, "s2").await;
    // e claimable; run it and requeue via status changes.
    let c = claim_named(&s, &mut log, "w1", 10).await;
    let e_run = c[0].1;
    let e_id = s.get_run(e_run).await.unwrap().unwrap().task_id;
    let ch = s
        .set_task_status(
            e_id,
            StatusChange {
                metadata: Some(json!({"x": 1})),
                ..StatusChange::to(TaskStatus::ReviewPending)
            },
        )
        .await
        .unwrap()
        .unwrap();
    log.push(format!(
        "ch prev={} st={} canc={} trans={:?}",
        ch.previous,
        ch.task.status,
        ch.cancelled_dependents.len(),
        ch.plan_transition.map(|p| p.1)
    ));
    finish(&s, &mut log, vec![ok(e_run)]).await;
    let ch = s
        .set_task_status(e_id, StatusChange::to(TaskStatus::Approved))
        .await
        .unwrap()
        .unwrap();
    log.push(format!("ch prev={} st={}", ch.previous, ch.task.status));
    let ch = s
        .set_task_status(e_id, StatusChange::to(TaskStatus::Completed))
        .await
        .unwrap()
        .unwrap();
    log.push(format!(
        "ch prev={} st={} trans={:?}",
        ch.previous,
        ch.task.status,
        ch.plan_transition.map(|p| p.1)
    ));
    log.snapshot(&s, "s3").await;
    // Requeue b from failed: pending recomputed (a completed) and claimable.
    log.refresh(&s).await;
    let b_id = *log.names.iter().find(|(_, n)| *n == "b").unwrap().0;
    let d_id = *log.names.iter().find(|(_, n)| *n == "d").unwrap().0;
    let ch = s
        .set_task_status(
            d_id,
            StatusChange {
                requeue: true,
                ..StatusChange::to(TaskStatus::Queued)
            },
        )
        .await
        .unwrap()
        .unwrap();
    log.push(format!(
        "requeue d prev={} pend={}",
        ch.previous, ch.task.pending_dependencies
    ));
    let ch = s
        .set_task_status(
            b_id,
            StatusChange {
                requeue: true,
                ..StatusChange::to(TaskStatus::Queued)
            },
        )
        .await
        .unwrap()
        .unwrap();
    log.push(format!(
        "requeue b prev={} pend={}",
        ch.previous, ch.task.pending_dependencies
    ));
    log.snapshot(&s, "s4").await;
    // Interplay in one batch: claim b and f; then fail b for good (cancels d), f completes.
    let c = claim_named(&s, &mut log, "w3", 10).await;
    let outs: Vec<RunOutcome> = c
        .iter()
        .map(|(n, r)| if n == "b" { bad(*r, None) } else { ok(*r) })
        .collect();
    finish(&s, &mut log, outs).await;
    log.snapshot(&s, "s5").await;

    // Second plan: fail cancels an in-progress dependent whose outcome comes later in the batch.
    let plan2 = NewPlan {
        title: "p2".into(),
        description: String::new(),
        parent_task_id: None,
        subtasks: vec![node("p", &[]), node("q", &["p"]), node("r", &["q"])],
    };
    let pid2 = s.insert_plan(plan2).await.unwrap();
    s.materialize_plan(pid2).await.unwrap();
    log.refresh(&s).await;
    let c = claim_named(&s, &mut log, "w1", 1).await;
    finish(&s, &mut log, vec![ok(c[0].1)]).await;
    let q = claim_named(&s, &mut log, "w1", 1).await;
    let p_id = *log.names.iter().find(|(_, n)| *n == "p").unwrap().0;
    s.set_task_status(
        p_id,
        StatusChange {
            requeue: true,
            ..StatusChange::to(TaskStatus::Queued)
        },
    )
    .await
    .unwrap()
    .unwrap();
    let p = claim_named(&s, &mut log, "w2", 1).await;
    finish(
        &s,
        &mut log,
        vec![bad(p[0].1, None), ok(q[0].1), ok(q[0].1)],
    )
    .await;
    log.snapshot(&s, "s6").await;

    // Third plan: completions in one batch finishing the plan; duplicates in the batch.
    let plan3 = NewPlan {
        title: "p3".into(),
        description: String::new(),
        parent_task_id: None,
        subtasks: vec![node("x1", &[]), node("x2", &[]), node("x3", &["x1"])],
    };
    let pid3 = s.insert_plan(plan3).await.unwrap();
    s.materialize_plan(pid3).await.unwrap();
    let c = claim_named(&s, &mut log, "w1", 5).await;
    finish(&s, &mut log, c.iter().map(|(_, r)| ok(*r)).collect()).await;
    let c = claim_named(&s, &mut log, "w1", 5).await;
    finish(&s, &mut log, c.iter().map(|(_, r)| ok(*r)).collect()).await;
    log.snapshot(&s, "s7").await;

    // Fourth plan: cancel a task -> plan all terminal -> cancelled.
    let plan4 = NewPlan {
        title: "p4".into(),
        description: String::new(),
        parent_task_id: None,
        subtasks: vec![node("y1", &[]), node("y2", &["y1"])],
    };
    let pid4 = s.insert_plan(plan4).await.unwrap();
    s.materialize_plan(pid4).await.unwrap();
    log.refresh(&s).await;
    let y1 = *log.names.iter().find(|(_, n)| *n == "y1").unwrap().0;
    let ch = s
        .set_task_status(y1, StatusChange::to(TaskStatus::Cancelled))
        .await
        .unwrap()
        .unwrap();
    log.push(format!(
        "cancel y1 canc={} trans={:?}",
        ch.cancelled_dependents.len(),
        ch.plan_transition.map(|p| p.1)
    ));
    log.snapshot(&s, "s8").await;

    // Workers, reap, unregister.
    let reg = |id: &str| WorkerRegistration {
        id: w(id),
        role: "r".into(),
        capabilities: vec!["c".into()],
        metadata: json!({"m": 1}),
    };
    s.register_worker(&reg("wa")).await.unwrap();
    s.register_worker(&reg("wb")).await.unwrap();
    let ids = s
        .insert_tasks(
            (0..4)
                .map(|i| NewTask::new(format!("t{i}"), "test").max_retries(1))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 4);
    let short = ClaimParams {
        lease: Duration::from_millis(50),
        ..cp("wa", 2)
    };
    let c1 = s.claim_tasks(&short).await.unwrap();
    let c2 = s.claim_tasks(&cp("wb", 2)).await.unwrap();
    log.push(format!("claims {} {}", c1.len(), c2.len()));
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rep = s
        .reap(&ReapParams {
            heartbeat_timeout: Duration::from_millis(100),
            retry: RetryPolicy::IMMEDIATE,
            limit: 10,
        })
        .await
        .unwrap();
    log.refresh(&s).await;
    log.push(format!(
        "reap req={:?} failed={:?} off={:?}",
        rep.requeued
            .iter()
            .map(|(t, _)| log.name(t))
            .collect::<Vec<_>>(),
        rep.failed.len(),
        rep.offline_workers
    ));
    let hb = s
        .heartbeat(&w("wb"), Some(WorkerStatus::Idle))
        .await
        .unwrap();
    log.push(format!("hb {hb:?}"));
    log.drain(&s).await;
    let rel = s.unregister_worker(&w("wb")).await.unwrap().unwrap();
    // The memory store releases a worker's runs in hash order.
    let before = log.lines.len();
    log.drain(&s).await;
    log.lines[before..].sort();
    let mut rel: Vec<String> = rel.iter().map(|t| log.name(t)).collect();
    rel.sort();
    log.push(format!("unreg {rel:?}"));
    log.snapshot(&s, "s9").await;
    // Delete and prune with dependents.
    log.refresh(&s).await;
    let q_id = *log.names.iter().find(|(_, n)| *n == "x1").unwrap().0;
    log.push(format!("del {}", s.delete_task(q_id).await.unwrap()));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = s
        .prune_tasks(&PruneParams {
            older_than: Duration::ZERO,
            statuses: vec![TaskStatus::Failed, TaskStatus::Cancelled],
            limit: 3,
        })
        .await
        .unwrap();
    log.push(format!("pruned {pruned}"));
    log.snapshot(&s, "s10").await;
    log.push(format!(
        "cancel plan {:?}",
        s.cancel_plan(pid).await.unwrap().map(|v| v.len())
    ));
    log.push(format!(
        "cancel plan {:?}",
        s.cancel_plan(pid2).await.unwrap().map(|v| v.len())
    ));
    log.snapshot(&s, "s11").await;
    log.lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_sqlite_agree() {
    let mem: S = Arc::new(hive_store::MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("d.db").display());
    let sql: S = hive_store::connect(&url).await.unwrap();
    let a = scenario(mem).await;
    let b = scenario(sql).await;
    let mut first_diff = None;
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        if x != y {
            first_diff = Some(i);
            break;
        }
    }
    if let Some(i) = first_diff {
        for k in i.saturating_sub(3)..(i + 5).min(a.len()).min(b.len()) {
            eprintln!("MEM {k}: {}\nSQL {k}: {}\n", a[k], b[k]);
        }
        panic!("differ at line {i}");
    }
    assert_eq!(a.len(), b.len());
    eprintln!("{} lines agree", a.len());
}
