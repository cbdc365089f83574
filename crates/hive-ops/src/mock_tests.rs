//! Store failures surface as typed errors, never panics, and bad input (oversized payloads,
//! NUL characters) never reaches the store (a mockall `MockStore`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, PlanId, RunId, TaskId, TaskStatus, WorkerId};
use hive_store::{FinishReport, Finished, MockStore, Outcome, RunOutcome, Store};

use crate::{Error, Ops};

fn unavailable() -> hive_store::Error {
    hive_store::Error::Unavailable {
        target: "db.example:5432".into(),
        reason: "connection refused".into(),
    }
}

fn ops(mock: MockStore) -> Ops<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(mock);
    Ops::new(store)
}

#[tokio::test]
async fn store_errors_become_typed_errors() {
    let mut m = MockStore::new();
    m.expect_insert_tasks().returning(|_| Err(unavailable()));
    m.expect_get_task().returning(|_| {
        Err(hive_store::Error::Corrupt {
            table: "tasks",
            reason: "bad status".into(),
        })
    });
    m.expect_set_task_status().returning(|_, _| {
        Err(hive_models::Error::IllegalTransition {
            kind: "task",
            from: "completed".into(),
            to: "queued".into(),
        }
        .into())
    });
    m.expect_finish_runs().returning(|_| Err(unavailable()));
    m.expect_extend_lease()
        .returning(|run_id, _| Err(hive_store::Error::StaleRun { run_id }));
    m.expect_materialize_plan().returning(|_| Ok(None));
    m.expect_dependencies_met()
        .returning(|_| Ok(Default::default()));
    let o = ops(m);
    let e = o.create_task(NewTask::new("t", "x")).await.unwrap_err();
    assert!(
        matches!(e, Error::Store(hive_store::Error::Unavailable { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("db.example:5432"));
    assert!(matches!(
        o.get_task(TaskId::new()).await,
        Err(Error::Store(hive_store::Error::Corrupt { .. }))
    ));
    assert!(matches!(
        o.update_task_status(TaskId::new(), TaskStatus::Queued, None)
            .await,
        Err(Error::Invalid(hive_models::Error::IllegalTransition { .. }))
    ));
    assert!(matches!(
        o.complete_task(RunId::new(), None).await,
        Err(Error::Store(_))
    ));
    assert!(matches!(
        o.extend_lease(RunId::new(), Duration::from_secs(1)).await,
        Err(Error::StaleRun { .. })
    ));
    assert!(matches!(
        o.create_planned_subtasks_from_plan(PlanId::new()).await,
        Err(Error::NotFound { entity: "plan", .. })
    ));
    assert!(matches!(
        o.check_subtask_dependencies(TaskId::new()).await,
        Err(Error::NotFound { entity: "task", .. })
    ));
}

#[tokio::test]
async fn invalid_input_never_reaches_the_store() {
    // No expectations: any store call would panic inside the mock and fail the test.
    let o = ops(MockStore::new());
    assert!(matches!(
        o.create_task(NewTask::new("", "x")).await,
        Err(Error::Invalid(_))
    ));
    let huge = NewTask::new("t", "x").payload(serde_json::json!("z".repeat(2 * 1024 * 1024)));
    assert!(matches!(
        o.create_task(huge).await,
        Err(Error::Invalid(hive_models::Error::PayloadTooLarge { .. }))
    ));
    let cyclic = hive_models::NewPlan::new(
        "p",
        vec![
            hive_models::SubTask::new("a", "a", "x").depends_on(["b"]),
            hive_models::SubTask::new("b", "b", "x").depends_on(["a"]),
        ],
    );
    assert!(matches!(
        o.create_execution_plan(cyclic).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        o.claim_tasks(&WorkerId::parse("w").unwrap(), &[], 1, Duration::ZERO)
            .await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        o.extend_lease(hive_models::RunId::new(), Duration::ZERO)
            .await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        o.register_worker("", "role", vec![]).await,
        Err(Error::Invalid(_))
    ));
}

/// A limit small enough that oversized payloads cost nothing to build.
const LIMIT: usize = 1024;

fn ops_with_limit(mock: MockStore) -> Ops<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(mock);
    Ops::with_config(
        store,
        crate::OpsConfig {
            max_payload_bytes: LIMIT,
            ..Default::default()
        },
    )
}

/// A JSON payload whose serialized size is exactly `bytes`.
fn payload_of(bytes: usize) -> serde_json::Value {
    // `{"p":"…"}` is 8 bytes around the string.
    serde_json::json!({ "p": "x".repeat(bytes - 8) })
}

/// Asserts an error is the payload limit, naming the field and the limit.
fn assert_too_large(e: &Error, context: &str) {
    let shown = e.to_string();
    assert!(
        shown.contains("`payload`") && shown.contains(&format!("limit of {LIMIT} bytes")),
        "{context}: {shown}"
    );
    assert!(matches!(e, Error::Invalid(_)), "{context}: {e:?}");
}

#[tokio::test]
async fn oversized_payloads_are_rejected_before_any_store_call() {
    assert_eq!(serde_json::to_vec(&payload_of(LIMIT)).unwrap().len(), LIMIT);
    // Only a payload of exactly the limit may reach the store, once.
    let mut m = MockStore::new();
    m.expect_insert_tasks().times(1).returning(|tasks| {
        Ok(hive_store::TasksInserted {
            ids: tasks.iter().map(|_| TaskId::new()).collect(),
            new_tasks: tasks.len() as u64,
        })
    });
    m.expect_insert_plan().never();
    m.expect_materialize_plan().never();
    let o = ops_with_limit(m);
    o.create_task(NewTask::new("fits", "x").payload(payload_of(LIMIT)))
        .await
        .unwrap();

    let e = o
        .create_task(NewTask::new("big", "x").payload(payload_of(LIMIT + 1)))
        .await
        .unwrap_err();
    assert_too_large(&e, "create_task");
    assert!(matches!(
        e,
        Error::Invalid(hive_models::Error::PayloadTooLarge { size, limit: LIMIT }) if size == LIMIT + 1
    ));

    // One oversized task among many: the whole batch is refused, naming its position.
    let mut batch: Vec<NewTask> = (0..50)
        .map(|i| NewTask::new(format!("t{i}"), "x").payload(payload_of(LIMIT)))
        .collect();
    batch[37].payload = payload_of(LIMIT + 100);
    let e = o.create_tasks(batch).await.unwrap_err();
    assert_too_large(&e, "create_tasks");
    assert!(e.to_string().contains("`tasks[37]`"), "{e}");

    // A plan with one oversized subtask payload, through both ways of submitting one.
    let mut big = hive_models::SubTask::new("big-node", "big", "x").depends_on(["a"]);
    big.payload = payload_of(LIMIT * 4);
    let plan = hive_models::NewPlan::new("p", vec![hive_models::SubTask::new("a", "a", "x"), big]);
    for e in [
        o.create_execution_plan(plan.clone()).await.unwrap_err(),
        o.submit_plan(plan).await.unwrap_err(),
    ] {
        assert_too_large(&e, "plan");
        assert!(
            e.to_string().contains("`big-node`"),
            "names the subtask: {e}"
        );
    }
}

#[tokio::test]
async fn nul_is_refused_before_any_store_call() {
    // No expectations: any store call would panic inside the mock and fail the test.
    let o = ops(MockStore::new());
    let nul = "a\0b";
    let refused = |e: Error, field: &str| {
        let shown = e.to_string();
        assert!(
            matches!(e, Error::Invalid(_))
                && shown.contains(&format!("`{field}"))
                && shown.contains("NUL"),
            "{field}: {shown}"
        );
    };
    let task = || NewTask::new("t", "x");
    for (t, field) in [
        (NewTask::new(nul, "x"), "title"),
        (NewTask::new("t", nul), "task_type"),
        (task().description(nul), "description"),
        (task().tags(["ok", nul]), "tags[1]"),
        (task().idempotency_key(nul), "idempotency_key"),
        (task().payload(serde_json::json!({ "k": [nul] })), "payload"),
        (task().payload(serde_json::json!({ nul: 1 })), "payload"),
        (task().metadata(serde_json::json!({ "m": nul })), "metadata"),
    ] {
        refused(o.create_task(t.clone()).await.unwrap_err(), field);
        refused(
            o.create_tasks(vec![task(), t]).await.unwrap_err(),
            "tasks[1]",
        );
    }
    let plan = |subtask: hive_models::SubTask| hive_models::NewPlan::new("p", vec![subtask]);
    let mut described = hive_models::SubTask::new("s", "t", "x");
    described.description = nul.into();
    refused(
        o.submit_plan(plan(hive_models::SubTask::new(nul, "t", "x")))
            .await
            .unwrap_err(),
        "id",
    );
    refused(
        o.submit_plan(plan(described)).await.unwrap_err(),
        "description",
    );
    refused(
        o.register_worker("w", nul, vec![]).await.unwrap_err(),
        "role",
    );
    refused(
        o.register_worker("w", "r", vec![nul.into()])
            .await
            .unwrap_err(),
        "capabilities[0]",
    );
    // Worker ids refuse every control character, NUL with the message of every field.
    refused(
        o.register_worker(nul, "r", vec![]).await.unwrap_err(),
        "worker_id",
    );
    refused(
        o.update_task_status(
            TaskId::new(),
            TaskStatus::Cancelled,
            Some(serde_json::json!({ "why": nul })),
        )
        .await
        .unwrap_err(),
        "metadata",
    );
}

/// A worker's report is never refused for its text: NULs reach the store as U+FFFD, on
/// both ways of finishing runs, so no backend is asked to store what Postgres cannot.
#[tokio::test]
async fn nul_in_worker_reports_is_replaced_not_refused() {
    fn clean(outcomes: &[RunOutcome]) -> bool {
        let text = format!("{outcomes:?}");
        !text.contains("\\0") && text.matches('\u{FFFD}').count() == 4
    }
    let reports = |outcomes: &[RunOutcome]| -> Vec<FinishReport> {
        outcomes
            .iter()
            .map(|o| FinishReport {
                run_id: o.run_id,
                task_id: Some(TaskId::new()),
                finished: Finished::Completed,
                plan_id: None,
                cancelled_dependents: vec![],
                plan_transition: None,
            })
            .collect()
    };
    let mut m = MockStore::new();
    m.expect_finish_runs()
        .withf(clean)
        .times(1)
        .returning(move |o| Ok(reports(o)));
    m.expect_finish_and_claim()
        .withf(|o, _| clean(o))
        .times(1)
        .returning(move |o, _| Ok((reports(o), vec![])));
    let o = ops(m);
    let outcomes = vec![
        RunOutcome {
            run_id: RunId::new(),
            outcome: Outcome::success(Some(serde_json::json!({ "k\0": ["v\0"] }))),
            output_log: Some("out\0put".into()),
            waited: std::time::Duration::ZERO,
        },
        RunOutcome {
            run_id: RunId::new(),
            outcome: Outcome::Failure {
                error: "bad\0byte".into(),
                retry: None,
            },
            output_log: None,
            waited: std::time::Duration::ZERO,
        },
    ];
    o.finish_runs(outcomes.clone()).await.unwrap();
    o.finish_and_claim(
        &outcomes,
        &WorkerId::parse("w").unwrap(),
        &[],
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

/// A plan's status, and the check a cancel makes first, read its header (one row), never
/// its definition, which may be 100,000 subtasks long.
#[tokio::test]
async fn a_plans_status_and_its_cancel_read_only_its_header() {
    use hive_models::{ExecutionPlan, NewPlan, PlanStatus, SubTask};
    let id = PlanId::new();
    let mut plan = ExecutionPlan::from_new(
        id,
        NewPlan::new("p", vec![SubTask::new("a", "a", "step")]),
        chrono::Utc::now(),
    );
    plan.status = PlanStatus::InProgress;
    let header = plan.header();
    let mut m = MockStore::new();
    m.expect_get_plan().never();
    m.expect_get_plan_header()
        .returning(move |_| Ok(Some(header.clone())));
    m.expect_cancel_plan()
        .times(1)
        .returning(|_| Ok(Some(vec![TaskId::new()])));
    let o = ops(m);
    assert_eq!(
        o.get_execution_plan_status(id).await.unwrap(),
        Some(PlanStatus::InProgress)
    );
    assert!(o.cancel_plan(id).await.unwrap());
}

/// A task a bulk retry refused, gone from its filter before the next page is read (pruned,
/// say), leaves that page one task longer than asked for: the limit still caps the total.
#[tokio::test]
async fn a_bulk_retry_keeps_its_limit_when_a_refused_task_leaves_the_filter() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let at = chrono::Utc::now();
    let failed = move |title: &str| {
        let mut t = hive_models::Task::from_new(TaskId::new(), NewTask::new(title, "x"), at);
        t.status = TaskStatus::Failed;
        t
    };
    let (a, b, c, d) = (failed("a"), failed("b"), failed("c"), failed("d"));
    let refused = a.id;
    let pages = [vec![a, b], vec![c, d]];
    let mut m = MockStore::new();
    m.expect_now().returning(move || Ok(at));
    let read = AtomicUsize::new(0);
    m.expect_list_tasks().returning(move |_| {
        let page = pages.get(read.fetch_add(1, Ordering::SeqCst));
        Ok(page.cloned().unwrap_or_default())
    });
    let retried = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = retried.clone();
    m.expect_set_task_status().returning(move |id, _| {
        if id == refused {
            return Err(hive_models::Error::IllegalTransition {
                kind: "task",
                from: "failed".into(),
                to: "queued".into(),
            }
            .into());
        }
        seen.lock().unwrap().push(id);
        let mut task = failed("t");
        task.id = id;
        Ok(Some(hive_store::StatusChanged {
            previous: TaskStatus::Failed,
            task,
            cancelled_dependents: Vec::new(),
            plan_transition: None,
        }))
    });
    let store: Arc<dyn Store> = Arc::new(m);
    let config = crate::OpsConfig {
        retry_batch: 2,
        ..Default::default()
    };
    let o = Ops::with_config(store, config);
    let filter = hive_store::TaskFilter {
        status: Some(TaskStatus::Failed),
        limit: Some(3),
        ..Default::default()
    };
    let report = o.retry_tasks(&filter).await.unwrap();
    assert_eq!((report.retried, report.refused), (2, 1), "{report:?}");
    assert_eq!(retried.lock().unwrap().len(), 2);
}

/// Counting finished tasks reads the whole history: `queue_stats` reuses a count for 50
/// times as long as it took (here 20 ms: a second), so a burst of scrapes counts once, and
/// counts again every call when the maximum age is zero. The unfinished ones are read
/// every call, and both come back merged in type and status order.
#[tokio::test]
async fn finished_counts_are_reused_for_fifty_times_their_cost() {
    use hive_store::{QueueStats, TypeStatusCount};
    let count = |ty: &str, status: TaskStatus, count: u64| TypeStatusCount {
        task_type: ty.into(),
        status,
        count,
    };
    let store = |finished_reads: usize| {
        let mut m = MockStore::new();
        let queued = vec![count("b", TaskStatus::Queued, 2)];
        m.expect_queue_stats().times(2).returning(move |_| {
            Ok(QueueStats {
                counts: queued.clone(),
                ..QueueStats::default()
            })
        });
        m.expect_count_finished_tasks()
            .times(finished_reads)
            .returning(move || {
                std::thread::sleep(Duration::from_millis(20));
                Ok(vec![
                    count("a", TaskStatus::Completed, 7),
                    count("b", TaskStatus::Failed, 1),
                ])
            });
        let store: Arc<dyn Store> = Arc::new(m);
        store
    };
    let o = Ops::new(store(1));
    for _ in 0..2 {
        let stats = o.queue_stats(Some(chrono::Utc::now())).await.unwrap();
        let got: Vec<_> = (stats.counts.iter())
            .map(|c| (c.task_type.as_str(), c.status, c.count))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", TaskStatus::Completed, 7),
                ("b", TaskStatus::Failed, 1),
                ("b", TaskStatus::Queued, 2)
            ]
        );
    }
    let config = crate::OpsConfig {
        finished_counts_max_age: Duration::ZERO,
        ..Default::default()
    };
    let o = Ops::with_config(store(2), config);
    for _ in 0..2 {
        o.queue_stats(Some(chrono::Utc::now())).await.unwrap();
    }
}

/// The overview's task counts are the unfinished tasks read now and the finished ones as
/// `queue_stats` reuses them: never `Store::count_tasks(None)`, which reads the whole
/// history.
#[tokio::test]
async fn the_overviews_task_counts_reuse_the_finished_count() {
    use hive_store::TypeStatusCount;
    let count = |ty: &str, status: TaskStatus, count: u64| TypeStatusCount {
        task_type: ty.into(),
        status,
        count,
    };
    let mut m = MockStore::new();
    m.expect_count_unfinished_tasks()
        .times(2)
        .returning(move || {
            Ok(vec![
                count("a", TaskStatus::Queued, 2),
                count("b", TaskStatus::Queued, 3),
            ])
        });
    m.expect_count_finished_tasks().times(1).returning(move || {
        std::thread::sleep(Duration::from_millis(20));
        Ok(vec![
            count("a", TaskStatus::Completed, 7),
            count("b", TaskStatus::Completed, 1),
        ])
    });
    m.expect_count_tasks().never();
    let o = Ops::new(Arc::new(m) as Arc<dyn Store>);
    for _ in 0..2 {
        let counts = o.status_counts().await.unwrap();
        assert_eq!(
            counts,
            [(TaskStatus::Queued, 5), (TaskStatus::Completed, 8)].into()
        );
    }
}

/// Finished counts kept for reuse are dropped when this process changes them (a prune
/// here): the next overview counts again instead of showing what is gone.
#[tokio::test]
async fn finished_counts_are_read_again_after_a_prune() {
    let mut m = MockStore::new();
    m.expect_count_unfinished_tasks()
        .returning(|| Ok(Vec::new()));
    m.expect_count_finished_tasks().times(2).returning(|| {
        // Reused for 50 times this: a second, far beyond the test.
        std::thread::sleep(Duration::from_millis(20));
        Ok(Vec::new())
    });
    m.expect_prune_tasks().times(1).returning(|_| Ok(0));
    let o = ops(m);
    o.status_counts().await.unwrap();
    o.prune_tasks(Duration::from_secs(60), &[]).await.unwrap();
    o.status_counts().await.unwrap();
}

/// A wait outlives a database blip (a restart, a failover): a read failing on a transient
/// fault is tried again until the record answers; past the deadline the fault is the
/// answer; a fault that is not transient ends the wait at once.
#[tokio::test]
async fn a_wait_reads_again_through_a_transient_fault() {
    let id = TaskId::new();
    let done = {
        let mut t = hive_models::Task::from_new(id, NewTask::new("t", "x"), chrono::Utc::now());
        t.status = TaskStatus::Completed;
        t
    };
    let mut m = MockStore::new();
    m.expect_subscribe().returning(|| Err(unavailable()));
    let mut reads = 0;
    m.expect_get_task().returning(move |_| {
        reads += 1;
        if reads <= 3 {
            Err(unavailable())
        } else {
            Ok(Some(done.clone()))
        }
    });
    let got = ops(m).wait_for_task(id, None).await.unwrap();
    assert_eq!(got.status, TaskStatus::Completed);

    let mut m = MockStore::new();
    m.expect_subscribe().returning(|| Err(unavailable()));
    m.expect_get_task().returning(|_| Err(unavailable()));
    let e = ops(m)
        .wait_for_task(id, Some(Duration::from_millis(700)))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");

    let mut m = MockStore::new();
    m.expect_subscribe().returning(|| Err(unavailable()));
    m.expect_get_task().times(1).returning(|_| {
        Err(hive_store::Error::Corrupt {
            table: "tasks",
            reason: "bad status".into(),
        })
    });
    let e = ops(m).wait_for_task(id, None).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
}
