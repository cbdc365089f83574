//! Behaviour of every operation, run against memory, SQLite and (with
//! `HIVE_TEST_POSTGRES_URL`) Postgres.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, PlanStatus, RetryPolicy, RunStatus, SubTask, TaskStatus};
use hive_ops::{Error, Event, EventOrigin, Ops, OpsConfig};
use hive_store::testing::fixtures::{node, plan, tasks, worker};
use hive_store::{Finished, Store};
use serde_json::json;

type O = Ops<dyn Store>;

fn ops(store: Arc<dyn Store>) -> O {
    let config = OpsConfig {
        retry: RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .without_jitter(),
        max_payload_bytes: 1024,
        prune_batch: 3,
        retry_batch: 3,
        ..OpsConfig::default()
    };
    Ops::with_config(store, config)
}

/// Claims the next task as worker `w` and completes it.
async fn claim_and_complete(o: &O) -> hive_ops::Claimed {
    let c = claim(o, "w", LEASE).await;
    o.complete_task(c.run.id, None).await.unwrap();
    c
}

/// Claims the next task (there must be one) as `worker_name`.
async fn claim(o: &O, worker_name: &str, lease: Duration) -> hive_ops::Claimed {
    let claimed = o.claim_next_task(&worker(worker_name), &[], lease).await;
    claimed.unwrap().expect("a claimable task")
}

const LEASE: Duration = Duration::from_secs(30);

hive_store::per_backend!(hive_store::testing::TestStore::run, ops =>
    a_retried_plan_cancelled_before_it_started_runs,
    create_task_rejects_bad_input,
    create_tasks_is_all_or_nothing,
    update_task_status_semantics,
    queued_tasks_in_order,
    delete_and_prune,
    retry_one_task_or_every_match,
    a_bulk_retry_reads_past_the_tasks_it_refuses,
    a_bulk_retry_counts_a_task_behind_a_dead_dependency_as_refused,
    a_requeue_of_failures_passes_over_failed_plans,
    worker_lifecycle,
    plan_validation_names_ids,
    plan_operations,
    diamond_plan_runs_in_order,
    large_plan_drains,
    retries_with_backoff,
    reaper_takes_back_expired_lease,
    stale_completion_is_rejected,
    events_arrive_in_order,
    cached_plan_status_invalidated_by_own_changes,
    cancel_task_cancels_dependents,
    type_retry_defaults_fill_what_a_task_leaves_unset,
    schedules_catch_up_within_their_bound_and_pause,
    waits_end_when_the_work_finishes_or_time_runs_out,
    json_nested_too_deep_to_read_back_is_never_stored,
    silent_workers_are_pruned_and_live_ones_kept,
);

/// `prune_workers` removes the workers silent for longer than asked (and than the
/// heartbeat timeout) and keeps those that beat since. It never gives a run back: a worker
/// holding one (its lease holding, or lapsed and not yet reaped) is kept until the reaper
/// takes the run back, counting the attempt; and one silent that claims a task (a claim
/// does not touch the worker's row: it came back from a partition before its next beat)
/// is kept with its claim.
async fn silent_workers_are_pruned_and_live_ones_kept(o: O) {
    let config = OpsConfig {
        heartbeat_timeout: Duration::from_millis(200),
        ..o.config().clone()
    };
    let o = Ops::with_config(o.store().clone(), config);
    for w in ["dead", "alive", "back"] {
        o.register_worker(w, "r", vec![]).await.unwrap();
    }
    o.create_task(NewTask::new("held", "x")).await.unwrap();
    let held = claim(&o, "dead", Duration::from_millis(400)).await;
    assert!(
        o.prune_workers(Duration::ZERO).await.unwrap().is_empty(),
        "none silent yet"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    o.update_worker_heartbeat("alive", None).await.unwrap();
    o.create_task(NewTask::new("late", "x")).await.unwrap();
    let late = claim(&o, "back", LEASE).await;
    assert!(
        o.prune_workers(Duration::ZERO).await.unwrap().is_empty(),
        "silent, but holding runs: maybe cut off, not dead"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    o.update_worker_heartbeat("alive", None).await.unwrap();
    assert!(
        o.prune_workers(Duration::ZERO).await.unwrap().is_empty(),
        "a lapsed lease is the reaper's to take back, not the pruner's"
    );
    assert_eq!(
        o.reap().await.unwrap().requeued,
        [(held.task.id, held.run.id)]
    );
    o.update_worker_heartbeat("alive", None).await.unwrap();
    let pruned = o.prune_workers(Duration::ZERO).await.unwrap();
    assert_eq!(pruned, [worker("dead")]);
    assert!(o.get_worker("dead").await.unwrap().is_none());
    assert!(o.get_worker("alive").await.unwrap().is_some());
    assert!(o.get_worker("back").await.unwrap().is_some());
    let t = o.get_task(held.task.id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Queued, "its task back in the queue");
    assert_eq!(t.attempts, 1, "the reaper counted the attempt");
    let t = o.get_task(late.task.id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::InProgress, "the late claim stands");
    assert!(
        o.prune_workers(Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty(),
        "none silent for an hour"
    );
}

/// `[[[…0…]]]`, `levels` arrays deep.
fn nested(levels: usize) -> serde_json::Value {
    (0..levels).fold(json!(0), |inner, _| json!([inner]))
}

/// A payload or an output nested deeper than any backend reads back is refused where it
/// comes in: stored, it would fail every read of its row (its claim, its dependents').
async fn json_nested_too_deep_to_read_back_is_never_stored(o: O) {
    let deep = nested(hive_models::MAX_JSON_DEPTH + 1);
    let e = o
        .create_task(NewTask::new("t", "x").payload(deep.clone()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("levels deep"), "{e}");
    assert_eq!(count_all(&o).await, 0, "nothing stored");
    o.create_task(NewTask::new("ok", "x").payload(nested(hive_models::MAX_JSON_DEPTH)))
        .await
        .unwrap();
    let c = claim(&o, "w", LEASE).await;
    let e = o
        .complete_task(c.run.id, Some(deep.clone()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("levels deep"), "{e}");
    let reports = o
        .finish_runs(vec![hive_store::RunOutcome {
            run_id: c.run.id,
            outcome: hive_store::Outcome::success(Some(deep)),
            output_log: None,
            waited: Duration::ZERO,
        }])
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    let task = o.get_task(c.task.id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed, "failed, saying why");
    assert!(
        task.last_error
            .as_deref()
            .unwrap_or("")
            .contains("levels deep"),
        "{task:?}"
    );
    assert_eq!(count_all(&o).await, 1, "and every row still reads back");
}

/// `hive plan retry` on a plan cancelled before its tasks were created runs it: its tasks
/// are created then, and it completes as a new plan would.
async fn a_retried_plan_cancelled_before_it_started_runs(o: O) {
    let pid = o
        .create_execution_plan(plan(vec![node("a", &[]), node("b", &["a"])]))
        .await
        .unwrap();
    assert!(o.cancel_plan(pid).await.unwrap());
    assert_eq!(o.retry_plan(pid).await.unwrap(), vec![]);
    for _ in 0..2 {
        claim_and_complete(&o).await;
    }
    let summary = o.plan_summary(pid).await.unwrap().unwrap();
    assert_eq!(summary.plan.status, PlanStatus::Completed);
}

async fn count_all(o: &O) -> u64 {
    o.count_tasks(None).await.unwrap().values().sum()
}

async fn create_task_rejects_bad_input(o: O) {
    let e = o.create_task(NewTask::new("", "x")).await.unwrap_err();
    assert_eq!(e.to_string(), "invalid `title`: must not be empty");
    let e = o.create_task(NewTask::new("t", "")).await.unwrap_err();
    assert!(e.to_string().contains("`task_type`"), "{e}");
    let big = NewTask::new("t", "x").payload(json!("y".repeat(2000)));
    let e = o.create_task(big).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid(hive_models::Error::PayloadTooLarge { limit: 1024, .. })
        ),
        "{e}"
    );
    assert_eq!(count_all(&o).await, 0, "bad input changes nothing");
    let id = o
        .create_task(NewTask::new("ok", "x").idempotency_key("once"))
        .await
        .unwrap();
    assert_eq!(
        o.create_task(NewTask::new("ok again", "x").idempotency_key("once"))
            .await
            .unwrap(),
        id
    );
    assert_eq!(count_all(&o).await, 1);
    // A plan submitted twice under one key: created once, reported as such.
    let plan = || {
        hive_models::NewPlan::new("p", vec![hive_models::SubTask::new("a", "A", "x")])
            .idempotency_key("plan-once")
    };
    let first = o.submit_plan_reporting(plan()).await.unwrap();
    assert!(first.created(), "{first:?}");
    let again = o.submit_plan_reporting(plan()).await.unwrap();
    assert_eq!((again.id, again.created()), (first.id, false));
    assert_eq!(count_all(&o).await, 2);
}

async fn create_tasks_is_all_or_nothing(o: O) {
    let batch = vec![
        NewTask::new("a", "x"),
        NewTask::new("", "x"),
        NewTask::new("c", "x"),
    ];
    let e = o.create_tasks(batch).await.unwrap_err();
    assert!(e.to_string().contains("tasks[1]"), "{e}");
    assert_eq!(count_all(&o).await, 0);
    let ids = o.create_tasks(tasks("t", "x", 1500)).await.unwrap();
    assert_eq!(ids.len(), 1500);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1500);
    assert_eq!(count_all(&o).await, 1500);
}

async fn update_task_status_semantics(o: O) {
    let id = o.create_task(NewTask::new("t", "x")).await.unwrap();
    assert!(
        !o.update_task_status(hive_models::TaskId::new(), TaskStatus::Completed, None)
            .await
            .unwrap()
    );
    assert!(
        o.update_task_status(id, TaskStatus::InProgress, Some(json!({"by": "ops"})))
            .await
            .unwrap()
    );
    assert!(
        o.update_task_status(id, TaskStatus::Completed, None)
            .await
            .unwrap()
    );
    let e = o
        .update_task_status(id, TaskStatus::Queued, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid(hive_models::Error::IllegalTransition { .. })
        ),
        "{e}"
    );
    let t = o.get_task(id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.metadata["by"], "ops");
    assert!(o.requeue_task(id).await.unwrap());
    assert_eq!(
        o.get_tasks_by_status(TaskStatus::Queued)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn queued_tasks_in_order(o: O) {
    let low = o
        .create_task(NewTask::new("low", "a").priority(1))
        .await
        .unwrap();
    let high = o
        .create_task(NewTask::new("high", "b").priority(9))
        .await
        .unwrap();
    let low2 = o
        .create_task(NewTask::new("low2", "a").priority(1))
        .await
        .unwrap();
    let ids = |v: Vec<hive_models::Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(o.get_queued_tasks(10, None).await.unwrap()),
        vec![high, low, low2]
    );
    assert_eq!(
        ids(o.get_queued_tasks(1, Some("a")).await.unwrap()),
        vec![low]
    );
    assert_eq!(
        ids(o.get_queued_tasks(10, Some("zzz")).await.unwrap()),
        vec![]
    );
    // Without a limit, the original's 10; a delayed task is queued but not ready.
    let later = NewTask::new("later", "a").run_at(chrono::Utc::now() + chrono::Duration::hours(1));
    let delayed = o.create_task(later).await.unwrap();
    o.create_tasks(tasks("more", "c", 10)).await.unwrap();
    let queued = o.get_queued_tasks(None, None).await.unwrap();
    assert_eq!(queued.len(), hive_ops::DEFAULT_QUEUED_LIMIT as usize);
    assert_eq!(o.get_queued_tasks(100, Some("a")).await.unwrap().len(), 3);
    let ready = ids(o.get_ready_tasks(100, Some("a")).await.unwrap());
    assert_eq!(ready, vec![low, low2]);
    assert!(!ready.contains(&delayed));
}

async fn delete_and_prune(o: O) {
    let id = o.create_task(NewTask::new("t", "x")).await.unwrap();
    let c = claim(&o, "w", LEASE).await;
    // Not while a worker holds it; once its run ended, it goes with its runs.
    assert!(o.delete_task(id).await.is_err());
    o.complete_task(c.run.id, None).await.unwrap();
    assert!(o.delete_task(id).await.unwrap());
    assert!(o.get_run(c.run.id).await.unwrap().is_none());
    assert!(!o.delete_task(id).await.unwrap());
    o.create_tasks(tasks("t", "x", 7)).await.unwrap();
    let claims = o.claim_tasks(&worker("w"), &[], 10, LEASE).await.unwrap();
    for c in &claims {
        o.complete_task(c.run.id, None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = o
        .prune_tasks(Duration::ZERO, &[TaskStatus::Queued])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)));
    // Seven tasks in batches of three: the loop goes round until a short batch.
    assert_eq!(
        o.prune_tasks(Duration::from_millis(1), &[TaskStatus::Completed])
            .await
            .unwrap(),
        7
    );
    assert_eq!(count_all(&o).await, 0);
}

/// Creates `n` tasks of `task_type` that may not retry, claims them and fails them all.
async fn failed_tasks(o: &O, task_type: &str, n: usize) -> Vec<hive_models::TaskId> {
    let new = (0..n)
        .map(|i| NewTask::new(format!("{task_type}{i}"), task_type).max_retries(0))
        .collect();
    let ids = o.create_tasks(new).await.unwrap();
    fail_every(o, task_type, n).await;
    ids
}

/// Claims the `n` ready tasks of `task_type` and fails them.
async fn fail_every(o: &O, task_type: &str, n: usize) {
    let types = [task_type.to_owned()];
    let claims = o
        .claim_tasks(&worker("w"), &types, 100, LEASE)
        .await
        .unwrap();
    assert_eq!(claims.len(), n);
    for c in &claims {
        o.fail_task(c.run.id, "boom").await.unwrap();
    }
}

/// Submits a plan of `n` subtasks of `task_type` that may not retry, claims them and fails
/// them all: the plan fails.
async fn failed_plan(o: &O, task_type: &str, n: usize) -> hive_models::PlanId {
    let subtasks = (0..n)
        .map(|i| {
            let mut st = node(&format!("s{i}"), &[]);
            st.task_type = task_type.into();
            st.max_retries = Some(0);
            st
        })
        .collect();
    let plan_id = o.submit_plan(plan(subtasks)).await.unwrap();
    fail_every(o, task_type, n).await;
    assert_eq!(
        o.get_execution_plan_status(plan_id).await.unwrap(),
        Some(PlanStatus::Failed)
    );
    plan_id
}

/// Plan `a → b` and `c`: `a` cancelled alone (with `b`) while `c` runs on. A bulk retry
/// of the cancelled `b` alone refuses it (it would wait for `a` for good) and says so,
/// rather than calling it changed meanwhile.
async fn a_bulk_retry_counts_a_task_behind_a_dead_dependency_as_refused(o: O) {
    let mut b = node("b", &["a"]);
    b.task_type = "after".into();
    o.submit_plan(plan(vec![node("a", &[]), b, node("c", &[])]))
        .await
        .unwrap();
    let a = o
        .list_tasks(&hive_store::TaskFilter::default())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.plan_subtask_id.as_deref() == Some("a"))
        .unwrap();
    assert!(o.cancel_task(a.id, Some("not now")).await.unwrap());
    let report = o
        .retry_tasks(&hive_store::TaskFilter {
            status: Some(TaskStatus::Cancelled),
            task_type: Some("after".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (report.retried, report.refused, report.skipped),
        (0, 1, 0),
        "{report:?}"
    );
}

/// Subtasks of a failed plan, which a bulk retry leaves to their plan, keep matching its
/// filter: pages of three that start with four of them still reach the tasks after them,
/// and each is counted once.
async fn a_bulk_retry_reads_past_the_tasks_it_refuses(o: O) {
    failed_plan(&o, "p", 4).await;
    let alone = failed_tasks(&o, "p", 2).await;
    let report = o
        .retry_tasks(&hive_store::TaskFilter {
            status: Some(TaskStatus::Failed),
            task_type: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (report.retried, report.in_finished_plans, report.skipped),
        (2, 4, 0)
    );
    for id in alone {
        assert_eq!(
            o.get_task(id).await.unwrap().unwrap().status,
            TaskStatus::Queued
        );
    }
}

/// The dashboard's "retry every failure" requeues failed tasks newest first: the failed
/// subtasks of a failed plan, newer than the tasks failed alone, are passed over (their
/// plan is retried whole), and those tasks are still reached.
async fn a_requeue_of_failures_passes_over_failed_plans(o: O) {
    let alone = failed_tasks(&o, "p", 2).await;
    let plan_id = failed_plan(&o, "p", 4).await;
    let only_p = hive_store::TaskPageParams {
        task_type: Some("p".into()),
        ..Default::default()
    };
    let requeued: HashSet<_> = o
        .requeue_failed(&only_p, 10)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(requeued, alone.into_iter().collect::<HashSet<_>>());
    assert_eq!(
        o.get_execution_plan_status(plan_id).await.unwrap(),
        Some(PlanStatus::Failed)
    );
}

async fn retry_one_task_or_every_match(o: O) {
    let early = failed_tasks(&o, "x", 7).await;
    let moment = o.store().now().await.unwrap();
    while o.store().now().await.unwrap() <= moment {
        tokio::task::yield_now().await;
    }
    let late = failed_tasks(&o, "x", 2).await;
    let others = failed_tasks(&o, "y", 2).await;
    let failed_x = hive_store::TaskFilter {
        status: Some(TaskStatus::Failed),
        task_type: Some("x".into()),
        ..Default::default()
    };
    // As the tasks stood at `moment`: the seven early ones, in pages of three.
    let report = o
        .retry_tasks(&hive_store::TaskFilter {
            updated_not_after: Some(moment),
            ..failed_x.clone()
        })
        .await
        .unwrap();
    assert_eq!((report.retried, report.skipped), (7, 0));
    for id in &early {
        assert_eq!(
            o.get_task(*id).await.unwrap().unwrap().status,
            TaskStatus::Queued
        );
    }
    // A limit caps the total; the rest stay failed.
    let capped = hive_store::TaskFilter {
        limit: Some(1),
        ..failed_x
    };
    assert_eq!(o.retry_tasks(&capped).await.unwrap().retried, 1);
    assert_eq!(o.retry_tasks(&capped).await.unwrap().retried, 1);
    assert_eq!(o.retry_tasks(&capped).await.unwrap().retried, 0);
    for id in late {
        assert_eq!(
            o.get_task(id).await.unwrap().unwrap().status,
            TaskStatus::Queued
        );
    }
    // One task: moved once; a queued or unknown one is refused or reported missing.
    assert!(o.retry_task(others[0]).await.unwrap());
    let again = o.retry_task(others[0]).await.unwrap_err();
    assert!(
        again
            .to_string()
            .contains("`queued` tasks cannot be retried"),
        "{again}"
    );
    assert!(!o.retry_task(hive_models::TaskId::new()).await.unwrap());
    assert_eq!(
        o.get_task(others[1]).await.unwrap().unwrap().status,
        TaskStatus::Failed
    );
    for status in [None, Some(TaskStatus::Queued), Some(TaskStatus::InProgress)] {
        let filter = hive_store::TaskFilter {
            status,
            ..Default::default()
        };
        let e = o.retry_tasks(&filter).await.unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{status:?}: {e}");
    }
}

async fn worker_lifecycle(o: O) {
    assert!(
        o.register_worker("deployer-1", "deployer", vec!["k8s".into()])
            .await
            .unwrap()
    );
    assert!(
        o.register_worker("planner-1", "planner", vec![])
            .await
            .unwrap()
    );
    assert!(
        o.register_worker("deployer-1", "deployer", vec!["k8s".into(), "helm".into()])
            .await
            .unwrap()
    );
    assert_eq!(
        o.get_worker("deployer-1")
            .await
            .unwrap()
            .unwrap()
            .capabilities,
        vec!["k8s", "helm"]
    );
    assert!(o.get_worker("nobody").await.unwrap().is_none());
    assert!(matches!(o.get_worker("").await, Err(Error::Invalid(_))));
    assert!(matches!(
        o.register_worker("x", " ", vec![]).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(o.get_active_workers(None).await.unwrap().len(), 2);
    assert_eq!(
        o.get_active_workers(Some("deployer")).await.unwrap().len(),
        1
    );
    assert!(
        o.update_worker_heartbeat("planner-1", Some(hive_models::WorkerStatus::Offline))
            .await
            .unwrap()
    );
    assert!(!o.update_worker_heartbeat("ghost", None).await.unwrap());
    let error = hive_models::WorkerStatus::Error;
    assert!(
        o.set_worker_status("deployer-1", error, Some("disk full"))
            .await
            .unwrap()
    );
    let w = o.get_worker("deployer-1").await.unwrap().unwrap();
    assert_eq!(
        (w.status, w.status_reason.as_deref()),
        (error, Some("disk full"))
    );
    assert!(!o.set_worker_status("ghost", error, None).await.unwrap());
    let active = hive_models::WorkerStatus::Active;
    assert!(
        o.set_worker_status("deployer-1", active, None)
            .await
            .unwrap()
    );
    assert_eq!(o.get_active_workers(None).await.unwrap().len(), 1);
    let t = o.create_task(NewTask::new("t", "x")).await.unwrap();
    claim(&o, "deployer-1", LEASE).await;
    assert_eq!(o.remove_worker("deployer-1").await.unwrap(), Some(vec![t]));
    assert!(!o.unregister_worker("deployer-1").await.unwrap());
    let task = o.get_task(t).await.unwrap().unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Queued,
        "in-flight task back in the queue"
    );
    assert_eq!(task.attempts, 0);
}

async fn plan_validation_names_ids(o: O) {
    let cases: Vec<(Vec<SubTask>, &str)> = vec![
        (
            vec![node("a", &["b"]), node("b", &["a"])],
            "dependency cycle: ",
        ),
        (vec![node("a", &["a"])], "`a` depends on itself"),
        (
            vec![node("a", &[]), node("a", &[])],
            "duplicate subtask id `a`",
        ),
        (vec![node("a", &["nope"])], "unknown subtask `nope`"),
        (vec![], "at least one subtask"),
    ];
    for (subtasks, want) in cases {
        let e = o.create_execution_plan(plan(subtasks)).await.unwrap_err();
        assert!(e.to_string().contains(want), "{e} should contain {want}");
    }
    let ghost = hive_models::TaskId::new();
    let orphan = plan(vec![node("a", &[])]).parent_task_id(ghost);
    let e = o.submit_plan(orphan).await.unwrap_err();
    assert_eq!(e.to_string(), format!("parent task `{ghost}` not found"));
    assert!(
        o.list_plans(None, None).await.unwrap().is_empty(),
        "nothing stored"
    );
}

async fn plan_operations(o: O) {
    let pid = o
        .create_execution_plan(plan(vec![node("a", &[]), node("b", &["a"])]))
        .await
        .unwrap();
    assert_eq!(
        o.get_execution_plan_status(pid).await.unwrap(),
        Some(PlanStatus::Pending)
    );
    assert!(
        o.get_next_planned_subtask(pid).await.unwrap().is_none(),
        "not materialized yet"
    );
    assert_eq!(o.create_planned_subtasks_from_plan(pid).await.unwrap(), 2);
    assert_eq!(o.create_planned_subtasks_from_plan(pid).await.unwrap(), 0);
    assert!(matches!(
        o.create_planned_subtasks_from_plan(hive_models::PlanId::new())
            .await,
        Err(Error::NotFound { .. })
    ));
    let next = o.get_next_planned_subtask(pid).await.unwrap().unwrap();
    assert_eq!(next.plan_subtask_id.as_deref(), Some("a"));
    assert!(o.check_subtask_dependencies(next.id).await.unwrap());
    let tasks = o
        .list_tasks(&hive_store::TaskFilter::in_plan(pid))
        .await
        .unwrap();
    let b = tasks
        .iter()
        .find(|t| t.plan_subtask_id.as_deref() == Some("b"))
        .unwrap();
    assert!(!o.check_subtask_dependencies(b.id).await.unwrap());
    assert!(matches!(
        o.check_subtask_dependencies(hive_models::TaskId::new())
            .await,
        Err(Error::NotFound { .. })
    ));
    let batch = o
        .check_subtask_dependencies_batch(&[next.id, b.id])
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert!(batch[&next.id] && !batch[&b.id]);
    assert!(o.mark_plan_execution_started(pid).await.unwrap());
    assert!(!o.mark_plan_execution_started(pid).await.unwrap());
    assert!(
        !o.mark_plan_execution_started(hive_models::PlanId::new())
            .await
            .unwrap()
    );
    let summary = o.plan_summary(pid).await.unwrap().unwrap();
    assert_eq!(summary.task_counts[&TaskStatus::Queued], 2);
    assert!(matches!(
        o.retry_plan(pid).await,
        Err(Error::Invalid(e)) if e.to_string().contains("`in_progress` plans cannot be retried")
    ));
    assert!(matches!(
        o.retry_plan(hive_models::PlanId::new()).await,
        Err(Error::NotFound { entity: "plan", .. })
    ));
    assert!(o.cancel_plan(pid).await.unwrap());
    assert!(!o.cancel_plan(pid).await.unwrap());
    let requeued = o.retry_plan(pid).await.unwrap();
    assert_eq!(
        requeued.len(),
        2,
        "both cancelled subtasks are queued again"
    );
    assert_eq!(
        o.get_execution_plan_status(pid).await.unwrap(),
        Some(PlanStatus::InProgress)
    );
    assert!(o.cancel_plan(pid).await.unwrap());
    assert_eq!(
        o.get_execution_plan_status(pid).await.unwrap(),
        Some(PlanStatus::Cancelled)
    );
    assert_eq!(
        o.count_tasks(Some(pid)).await.unwrap()[&TaskStatus::Cancelled],
        2
    );
}

/// Claims and completes everything claimable, in rounds, recording the order of starts.
async fn drain(o: &O, batch: u32) -> Vec<hive_models::Task> {
    let mut started = Vec::new();
    loop {
        let claims = o
            .claim_tasks(&worker("w"), &[], batch, LEASE)
            .await
            .unwrap();
        if claims.is_empty() {
            return started;
        }
        let outcomes = claims
            .iter()
            .map(|c| hive_store::RunOutcome {
                run_id: c.run.id,
                outcome: hive_store::Outcome::success(None),
                output_log: None,
                waited: std::time::Duration::ZERO,
            })
            .collect();
        for r in o.finish_runs(outcomes).await.unwrap() {
            assert_eq!(r.finished, Finished::Completed);
        }
        started.extend(claims.into_iter().map(|c| c.task));
    }
}

async fn diamond_plan_runs_in_order(o: O) {
    let pid = o
        .submit_plan(plan(vec![
            node("a", &[]),
            node("b", &["a"]),
            node("c", &["a"]),
            node("d", &["b", "c"]),
        ]))
        .await
        .unwrap();
    let order: Vec<String> = drain(&o, 10)
        .await
        .into_iter()
        .map(|t| t.plan_subtask_id.unwrap())
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order[0], "a");
    assert_eq!(order[3], "d");
    assert_eq!(
        o.get_execution_plan_status(pid).await.unwrap(),
        Some(PlanStatus::Completed)
    );
}

async fn large_plan_drains(o: O) {
    // 100 independent chains of 100: 10,000 subtasks.
    let mut subtasks = Vec::with_capacity(10_000);
    for c in 0..100 {
        for i in 0..100 {
            let deps: Vec<String> = if i == 0 {
                vec![]
            } else {
                vec![format!("c{c}-{}", i - 1)]
            };
            subtasks.push(SubTask::new(format!("c{c}-{i}"), "step", "test").depends_on(deps));
        }
    }
    let pid = o.submit_plan(plan(subtasks)).await.unwrap();
    let started = drain(&o, 100).await;
    assert_eq!(started.len(), 10_000);
    let mut seen = HashSet::new();
    for t in &started {
        let id = t.plan_subtask_id.clone().unwrap();
        let (chain, i) = id.split_once('-').unwrap();
        let i: u32 = i.parse().unwrap();
        if i > 0 {
            assert!(
                seen.contains(&format!("{chain}-{}", i - 1)),
                "{id} started before its parent"
            );
        }
        seen.insert(id);
    }
    let p = o.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(p.status, PlanStatus::Completed);
    assert_eq!(p.completed_subtasks, 10_000);
}

/// A type's retry defaults reach its new tasks and plan subtasks that set none; what a
/// task sets itself wins; other types keep the defaults.
async fn type_retry_defaults_fill_what_a_task_leaves_unset(o: O) {
    let typed = RetryPolicy::exponential(Duration::from_secs(5), Duration::from_secs(50));
    let own = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(2));
    let mut config = o.config().clone();
    config.retry_by_type.insert(
        "email".into(),
        hive_models::TypeRetry {
            max_retries: Some(9),
            policy: Some(typed),
        },
    );
    let o = Ops::with_config(o.store().clone(), config);
    let ids = o
        .create_tasks(vec![
            NewTask::new("plain", "email"),
            NewTask::new("own", "email")
                .max_retries(1)
                .retry_policy(own),
            NewTask::new("other", "sms"),
        ])
        .await
        .unwrap();
    let t = |i: usize| {
        let o = &o;
        let id = ids[i];
        async move { o.get_task(id).await.unwrap().unwrap() }
    };
    let (plain, mine, other) = (t(0).await, t(1).await, t(2).await);
    assert_eq!((plain.max_retries, plain.retry_policy), (9, Some(typed)));
    assert_eq!((mine.max_retries, mine.retry_policy), (1, Some(own)));
    assert_eq!(
        (other.max_retries, other.retry_policy),
        (hive_models::DEFAULT_MAX_RETRIES, None)
    );
    assert_eq!(o.config().retry_for("email"), typed);
    assert_eq!(o.config().retry_for("sms"), o.config().retry);
    let pid = o
        .create_execution_plan(plan(vec![SubTask::new("a", "A", "email")]))
        .await
        .unwrap();
    o.create_planned_subtasks_from_plan(pid).await.unwrap();
    let sub = o
        .list_tasks(&hive_store::TaskFilter::in_plan(pid))
        .await
        .unwrap()
        .remove(0);
    assert_eq!((sub.max_retries, sub.retry_policy), (9, Some(typed)));
}

async fn retries_with_backoff(o: O) {
    let id = o
        .create_task(NewTask::new("flaky", "x").max_retries(2))
        .await
        .unwrap();
    let mut claimed_at = Vec::new();
    loop {
        let Some(c) = o.claim_next_task(&worker("w"), &[], LEASE).await.unwrap() else {
            if o.get_task(id).await.unwrap().unwrap().status == TaskStatus::Failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        claimed_at.push(std::time::Instant::now());
        let f = o.fail_task(c.run.id, "always fails").await.unwrap();
        assert!(matches!(f, Finished::Retrying { .. } | Finished::Failed));
    }
    assert_eq!(claimed_at.len(), 3, "max_retries + 1 runs");
    // Backoff 100 ms then 200 ms (minus polling slack).
    assert!(claimed_at[1] - claimed_at[0] >= Duration::from_millis(90));
    assert!(claimed_at[2] - claimed_at[1] >= Duration::from_millis(190));
    let runs = o.list_runs(id).await.unwrap();
    assert_eq!(runs.len(), 3);
    assert!(
        runs.iter().all(|r| r.status == RunStatus::Failure
            && r.error_message.as_deref() == Some("always fails"))
    );
}

async fn reaper_takes_back_expired_lease(o: O) {
    let id = o.create_task(NewTask::new("t", "x")).await.unwrap();
    let c = claim(&o, "dead", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let report = o.reap().await.unwrap();
    assert_eq!(report.requeued, vec![(id, c.run.id)]);
    assert_eq!(
        o.get_run(c.run.id).await.unwrap().unwrap().status,
        RunStatus::Timeout
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let again = claim(&o, "alive", LEASE).await;
    assert_eq!(again.task.id, id);
    assert_eq!(again.run.run_number, 2);
    o.complete_task(again.run.id, Some(json!(1))).await.unwrap();
    assert_eq!(
        o.get_task(id).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
}

async fn stale_completion_is_rejected(o: O) {
    let id = o.create_task(NewTask::new("t", "x")).await.unwrap();
    let first = claim(&o, "slow", Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    o.reap().await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let second = claim(&o, "fast", LEASE).await;
    o.complete_task(second.run.id, Some(json!("second")))
        .await
        .unwrap();
    let e = o
        .complete_task(first.run.id, Some(json!("first")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::StaleRun { run_id } if run_id == first.run.id),
        "{e}"
    );
    assert!(matches!(
        o.extend_lease(first.run.id, LEASE).await,
        Err(Error::StaleRun { .. })
    ));
    assert!(matches!(
        o.fail_task(first.run.id, "late").await,
        Err(Error::StaleRun { .. })
    ));
    let t = o.get_task(id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!("second")));
}

async fn events_arrive_in_order(o: O) {
    let mut sub = o.subscribe().await.unwrap();
    let pid = o.submit_plan(plan(vec![node("a", &[])])).await.unwrap();
    let c = claim_and_complete(&o).await;
    let task_id = c.task.id;
    let want = vec![
        Event::TaskCreated {
            task_id: None,
            count: 1,
        },
        // Claiming a plan's first subtask starts the plan.
        Event::PlanStarted { plan_id: pid },
        Event::TaskClaimed {
            task_id,
            run_id: c.run.id,
            worker_id: worker("w"),
        },
        Event::TaskCompleted {
            task_id,
            run_id: Some(c.run.id),
        },
        Event::PlanProgressed {
            plan_id: pid,
            task_id,
        },
        Event::PlanCompleted { plan_id: pid },
    ];
    let mut got = Vec::new();
    while got.len() < want.len() {
        let p = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.origin, EventOrigin::Local, "{p:?}");
        got.push(p.event);
    }
    assert_eq!(got, want);
}

async fn cached_plan_status_invalidated_by_own_changes(o: O) {
    let pid = o.submit_plan(plan(vec![node("a", &[])])).await.unwrap();
    assert_eq!(
        o.get_execution_plan_status_cached(pid).await.unwrap(),
        Some(PlanStatus::Pending)
    );
    claim_and_complete(&o).await;
    // The TTL is 5 s; only invalidation can make this fresh.
    assert_eq!(
        o.get_execution_plan_status_cached(pid).await.unwrap(),
        Some(PlanStatus::Completed)
    );
    assert_eq!(
        o.get_execution_plan_status_cached(hive_models::PlanId::new())
            .await
            .unwrap(),
        None
    );
}

async fn cancel_task_cancels_dependents(o: O) {
    let pid = o
        .submit_plan(plan(vec![
            node("a", &[]),
            node("b", &["a"]),
            node("c", &[]),
        ]))
        .await
        .unwrap();
    let a = o.get_next_planned_subtask(pid).await.unwrap().unwrap();
    assert_eq!(a.plan_subtask_id.as_deref(), Some("a"));
    assert!(o.cancel_task(a.id, Some("no longer needed")).await.unwrap());
    assert_eq!(
        o.get_task(a.id)
            .await
            .unwrap()
            .unwrap()
            .last_error
            .as_deref(),
        Some("no longer needed")
    );
    assert!(
        !o.cancel_task(hive_models::TaskId::new(), None)
            .await
            .unwrap()
    );
    let nul = o.cancel_task(a.id, Some("a\u{0}b")).await.unwrap_err();
    assert!(matches!(nul, Error::Invalid(_)), "{nul}");
    let counts = o.count_tasks(Some(pid)).await.unwrap();
    assert_eq!(counts[&TaskStatus::Cancelled], 2);
    assert_eq!(counts[&TaskStatus::Queued], 1);
    claim_and_complete(&o).await;
    assert_eq!(
        o.get_execution_plan_status(pid).await.unwrap(),
        Some(PlanStatus::Cancelled),
        "all subtasks finished, some cancelled"
    );
}

/// Another process's changes arrive as `Remote` events through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_from_other_processes() {
    let Some(ts) = hive_store::testing::postgres().await else {
        hive_store::testing::report_skip("postgres_events_from_other_processes");
        return;
    };
    let url = ts
        .url
        .clone()
        .expect("postgres test stores carry their URL");
    ts.run(|a| async move {
        let other = hive_store::connect(&url).await.unwrap();
        let (here, there) = (ops(a), ops(other));
        let mut sub = here.subscribe().await.unwrap();
        let pid = there.submit_plan(plan(vec![node("a", &[])])).await.unwrap();
        let want = Event::PlanCancelled { plan_id: pid };
        assert!(there.cancel_plan(pid).await.unwrap());
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let p = sub.recv().await.unwrap();
                if p.event == want {
                    return p;
                }
            }
        })
        .await
        .expect("the other process's plan cancellation arrives within 5 s");
        assert_eq!(got.origin, EventOrigin::Remote);
    })
    .await;
}

/// A schedule missed for a minute catches up its latest `limit` slots, once however often
/// the scheduler runs; a paused schedule fires nothing, and resumes from now.
async fn schedules_catch_up_within_their_bound_and_pause(o: O) {
    use hive_models::{Missed, NewSchedule, ScheduledTask};
    let new = NewSchedule::new("tick", "* * * * * *", ScheduledTask::new("tick", "tick"))
        .missed(Missed::CatchUp { limit: 3 });
    let s = o.add_schedule(new.clone()).await.unwrap();
    let e = o.add_schedule(new).await.unwrap_err();
    assert!(e.to_string().contains("tick"), "{e}");
    // As if no scheduler had run for a minute.
    let behind = hive_store::testing::fixtures::schedule_behind(&s, 60);
    assert!(o.store().advance_schedule(&behind).await.unwrap());
    let fired = o.fire_due_schedules().await.unwrap();
    assert_eq!(
        (fired.due, fired.slots),
        (1, 3),
        "the latest 3 of ~60 missed slots"
    );
    o.fire_due_schedules().await.unwrap();
    o.fire_due_schedules().await.unwrap();
    let filter = hive_store::TaskFilter {
        task_type: Some("tick".into()),
        ..Default::default()
    };
    let tasks = o.list_tasks(&filter).await.unwrap();
    let keys: HashSet<_> = tasks.iter().map(|t| t.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), tasks.len(), "one task per slot");
    assert!((3..=6).contains(&tasks.len()), "{} tasks", tasks.len());

    assert!(o.pause_schedule("tick").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(o.fire_due_schedules().await.unwrap().slots, 0, "paused");
    assert!(o.resume_schedule("tick").await.unwrap());
    let resumed = o.get_schedule("tick").await.unwrap().unwrap();
    assert!(resumed.enabled && resumed.next_slot > Some(resumed.done_until));
    assert!(!o.pause_schedule("ghost").await.unwrap());
    let e = o
        .add_schedule(NewSchedule::new(
            "bad",
            "* * *",
            ScheduledTask::new("t", "x"),
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`cron`"), "{e}");
    assert!(
        o.get_schedule("bad").await.unwrap().is_none(),
        "nothing written"
    );
}

/// Runs `wait` in the background, bounded so a wait that never ends fails the test.
fn waiting<T: Send + 'static>(
    wait: impl std::future::Future<Output = hive_ops::Result<T>> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the wait ended")
            .unwrap()
    })
}

async fn waits_end_when_the_work_finishes_or_time_runs_out(o: O) {
    let pid = o
        .submit_plan(plan(vec![node("a", &[]), node("b", &["a"])]))
        .await
        .unwrap();
    // Time runs out: the plan as it stands.
    let started = std::time::Instant::now();
    let header = o
        .wait_for_plan(pid, Some(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(header.status, PlanStatus::Pending);
    assert!(started.elapsed() >= Duration::from_millis(50));
    // Finished while waited for: the finished plan.
    let waiter = {
        let o = o.clone();
        waiting(async move { o.wait_for_plan(pid, None).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(drain(&o, 10).await.len(), 2);
    let header = waiter.await.unwrap();
    assert_eq!(header.status, PlanStatus::Completed);
    assert_eq!(header.completed_subtasks, 2);
    // A task is waited for through its retries, to its last outcome.
    let tid = o
        .create_task(NewTask::new("t", "x").max_retries(1))
        .await
        .unwrap();
    let waiter = {
        let o = o.clone();
        waiting(async move { o.wait_for_task(tid, None).await })
    };
    let c = claim(&o, "w", LEASE).await;
    o.fail_task(c.run.id, "once").await.unwrap();
    let retried = o
        .wait_for_task(tid, Some(Duration::from_millis(20)))
        .await
        .unwrap();
    assert_eq!(retried.status, TaskStatus::Queued, "retried, not finished");
    assert!(!waiter.is_finished());
    let again = loop {
        if let Some(c) = o.claim_next_task(&worker("w"), &[], LEASE).await.unwrap() {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    o.fail_task(again.run.id, "twice").await.unwrap();
    let task = waiter.await.unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.last_error.as_deref(), Some("twice"));
    // What does not exist is not waited for.
    let e = o
        .wait_for_plan(hive_models::PlanId::new(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { entity: "plan", .. }), "{e}");
    let e = o
        .wait_for_task(hive_models::TaskId::new(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { entity: "task", .. }), "{e}");
}

/// A client shared by runtimes in turn (a static client of several `#[tokio::test]`s):
/// the forwarder started on the first dies with it, and a subscription on the next still
/// receives the store's changes.
#[test]
fn events_reach_a_subscriber_on_a_second_runtime() {
    let store: Arc<dyn Store> = Arc::new(hive_store::MemoryStore::new());
    let o: O = Ops::new(store);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        let _first = o.subscribe().await.unwrap();
    });
    runtime().block_on(async {
        let mut sub = o.subscribe().await.unwrap();
        o.create_task(NewTask::new("t", "x")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await;
        let got = got.expect("an event on the second runtime").unwrap();
        assert!(
            matches!(got.event, Event::TaskCreated { count: 1, .. }),
            "{got:?}"
        );
    });
}
