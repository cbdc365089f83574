//! The conformance cases: one async function per rule of the [`Store`] contract, run by
//! every backend (`tests/conformance.rs`, through [`crate::per_backend!`]).
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hive_models::{
    NewPlan, NewTask, PlanStatus, RetryPolicy, Run, RunId, RunStatus, TaskId, TaskStatus,
    WorkerStatus,
};
use serde_json::json;

use crate::{
    Change, ClaimParams, Error, Finished, PruneParams, ReapParams, StatusChange, Store, TaskFilter,
    WorkerFilter, WorkerRegistration, WorkerStatusChange,
};

pub use super::fixtures::{
    claim_params, failure, leased, listed, node, plan, reap_params, registration, set_status,
    success, tasks, worker,
};

type S = Arc<dyn Store>;

async fn create(s: &S, title: &str, prio: i32) -> TaskId {
    s.insert_tasks(vec![NewTask::new(title, "test").priority(prio)])
        .await
        .unwrap()[0]
}

async fn status(s: &S, id: TaskId) -> TaskStatus {
    load(s, id).await.status
}

/// The plan, which must exist.
async fn plan_row(s: &S, id: hive_models::PlanId) -> hive_models::ExecutionPlan {
    s.get_plan(id).await.unwrap().expect("the plan exists")
}

/// The task, which must exist.
async fn load(s: &S, id: TaskId) -> hive_models::Task {
    s.get_task(id).await.unwrap().expect("the task exists")
}

/// Claims exactly one task and returns its run id.
async fn claim_one(s: &S, w: &str) -> (TaskId, hive_models::RunId) {
    let claims = s.claim_tasks(&claim_params(w, 1)).await.unwrap();
    assert_eq!(claims.len(), 1, "expected one claimable task");
    (claims[0].task.id, claims[0].run.id)
}

/// Materializes a plan and returns subtask id → task id.
async fn materialize(s: &S, p: NewPlan) -> (hive_models::PlanId, HashMap<String, TaskId>) {
    let pid = s.insert_plan(p).await.unwrap();
    s.materialize_plan(pid).await.unwrap().unwrap();
    let tasks = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    let map = tasks
        .into_iter()
        .map(|t| (t.plan_subtask_id.clone().unwrap(), t.id))
        .collect();
    (pid, map)
}

pub async fn insert_and_get_round_trip(s: S) {
    let payload = json!({"n": 1, "nested": {"list": [1, 2.5, null, true]}, "s": "x"});
    let new = NewTask::new("Deploy", "deployment")
        .description("ship it")
        .payload(payload.clone())
        .priority(7)
        .max_retries(5)
        .tags(["a", "b"])
        .metadata(json!({"owner": "ops"}));
    let id = s.insert_tasks(vec![new]).await.unwrap()[0];
    let t = load(&s, id).await;
    assert_eq!(t.id, id);
    assert_eq!(t.title, "Deploy");
    assert_eq!(t.description, "ship it");
    assert_eq!(t.task_type, "deployment");
    assert_eq!(t.payload, payload);
    assert_eq!(t.priority, 7);
    assert_eq!(t.max_retries, 5);
    assert_eq!(t.tags, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(t.metadata, json!({"owner": "ops"}));
    assert_eq!(t.status, TaskStatus::Queued);
    assert_eq!(t.current_phase, "start");
    assert_eq!(t.attempts, 0);
    assert!(t.current_run_id.is_none() && t.assigned_worker.is_none());
    assert!(t.dependencies.is_empty() && t.pending_dependencies == 0);
    let now = s.now().await.unwrap();
    assert!((now - t.created_at).num_seconds().abs() < 60);
    assert!(s.get_task(TaskId::new()).await.unwrap().is_none());
    assert!(s.insert_tasks(vec![]).await.unwrap().is_empty());
}

pub async fn strings_stored_verbatim(s: S) {
    let nasty = [
        "O'Reilly \"quoted\" `back`",
        "'; DROP TABLE tasks; --",
        "Robert'); DELETE FROM runs WHERE ('1'='1",
        "ünïcödé 日本語 🐝 עברית",
        "tab\tnewline\nreturn\r bell\u{7} escape\u{1b}",
        "$1 ? %s {} \\ \\\\ %",
    ];
    for text in nasty {
        let new = NewTask::new(text, text)
            .description(text)
            .payload(json!({ text: text }))
            .tags([text]);
        let id = s.insert_tasks(vec![new]).await.unwrap()[0];
        let t = load(&s, id).await;
        assert_eq!(t.title, text);
        assert_eq!(t.task_type, text);
        assert_eq!(t.description, text);
        assert_eq!(t.payload, json!({ text: text }));
        assert_eq!(t.tags, vec![text.to_string()]);
        let by_type = s
            .list_tasks(&TaskFilter {
                task_type: Some(text.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_type.len(), 1, "filter by {text:?}");
    }
    assert_eq!(
        s.count_tasks(None).await.unwrap()[&TaskStatus::Queued],
        nasty.len() as u64
    );
}

pub async fn queue_order_priority_then_age(s: S) {
    let low = create(&s, "low", 1).await;
    let high1 = create(&s, "high1", 10).await;
    let mid = create(&s, "mid", 5).await;
    let high2 = create(&s, "high2", 10).await;
    let neg = create(&s, "neg", -3).await;
    let queued = TaskFilter {
        status: Some(TaskStatus::Queued),
        ..Default::default()
    };
    let order = listed(&*s, queued).await;
    assert_eq!(order, vec![high1, high2, mid, low, neg]);
    let mut claimed = Vec::new();
    for _ in 0..5 {
        claimed.push(claim_one(&s, "w").await.0);
    }
    assert_eq!(claimed, order, "claims follow queue order");
    // A batch insert keeps its input order as the age order.
    let batch: Vec<NewTask> = tasks("b", "test", 5);
    let ids = s.insert_tasks(batch).await.unwrap();
    let ready = TaskFilter {
        ready_only: true,
        ..Default::default()
    };
    let listed = listed(&*s, ready).await;
    assert_eq!(listed, ids);
}

pub async fn idempotency_key_returns_first_id(s: S) {
    let first = s
        .insert_tasks(vec![NewTask::new("a", "test").idempotency_key("k1")])
        .await
        .unwrap()[0];
    let again = s
        .insert_tasks(vec![NewTask::new("b", "test").idempotency_key("k1")])
        .await
        .unwrap()[0];
    assert_eq!(first, again);
    assert_eq!(load(&s, first).await.title, "a");
    let batch = s
        .insert_tasks(vec![
            NewTask::new("c", "test").idempotency_key("k2"),
            NewTask::new("d", "test").idempotency_key("k1"),
            NewTask::new("e", "test").idempotency_key("k2"),
            NewTask::new("f", "test"),
        ])
        .await
        .unwrap();
    assert_eq!(batch[1], first);
    assert_eq!(batch[0], batch[2]);
    assert_ne!(batch[3], batch[0]);
    assert_eq!(s.count_tasks(None).await.unwrap()[&TaskStatus::Queued], 3);
}

/// The diamond a -> (b, c) -> d.
fn diamond() -> NewPlan {
    plan(vec![
        node("a", &[]),
        node("b", &["a"]),
        node("c", &["a"]),
        node("d", &["b", "c"]),
    ])
}

/// A task's dependents, found by filter (tasks get dependencies only through plans).
pub async fn list_filters_find_dependents(s: S) {
    let (_, ids) = materialize(&s, diamond()).await;
    let dependents_of = |id: TaskId| {
        let s = s.clone();
        async move {
            let found = s
                .list_tasks(&TaskFilter {
                    depending_on: Some(id),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut names: Vec<String> = found
                .into_iter()
                .filter_map(|t| t.plan_subtask_id)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(dependents_of(ids["a"]).await, ["b", "c"]);
    assert_eq!(dependents_of(ids["b"]).await, ["d"]);
    assert!(dependents_of(ids["d"]).await.is_empty());
}

pub async fn list_filters(s: S) {
    let a = s
        .insert_tasks(vec![NewTask::new("a", "alpha")])
        .await
        .unwrap()[0];
    let _b = s
        .insert_tasks(vec![NewTask::new("b", "beta")])
        .await
        .unwrap()[0];
    let c = s
        .insert_tasks(vec![NewTask::new("c", "alpha")])
        .await
        .unwrap()[0];
    let later = s.now().await.unwrap() + chrono::Duration::hours(1);
    let delayed = s
        .insert_tasks(vec![NewTask::new("d", "alpha").run_at(later)])
        .await
        .unwrap()[0];
    let alpha = TaskFilter {
        task_type: Some("alpha".into()),
        ..Default::default()
    };
    assert_eq!(listed(&*s, alpha.clone()).await, vec![a, c, delayed]);
    let ready = TaskFilter {
        ready_only: true,
        ..alpha
    };
    assert_eq!(listed(&*s, ready).await, vec![a, c]);
    let limited = s
        .list_tasks(&TaskFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    claim_one(&s, "w").await;
    let running = s
        .list_tasks(&TaskFilter {
            status: Some(TaskStatus::InProgress),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, a);
}

/// `updated_not_after` lists the tasks as they stood at a moment: one changed after it is
/// left out, one changed at or before it is in, whatever the clock's resolution.
pub async fn list_as_of_a_moment(s: S) {
    let kept = create(&s, "kept", 1).await;
    let changed = create(&s, "changed", 1).await;
    let moment = s.now().await.unwrap();
    // The next change is stamped strictly later than the moment on every backend's clock.
    while s.now().await.unwrap() <= moment {
        tokio::task::yield_now().await;
    }
    set_status(&*s, changed, TaskStatus::Cancelled).await;
    let as_of = TaskFilter {
        updated_not_after: Some(moment),
        ..Default::default()
    };
    assert_eq!(listed(&*s, as_of.clone()).await, vec![kept]);
    let cancelled_then = TaskFilter {
        status: Some(TaskStatus::Cancelled),
        ..as_of
    };
    assert!(listed(&*s, cancelled_then).await.is_empty());
    let now = TaskFilter {
        updated_not_after: Some(s.now().await.unwrap()),
        ..Default::default()
    };
    assert_eq!(listed(&*s, now).await, vec![kept, changed]);
}

pub async fn count_tasks_per_status(s: S) {
    for i in 0..4 {
        create(&s, &format!("t{i}"), 1).await;
    }
    let (_, run) = claim_one(&s, "w").await;
    s.finish_runs(&[success(run)]).await.unwrap();
    claim_one(&s, "w").await;
    let counts = s.count_tasks(None).await.unwrap();
    assert_eq!(counts.get(&TaskStatus::Queued), Some(&2));
    assert_eq!(counts.get(&TaskStatus::InProgress), Some(&1));
    assert_eq!(counts.get(&TaskStatus::Completed), Some(&1));
    assert_eq!(counts.get(&TaskStatus::Failed), None);
    let (pid, _) = materialize(&s, plan(vec![node("a", &[]), node("b", &["a"])])).await;
    let plan_counts = s.count_tasks(Some(pid)).await.unwrap();
    assert_eq!(plan_counts.values().sum::<u64>(), 2);
}

pub async fn set_status_follows_transition_table(s: S) {
    let id = create(&s, "t", 1).await;
    let ch = set_status(&*s, id, TaskStatus::Assigned).await;
    assert_eq!(ch.previous, TaskStatus::Queued);
    assert_eq!(ch.task.status, TaskStatus::Assigned);
    for to in [
        TaskStatus::InProgress,
        TaskStatus::ReviewPending,
        TaskStatus::Approved,
        TaskStatus::Completed,
    ] {
        set_status(&*s, id, to).await;
    }
    let err = s
        .set_task_status(id, StatusChange::to(TaskStatus::InProgress))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid(hive_models::Error::IllegalTransition { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("`completed`"), "{err}");
    assert_eq!(status(&s, id).await, TaskStatus::Completed);
    // Same status is a no-op, not an error.
    let same = set_status(&*s, id, TaskStatus::Completed).await;
    assert_eq!(same.previous, TaskStatus::Completed);
    // Moving a claimed task away closes its run, so the worker's late finish is stale.
    let id2 = create(&s, "t2", 1).await;
    let (got, run) = claim_one(&s, "w").await;
    assert_eq!(got, id2);
    set_status(&*s, id2, TaskStatus::Cancelled).await;
    assert_eq!(
        s.get_run(run).await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    let rep = s.finish_runs(&[success(run)]).await.unwrap();
    assert_eq!(rep[0].finished, Finished::Stale);
    assert_eq!(status(&s, id2).await, TaskStatus::Cancelled);
}

pub async fn set_status_unknown_task_is_none(s: S) {
    assert!(
        s.set_task_status(TaskId::new(), StatusChange::to(TaskStatus::Completed))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn requeue_from_terminal(s: S) {
    let id = create(&s, "t", 1).await;
    set_status(&*s, id, TaskStatus::Failed).await;
    assert!(
        s.set_task_status(id, StatusChange::to(TaskStatus::Queued))
            .await
            .is_err()
    );
    let ch = s
        .set_task_status(id, StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ch.previous, TaskStatus::Failed);
    assert_eq!(claim_one(&s, "w").await.0, id);
    // A held task cannot be requeued behind its worker's back.
    let err = s
        .set_task_status(
            id,
            StatusChange {
                status: TaskStatus::Assigned,
                ..StatusChange::requeue()
            },
        )
        .await;
    assert!(err.is_err());
}

pub async fn metadata_merges(s: S) {
    let id = s
        .insert_tasks(vec![
            NewTask::new("t", "test").metadata(json!({"a": 1, "b": 2})),
        ])
        .await
        .unwrap()[0];
    s.set_task_status(
        id,
        StatusChange {
            metadata: Some(json!({"b": 3, "c": "x"})),
            ..StatusChange::to(TaskStatus::Queued)
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        load(&s, id).await.metadata,
        json!({"a": 1, "b": 3, "c": "x"})
    );
}

pub async fn delete_cascades_runs(s: S) {
    let id = create(&s, "t", 1).await;
    let (_, run) = claim_one(&s, "w").await;
    s.finish_runs(&[failure(run, Some(RetryPolicy::IMMEDIATE))])
        .await
        .unwrap();
    let (_, run2) = claim_one(&s, "w").await;
    assert_eq!(s.list_runs(id).await.unwrap().len(), 2);
    assert!(s.delete_task(id).await.unwrap());
    assert!(s.get_task(id).await.unwrap().is_none());
    assert!(s.get_run(run).await.unwrap().is_none());
    assert!(s.get_run(run2).await.unwrap().is_none());
    assert!(s.list_runs(id).await.unwrap().is_empty());
    assert!(!s.delete_task(id).await.unwrap());
    // A task of an unfinished plan is kept: its plan could never finish without it.
    let (pid, ids) = materialize(&s, plan(vec![node("a", &[]), node("b", &["a"])])).await;
    let refused = s.delete_task(ids["a"]).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Invalid(hive_models::Error::InUse { .. })),
        "{refused:?}"
    );
    assert!(refused.to_string().contains(&pid.to_string()), "{refused}");
    assert!(s.get_task(ids["a"]).await.unwrap().is_some());
    // So is one that an unfinished task waits for, plan or not.
    s.cancel_plan(pid).await.unwrap().unwrap();
    let requeue = StatusChange::requeue();
    s.set_task_status(ids["b"], requeue).await.unwrap().unwrap();
    let refused = s.delete_task(ids["a"]).await.unwrap_err();
    assert!(
        refused.to_string().contains("1 unfinished task"),
        "{refused}"
    );
    assert_eq!(load(&s, ids["b"]).await.pending_dependencies, 1);
    // Once nothing waits for it, it goes, and its finished dependents forget it.
    set_status(&*s, ids["b"], TaskStatus::Cancelled).await;
    assert!(s.delete_task(ids["a"]).await.unwrap());
    let b = load(&s, ids["b"]).await;
    assert!(b.dependencies.is_empty());
}

pub async fn prune_in_batches(s: S) {
    let mut done = Vec::new();
    for i in 0..5 {
        let id = create(&s, &format!("t{i}"), 1).await;
        let (_, run) = claim_one(&s, "w").await;
        s.finish_runs(&[success(run)]).await.unwrap();
        done.push(id);
    }
    let open = create(&s, "open", 1).await;
    let bad = s
        .prune_tasks(&PruneParams {
            older_than: Duration::ZERO,
            statuses: vec![TaskStatus::Queued],
            limit: 10,
        })
        .await;
    assert!(matches!(bad, Err(Error::Invalid(_))));
    let recent = s
        .prune_tasks(&PruneParams {
            older_than: Duration::from_secs(3600),
            statuses: vec![TaskStatus::Completed],
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(recent, 0, "nothing is an hour old yet");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let p = PruneParams {
        older_than: Duration::from_millis(1),
        statuses: vec![TaskStatus::Completed],
        limit: 2,
    };
    assert_eq!(s.prune_tasks(&p).await.unwrap(), 2);
    assert_eq!(s.prune_tasks(&p).await.unwrap(), 2);
    assert_eq!(s.prune_tasks(&p).await.unwrap(), 1);
    assert_eq!(s.prune_tasks(&p).await.unwrap(), 0);
    for id in done {
        assert!(s.get_task(id).await.unwrap().is_none());
    }
    assert!(s.get_task(open).await.unwrap().is_some());
}

pub async fn claim_opens_run_and_respects_types(s: S) {
    let a = s
        .insert_tasks(vec![NewTask::new("a", "alpha").priority(1)])
        .await
        .unwrap()[0];
    let b = s
        .insert_tasks(vec![NewTask::new("b", "beta").priority(9)])
        .await
        .unwrap()[0];
    let only_alpha = ClaimParams {
        task_types: vec!["alpha".into(), "gamma".into()],
        ..claim_params("w1", 10)
    };
    let claims = s.claim_tasks(&only_alpha).await.unwrap();
    assert_eq!(claims.len(), 1);
    let c = &claims[0];
    assert_eq!(c.task.id, a);
    assert_eq!(c.task.status, TaskStatus::InProgress);
    assert_eq!(c.task.assigned_worker, Some(worker("w1")));
    assert_eq!(c.task.attempts, 1);
    assert_eq!(c.task.current_run_id, Some(c.run.id));
    assert_eq!(c.run.task_id, a);
    assert_eq!(c.run.worker_id, worker("w1"));
    assert_eq!(c.run.run_number, 1);
    assert_eq!(c.run.status, RunStatus::Running);
    let lease = c.run.lease_expires_at.unwrap();
    let secs = (lease - c.run.started_at).num_seconds();
    assert!((59..=61).contains(&secs), "lease of 60s, got {secs}");
    assert_eq!(s.get_run(c.run.id).await.unwrap().unwrap(), c.run);
    assert_eq!(load(&s, a).await, c.task);
    assert!(s.claim_tasks(&only_alpha).await.unwrap().is_empty());
    let rest = s.claim_tasks(&claim_params("w2", 10)).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].task.id, b);
    assert!(
        s.claim_tasks(&claim_params("w2", 10))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn delayed_task_not_claimable_early(s: S) {
    let soon = s.now().await.unwrap() + chrono::Duration::milliseconds(300);
    let id = s
        .insert_tasks(vec![NewTask::new("later", "test").run_at(soon)])
        .await
        .unwrap()[0];
    assert!(
        s.claim_tasks(&claim_params("w", 1))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(claim_one(&s, "w").await.0, id);
}

pub async fn finish_success_and_stale_run_rejected(s: S) {
    let id = create(&s, "t", 1).await;
    let (_, run) = claim_one(&s, "w").await;
    let rep = s.finish_runs(&[success(run)]).await.unwrap();
    assert_eq!(rep.len(), 1);
    assert_eq!(rep[0].finished, Finished::Completed);
    assert_eq!(rep[0].task_id, Some(id));
    let t = load(&s, id).await;
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!({"ok": true})));
    let r = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Success);
    assert_eq!(r.result_data, Some(json!({"ok": true})));
    assert_eq!(r.output_log.as_deref(), Some("done"));
    assert!(r.completed_at.is_some() && r.duration().is_some());
    // A second completion of the same run is stale and changes nothing.
    let again = s.finish_runs(&[failure(run, None)]).await.unwrap();
    assert_eq!(again[0].finished, Finished::Stale);
    assert_eq!(status(&s, id).await, TaskStatus::Completed);
    // An unknown run is stale too; a batch mixes outcomes in order.
    let id2 = create(&s, "t2", 1).await;
    let (_, run2) = claim_one(&s, "w").await;
    let unknown = hive_models::RunId::new();
    let rep = s
        .finish_runs(&[success(unknown), success(run2)])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, Finished::Stale);
    assert_eq!(rep[0].task_id, None);
    assert_eq!(rep[1].finished, Finished::Completed);
    assert_eq!(status(&s, id2).await, TaskStatus::Completed);
}

pub async fn failure_retries_with_backoff_then_fails(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("flaky", "test").max_retries(2)])
        .await
        .unwrap()[0];
    // Generous delays: the checks must hold on a loaded machine, where a few hundred
    // milliseconds can pass between two calls.
    let policy = RetryPolicy::exponential(Duration::from_millis(400), Duration::from_secs(10))
        .without_jitter();
    let (_, r1) = claim_one(&s, "w").await;
    let before = s.now().await.unwrap();
    let rep = s.finish_runs(&[failure(r1, Some(policy))]).await.unwrap();
    let Finished::Retrying { run_at } = rep[0].finished else {
        panic!("{:?}", rep[0])
    };
    let t = load(&s, id).await;
    assert_eq!(t.status, TaskStatus::Queued);
    assert_eq!(t.last_error.as_deref(), Some("boom"));
    assert!(t.assigned_worker.is_none());
    assert!(
        run_at - before >= chrono::Duration::milliseconds(400),
        "first backoff is the base"
    );
    assert!(
        s.claim_tasks(&claim_params("w", 1))
            .await
            .unwrap()
            .is_empty(),
        "not claimable during backoff"
    );
    assert_eq!(
        s.get_run(r1).await.unwrap().unwrap().status,
        RunStatus::Failure
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let (_, r2) = claim_one(&s, "w").await;
    let before = s.now().await.unwrap();
    let rep = s.finish_runs(&[failure(r2, Some(policy))]).await.unwrap();
    let Finished::Retrying { run_at: second } = rep[0].finished else {
        panic!("{:?}", rep[0])
    };
    assert!(
        second - before >= chrono::Duration::milliseconds(800),
        "backoff doubles"
    );
    tokio::time::sleep(Duration::from_millis(850)).await;
    let (_, r3) = claim_one(&s, "w").await;
    let rep = s.finish_runs(&[failure(r3, Some(policy))]).await.unwrap();
    assert_eq!(rep[0].finished, Finished::Failed);
    let t = load(&s, id).await;
    assert_eq!(t.status, TaskStatus::Failed);
    assert_eq!(t.attempts, 3);
    let runs = s.list_runs(id).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(runs.iter().all(|r| r.status == RunStatus::Failure));
}

pub async fn failure_without_retry_fails_at_once(s: S) {
    let id = create(&s, "t", 1).await;
    let (_, run) = claim_one(&s, "w").await;
    let rep = s.finish_runs(&[failure(run, None)]).await.unwrap();
    assert_eq!(rep[0].finished, Finished::Failed);
    assert_eq!(status(&s, id).await, TaskStatus::Failed);
}

pub async fn extend_lease_and_fencing(s: S) {
    create(&s, "t", 1).await;
    let claims = s
        .claim_tasks(&leased("w", 1, Duration::from_secs(5)))
        .await
        .unwrap();
    let run = claims[0].run.id;
    let before = claims[0].run.lease_expires_at.unwrap();
    let after = s.extend_lease(run, Duration::from_secs(120)).await.unwrap();
    assert!(after > before + chrono::Duration::seconds(100));
    assert_eq!(
        s.get_run(run).await.unwrap().unwrap().lease_expires_at,
        Some(after)
    );
    s.finish_runs(&[success(run)]).await.unwrap();
    let err = s
        .extend_lease(run, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleRun { run_id } if run_id == run),
        "{err}"
    );
    assert!(matches!(
        s.extend_lease(hive_models::RunId::new(), Duration::from_secs(5))
            .await,
        Err(Error::StaleRun { .. })
    ));
}

pub async fn release_runs_does_not_count_attempt(s: S) {
    let id = create(&s, "t", 1).await;
    let (_, run) = claim_one(&s, "w").await;
    assert_eq!(
        s.release_runs(&[run, hive_models::RunId::new()])
            .await
            .unwrap(),
        vec![id]
    );
    let t = load(&s, id).await;
    assert_eq!(t.status, TaskStatus::Queued);
    assert_eq!(t.attempts, 0);
    assert!(t.assigned_worker.is_none());
    assert_eq!(
        s.get_run(run).await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert!(
        s.release_runs(&[run]).await.unwrap().is_empty(),
        "a released run is stale"
    );
    let claims = s.claim_tasks(&claim_params("w2", 1)).await.unwrap();
    assert_eq!(claims[0].run.run_number, 2);
    assert_eq!(claims[0].task.attempts, 1);
}

pub async fn reap_expired_lease(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("t", "test").max_retries(1)])
        .await
        .unwrap()[0];
    s.register_worker(&registration("dead")).await.unwrap();
    let short = leased("dead", 1, Duration::from_millis(100));
    let run = s.claim_tasks(&short).await.unwrap()[0].run.id;
    let params = reap_params();
    assert!(
        s.reap(&params).await.unwrap().requeued.is_empty(),
        "lease still valid"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rep = s.reap(&params).await.unwrap();
    assert_eq!(rep.requeued, vec![(id, run)]);
    let r = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Timeout);
    assert_eq!(status(&s, id).await, TaskStatus::Queued);
    // The dead worker's late completion is rejected.
    assert_eq!(
        s.finish_runs(&[success(run)]).await.unwrap()[0].finished,
        Finished::Stale
    );
    // Second timeout: out of retries, so failed.
    let run2 = s.claim_tasks(&short).await.unwrap()[0].run.id;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rep = s.reap(&params).await.unwrap();
    assert_eq!(rep.failed, vec![id]);
    assert_eq!(status(&s, id).await, TaskStatus::Failed);
    assert_eq!(
        s.get_run(run2).await.unwrap().unwrap().status,
        RunStatus::Timeout
    );
    // Stale heartbeats mark workers offline.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rep = s
        .reap(&ReapParams {
            heartbeat_timeout: Duration::from_millis(10),
            ..params
        })
        .await
        .unwrap();
    assert_eq!(rep.offline_workers, vec![worker("dead")]);
    assert_eq!(
        s.get_worker(&worker("dead")).await.unwrap().unwrap().status,
        WorkerStatus::Offline
    );
}

pub async fn heartbeat_extends_leases(s: S) {
    s.register_worker(&registration("w")).await.unwrap();
    create(&s, "a", 1).await;
    create(&s, "b", 1).await;
    let claims = s
        .claim_tasks(&leased("w", 2, Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(claims.len(), 2);
    let params = reap_params();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rep = s
            .heartbeat(
                &worker("w"),
                Some(WorkerStatusChange::to(WorkerStatus::Active)),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rep.extended, 2);
    }
    assert!(
        s.reap(&params).await.unwrap().requeued.is_empty(),
        "heartbeats kept the leases alive"
    );
    for c in &claims {
        assert_eq!(
            s.get_run(c.run.id).await.unwrap().unwrap().status,
            RunStatus::Running
        );
    }
    assert!(s.heartbeat(&worker("ghost"), None).await.unwrap().is_none());
    let hb = s
        .heartbeat(
            &worker("w"),
            Some(WorkerStatusChange::to(WorkerStatus::Idle)),
        )
        .await
        .unwrap();
    assert!(hb.is_some());
    assert_eq!(
        s.get_worker(&worker("w")).await.unwrap().unwrap().status,
        WorkerStatus::Idle
    );
}

pub async fn running_runs_are_what_a_worker_holds(s: S) {
    for w in ["w", "other"] {
        s.register_worker(&registration(w)).await.unwrap();
    }
    for t in ["a", "b", "c"] {
        create(&s, t, 1).await;
    }
    let mine = s
        .claim_tasks(&leased("w", 2, Duration::from_secs(30)))
        .await
        .unwrap();
    let theirs = s
        .claim_tasks(&leased("other", 1, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!((mine.len(), theirs.len()), (2, 1));
    let held = |runs: Vec<Run>| -> Vec<(RunId, TaskId)> {
        runs.iter().map(|r| (r.id, r.task_id)).collect()
    };
    let mut expected: Vec<(RunId, TaskId)> = mine.iter().map(|c| (c.run.id, c.task.id)).collect();
    expected.sort_by_key(|(r, t)| (*t, *r));
    assert_eq!(held(s.running_runs(&worker("w")).await.unwrap()), expected);
    // A run that ends, however it ends, is no longer held.
    s.finish_runs(&[success(mine[0].run.id)]).await.unwrap();
    s.release_runs(&[theirs[0].run.id]).await.unwrap();
    assert_eq!(
        held(s.running_runs(&worker("w")).await.unwrap()),
        vec![(mine[1].run.id, mine[1].task.id)]
    );
    assert!(s.running_runs(&worker("other")).await.unwrap().is_empty());
    assert!(s.running_runs(&worker("ghost")).await.unwrap().is_empty());
}

pub async fn workers_register_list_unregister(s: S) {
    let reg = |id: &str, role: &str| WorkerRegistration {
        id: worker(id),
        role: role.into(),
        capabilities: vec!["python".into()],
        metadata: json!({"host": "h"}),
    };
    let w = s.register_worker(&reg("w1", "executor")).await.unwrap();
    assert_eq!(w.status, WorkerStatus::Active);
    assert!(w.has_capability("python"));
    s.register_worker(&reg("w2", "deployer")).await.unwrap();
    let updated = WorkerRegistration {
        capabilities: vec!["rust".into()],
        ..reg("w1", "planner")
    };
    let w1 = s.register_worker(&updated).await.unwrap();
    assert_eq!(w1.role, "planner");
    assert_eq!(w1.capabilities, vec!["rust".to_string()]);
    assert_eq!(
        w1.registered_at, w.registered_at,
        "re-registering keeps the registration time"
    );
    let all = s.list_workers(&WorkerFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        vec!["w1", "w2"]
    );
    let planners = s
        .list_workers(&WorkerFilter {
            role: Some("planner".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(planners.len(), 1);
    let alive = WorkerFilter {
        alive_within: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    assert_eq!(s.list_workers(&alive).await.unwrap().len(), 2);
    s.heartbeat(
        &worker("w2"),
        Some(WorkerStatusChange::to(WorkerStatus::Offline)),
    )
    .await
    .unwrap();
    assert_eq!(s.list_workers(&alive).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let recent = WorkerFilter {
        alive_within: Some(Duration::from_millis(30)),
        ..Default::default()
    };
    assert!(s.list_workers(&recent).await.unwrap().is_empty());
    // Unregistering sends the worker's in-flight tasks back to the queue.
    let t = create(&s, "t", 1).await;
    let (_, run) = claim_one(&s, "w1").await;
    assert_eq!(
        s.unregister_worker(&worker("w1")).await.unwrap(),
        Some(vec![t])
    );
    assert_eq!(status(&s, t).await, TaskStatus::Queued);
    assert_eq!(
        s.get_run(run).await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert!(s.get_worker(&worker("w1")).await.unwrap().is_none());
    assert_eq!(s.unregister_worker(&worker("w1")).await.unwrap(), None);
}

pub async fn plan_materialize_idempotent(s: S) {
    let mut p = plan(vec![
        node("build", &[]),
        node("test", &["build"]),
        node("ship", &["build", "test"]),
    ]);
    p.subtasks[0].priority = 5;
    p.subtasks[0].payload = json!({"command": "make"});
    p.subtasks[2].max_retries = Some(0);
    let pid = s.insert_plan(p.clone()).await.unwrap();
    let stored = plan_row(&s, pid).await;
    assert_eq!(stored.status, PlanStatus::Pending);
    assert_eq!(stored.total_subtasks, 3);
    assert_eq!(stored.subtask_ids, vec!["build", "test", "ship"]);
    assert_eq!(
        stored.get_dependencies("ship"),
        ["build".to_string(), "test".to_string()]
    );
    assert_eq!(stored.subtasks, p.subtasks);
    assert!(!stored.materialized);
    assert_eq!(s.materialize_plan(pid).await.unwrap(), Some(3));
    assert_eq!(s.materialize_plan(pid).await.unwrap(), Some(0));
    assert!(plan_row(&s, pid).await.materialized);
    assert_eq!(
        s.materialize_plan(hive_models::PlanId::new())
            .await
            .unwrap(),
        None
    );
    let tasks = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    assert_eq!(tasks.len(), 3);
    let by: HashMap<&str, &hive_models::Task> = tasks
        .iter()
        .map(|t| (t.plan_subtask_id.as_deref().unwrap(), t))
        .collect();
    assert_eq!(by["build"].priority, 5);
    assert_eq!(by["build"].payload, json!({"command": "make"}));
    assert_eq!(by["ship"].max_retries, 0);
    assert_eq!(by["ship"].pending_dependencies, 2);
    let mut deps = by["ship"].dependencies.clone();
    deps.sort();
    let mut want = vec![by["build"].id, by["test"].id];
    want.sort();
    assert_eq!(deps, want);
    let listed = s.list_plans(None, None).await.unwrap();
    assert_eq!(listed.len(), 1);
    let pid2 = s.insert_plan(plan(vec![node("x", &[])])).await.unwrap();
    let listed = s.list_plans(None, Some(10)).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![pid2, pid],
        "newest first"
    );
    assert_eq!(
        s.list_plans(Some(PlanStatus::Completed), None)
            .await
            .unwrap()
            .len(),
        0
    );
    // The headers list the same plans, in the same order, without their subtasks.
    for (status, limit) in [
        (None, None),
        (None, Some(1)),
        (Some(PlanStatus::Pending), None),
        (Some(PlanStatus::Completed), None),
    ] {
        let plans = s.list_plans(status, limit).await.unwrap();
        let headers = s.list_plan_headers(status, limit).await.unwrap();
        let want: Vec<_> = plans
            .iter()
            .map(hive_models::ExecutionPlan::header)
            .collect();
        assert_eq!(headers, want, "{status:?} {limit:?}");
        for p in &plans {
            let one = s.get_plan_header(p.id).await.unwrap();
            assert_eq!(one.as_ref(), want.iter().find(|h| h.id == p.id));
        }
    }
    assert_eq!(
        s.get_plan_header(hive_models::PlanId::new()).await.unwrap(),
        None
    );
    let header = &s.list_plan_headers(None, Some(10)).await.unwrap()[1];
    assert_eq!((header.id, header.total_subtasks), (pid, 3));
    assert!(header.materialized);
}

pub async fn plan_dependencies_gate_claims(s: S) {
    // Diamond: a -> (b, c) -> d.
    let (pid, ids) = materialize(&s, diamond()).await;
    let ready = |s: S| async move {
        s.list_tasks(&TaskFilter {
            plan_id: Some(pid),
            ready_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|t| t.plan_subtask_id.clone().unwrap())
        .collect::<HashSet<_>>()
    };
    assert_eq!(ready(s.clone()).await, HashSet::from(["a".to_string()]));
    let claims = s.claim_tasks(&claim_params("w", 10)).await.unwrap();
    assert_eq!(claims.len(), 1, "only the root is claimable");
    assert_eq!(plan_row(&s, pid).await.status, PlanStatus::InProgress);
    s.finish_runs(&[success(claims[0].run.id)]).await.unwrap();
    assert_eq!(
        ready(s.clone()).await,
        HashSet::from(["b".to_string(), "c".to_string()])
    );
    let claims = s.claim_tasks(&claim_params("w", 10)).await.unwrap();
    assert_eq!(claims.len(), 2);
    s.finish_runs(&[success(claims[0].run.id)]).await.unwrap();
    assert!(ready(s.clone()).await.is_empty(), "d waits for both");
    assert_eq!(load(&s, ids["d"]).await.pending_dependencies, 1);
    s.finish_runs(&[success(claims[1].run.id)]).await.unwrap();
    let p = plan_row(&s, pid).await;
    assert_eq!(p.completed_subtasks, 3);
    assert_eq!(p.status, PlanStatus::InProgress);
    let (d, run) = claim_one(&s, "w").await;
    assert_eq!(d, ids["d"]);
    let rep = s.finish_runs(&[success(run)]).await.unwrap();
    assert_eq!(rep[0].plan_id, Some(pid));
    assert_eq!(rep[0].plan_transition, Some(PlanStatus::Completed));
    let p = plan_row(&s, pid).await;
    assert_eq!(p.status, PlanStatus::Completed);
    assert_eq!(p.completed_subtasks, 4);
    assert_eq!(p.get_progress_percentage(), 100.0);
}

pub async fn plan_failure_cancels_descendants(s: S) {
    // a -> b -> c, a -> d; e independent.
    let mut p = plan(vec![
        node("a", &[]),
        node("b", &["a"]),
        node("c", &["b"]),
        node("d", &["a"]),
        node("e", &[]),
    ]);
    for st in &mut p.subtasks {
        st.max_retries = Some(0);
    }
    p.subtasks[4].priority = -1;
    let (pid, ids) = materialize(&s, p).await;
    let (a, run) = claim_one(&s, "w").await;
    assert_eq!(a, ids["a"]);
    let rep = s
        .finish_runs(&[failure(run, Some(RetryPolicy::IMMEDIATE))])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, Finished::Failed);
    assert_eq!(rep[0].plan_transition, Some(PlanStatus::Failed));
    let mut cancelled = rep[0].cancelled_dependents.clone();
    cancelled.sort();
    let mut want = vec![ids["b"], ids["c"], ids["d"]];
    want.sort();
    assert_eq!(cancelled, want);
    for k in ["b", "c", "d"] {
        assert_eq!(status(&s, ids[k]).await, TaskStatus::Cancelled, "{k}");
    }
    let p = plan_row(&s, pid).await;
    assert_eq!(p.status, PlanStatus::Failed);
    assert_eq!(p.failed_subtasks, 1);
    assert_eq!(p.cancelled_subtasks, 3);
    // The independent branch still runs; the plan stays failed.
    let (e, run) = claim_one(&s, "w").await;
    assert_eq!(e, ids["e"]);
    let rep = s.finish_runs(&[success(run)]).await.unwrap();
    assert_eq!(rep[0].plan_transition, None);
    let p = plan_row(&s, pid).await;
    assert_eq!(p.status, PlanStatus::Failed);
    assert_eq!(p.completed_subtasks, 1);
}

pub async fn plan_cancel(s: S) {
    let (pid, ids) = materialize(
        &s,
        plan(vec![node("a", &[]), node("b", &["a"]), node("c", &[])]),
    )
    .await;
    let (first, run) = claim_one(&s, "w").await;
    let mut cancelled = s.cancel_plan(pid).await.unwrap().unwrap();
    cancelled.sort();
    let mut want = vec![ids["a"], ids["b"], ids["c"]];
    want.sort();
    assert_eq!(cancelled, want);
    let p = plan_row(&s, pid).await;
    assert_eq!((p.status, p.cancelled_subtasks), (PlanStatus::Cancelled, 3));
    assert_eq!(
        s.get_run(run).await.unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert_eq!(
        s.finish_runs(&[success(run)]).await.unwrap()[0].finished,
        Finished::Stale
    );
    assert_eq!(status(&s, first).await, TaskStatus::Cancelled);
    assert!(
        s.claim_tasks(&claim_params("w", 10))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.cancel_plan(pid).await.unwrap(), Some(vec![]));
    assert_eq!(
        s.cancel_plan(hive_models::PlanId::new()).await.unwrap(),
        None
    );
}

pub async fn plan_transition_compare_and_set(s: S) {
    let pid = s.insert_plan(plan(vec![node("a", &[])])).await.unwrap();
    assert!(
        s.transition_plan(pid, PlanStatus::Pending, PlanStatus::InProgress)
            .await
            .unwrap()
    );
    assert!(
        !s.transition_plan(pid, PlanStatus::Pending, PlanStatus::InProgress)
            .await
            .unwrap()
    );
    assert_eq!(plan_row(&s, pid).await.status, PlanStatus::InProgress);
    assert!(
        !s.transition_plan(
            hive_models::PlanId::new(),
            PlanStatus::Pending,
            PlanStatus::InProgress
        )
        .await
        .unwrap()
    );
}

pub async fn dependencies_met_batch(s: S) {
    let (_, ids) = materialize(
        &s,
        plan(vec![node("a", &[]), node("b", &["a"]), node("c", &[])]),
    )
    .await;
    let ghost = TaskId::new();
    let met = s
        .dependencies_met(&[ids["a"], ids["b"], ids["c"], ghost])
        .await
        .unwrap();
    assert_eq!(met.len(), 3);
    assert!(met[&ids["a"]] && !met[&ids["b"]] && met[&ids["c"]]);
    let (a, run) = claim_one(&s, "w").await;
    assert_eq!(a, ids["a"]);
    s.finish_runs(&[success(run)]).await.unwrap();
    assert!(s.dependencies_met(&[ids["b"]]).await.unwrap()[&ids["b"]]);
    assert!(s.dependencies_met(&[]).await.unwrap().is_empty());
}

/// The first notification `pick` accepts, within five seconds.
pub(super) async fn wait_for<T>(
    rx: &mut tokio::sync::broadcast::Receiver<crate::Notification>,
    mut pick: impl FnMut(&crate::Notification) -> Option<T>,
) -> Result<(crate::Notification, T), tokio::time::error::Elapsed> {
    let fut = async move {
        loop {
            let n = rx.recv().await.unwrap();
            if let Some(v) = pick(&n) {
                return (n, v);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await
}

pub async fn notifications_after_commit(s: S) {
    let mut rx = s.subscribe().await.unwrap();
    let id = create(&s, "t", 1).await;
    let (n, created) = wait_for(&mut rx, |n| match &n.change {
        Change::TaskCreated { task_id, count } => Some((*task_id, *count)),
        _ => None,
    })
    .await
    .expect("task created notification");
    assert_eq!(created, (Some(id), 1));
    assert_eq!(n.origin, s.origin());
    // The notification follows the commit: the row is visible to a reader.
    assert!(s.get_task(id).await.unwrap().is_some());
    let (_, run) = claim_one(&s, "w").await;
    let (_, claimed) = wait_for(&mut rx, |n| match &n.change {
        Change::TaskClaimed {
            task_id, run_id, ..
        } => Some((*task_id, *run_id)),
        _ => None,
    })
    .await
    .expect("claim notification");
    assert_eq!(claimed, (id, run));
    s.finish_runs(&[success(run)]).await.unwrap();
    // Typed, with the run that finished it.
    let (_, done) = wait_for(&mut rx, |n| match &n.change {
        Change::TaskStatus(c) if c.status == TaskStatus::Completed => Some(c.clone()),
        _ => None,
    })
    .await
    .expect("status notification");
    assert_eq!((done.task_id, done.run_id), (id, Some(run)));
    // A failure carries its error.
    let failing = create(&s, "f", 1).await;
    let (_, run) = claim_one(&s, "w").await;
    s.finish_runs(&[failure(run, None)]).await.unwrap();
    let (_, failed) = wait_for(&mut rx, |n| match &n.change {
        Change::TaskStatus(c) if c.status == TaskStatus::Failed => Some(c.clone()),
        _ => None,
    })
    .await
    .expect("failure notification");
    assert_eq!(failed.task_id, failing);
    assert_eq!(failed.run_id, Some(run));
    assert_eq!(failed.error.as_deref(), Some("boom"));
}

/// Claims and completions of a large batch announce every task, each with its own run, and
/// the claimer's name however long (Postgres packs these many to a NOTIFY payload).
pub async fn batches_announce_every_task(s: S) {
    const N: usize = 120;
    let mut rx = s.subscribe().await.unwrap();
    let ids: HashSet<TaskId> = s
        .insert_tasks(tasks("b", "test", N))
        .await
        .unwrap()
        .into_iter()
        .collect();
    // The longest name a worker may have: a character JSON escapes, then 199 that take 4
    // bytes each.
    let name = format!("\"{}", "🐝".repeat(199));
    let claims = s.claim_tasks(&claim_params(&name, N as u32)).await.unwrap();
    assert_eq!(claims.len(), N);
    let runs: HashMap<TaskId, hive_models::RunId> =
        claims.iter().map(|c| (c.task.id, c.run.id)).collect();
    let outcomes: Vec<_> = claims.iter().map(|c| success(c.run.id)).collect();
    s.finish_runs(&outcomes).await.unwrap();
    let mut claimed = HashMap::new();
    let mut completed = HashMap::new();
    let all_seen = async {
        while claimed.len() < N || completed.len() < N {
            let n = rx.recv().await.unwrap();
            match n.change {
                Change::TaskClaimed {
                    task_id,
                    run_id,
                    worker_id,
                    plan_id,
                } => {
                    assert_eq!((worker_id.0.as_str(), plan_id), (name.as_str(), None));
                    assert!(claimed.insert(task_id, run_id).is_none(), "announced twice");
                }
                Change::TaskStatus(c) if c.status == TaskStatus::Completed => {
                    assert!(
                        completed.insert(c.task_id, c.run_id).is_none(),
                        "announced twice"
                    );
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_seen)
        .await
        .expect("every claim and completion announced");
    assert_eq!(claimed.keys().copied().collect::<HashSet<_>>(), ids);
    assert_eq!(claimed, runs);
    let completed: HashMap<_, _> = completed
        .into_iter()
        .map(|(t, r)| (t, r.expect("a completion names its run")))
        .collect();
    assert_eq!(completed, runs);
}

pub async fn concurrent_claims_exactly_once(s: S) {
    const TASKS: usize = 500;
    const CLAIMERS: usize = 8;
    let batch: Vec<NewTask> = tasks("t", "test", TASKS);
    let ids: HashSet<TaskId> = s.insert_tasks(batch).await.unwrap().into_iter().collect();
    let mut handles = Vec::new();
    for c in 0..CLAIMERS {
        let s = s.clone();
        handles.push(tokio::spawn(super::fixtures::drain(
            s,
            format!("c{c}"),
            1 + (c as u32 % 3),
        )));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    assert_eq!(all.len(), TASKS, "every task claimed once, none twice");
    assert_eq!(all.iter().copied().collect::<HashSet<_>>(), ids);
    let counts = s.count_tasks(None).await.unwrap();
    assert_eq!(counts.get(&TaskStatus::Completed), Some(&(TASKS as u64)));
    assert_eq!(counts.len(), 1);
}

pub async fn not_found_paths(s: S) {
    let ghost = TaskId::new();
    assert!(s.get_task(ghost).await.unwrap().is_none());
    assert!(!s.delete_task(ghost).await.unwrap());
    assert!(s.list_runs(ghost).await.unwrap().is_empty());
    assert!(
        s.get_run(hive_models::RunId::new())
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_worker(&worker("nobody")).await.unwrap().is_none());
    assert!(
        s.get_plan(hive_models::PlanId::new())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.release_runs(&[hive_models::RunId::new()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim_tasks(&claim_params("w", 5))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.finish_runs(&[]).await.unwrap().is_empty());
    assert_eq!(s.count_tasks(None).await.unwrap().len(), 0);
}

/// The run `claims` opened for `task`.
fn run_of(claims: &[crate::Claim], task: TaskId) -> hive_models::RunId {
    claims
        .iter()
        .find(|c| c.task.id == task)
        .map(|c| c.run.id)
        .expect("the task was claimed")
}

/// A batch that finishes a plan's last subtasks reports the plan's move on the outcome
/// that made it — the last of them in the batch, as the outcomes apply one after another —
/// and on no other, whichever backend counts the plan after commit.
pub async fn a_plans_move_is_reported_on_the_outcome_that_made_it(s: S) {
    let (_, ids) = materialize(&s, plan(vec![node("a", &[]), node("b", &[])])).await;
    let claims = s.claim_tasks(&claim_params("w", 2)).await.unwrap();
    let run = |name: &str| run_of(&claims, ids[name]);
    let rep = s
        .finish_runs(&[success(run("b")), success(run("a"))])
        .await
        .unwrap();
    assert_eq!(rep[0].plan_transition, None, "b left a open");
    assert_eq!(
        rep[1].plan_transition,
        Some(PlanStatus::Completed),
        "a finished it"
    );

    // A failure fails its plan at once: the move is reported on the first failure, not on
    // what follows it in the batch.
    let (_, ids) = materialize(
        &s,
        plan(vec![node("x", &[]), node("y", &[]), node("z", &[])]),
    )
    .await;
    let claims = s.claim_tasks(&claim_params("w", 3)).await.unwrap();
    let run = |name: &str| run_of(&claims, ids[name]);
    let rep = s
        .finish_runs(&[
            success(run("x")),
            failure(run("y"), None),
            failure(run("z"), None),
        ])
        .await
        .unwrap();
    let moves: Vec<_> = rep.iter().map(|r| r.plan_transition).collect();
    assert_eq!(moves, [None, Some(PlanStatus::Failed), None], "y failed it");
}

pub async fn plan_finishes_cancelled_when_all_subtasks_finish(s: S) {
    let (pid, ids) = materialize(
        &s,
        plan(vec![node("a", &[]), node("b", &["a"]), node("c", &[])]),
    )
    .await;
    let ch = set_status(&*s, ids["a"], TaskStatus::Cancelled).await;
    assert_eq!(ch.cancelled_dependents, vec![ids["b"]]);
    assert_eq!(ch.plan_transition, None, "c is still open");
    let p = plan_row(&s, pid).await;
    assert_eq!(p.cancelled_subtasks, 2);
    assert_eq!(p.status, PlanStatus::Pending);
    let (c, run) = claim_one(&s, "w").await;
    assert_eq!(c, ids["c"]);
    let rep = s.finish_runs(&[success(run)]).await.unwrap();
    assert_eq!(rep[0].plan_transition, Some(PlanStatus::Cancelled));
    let p = plan_row(&s, pid).await;
    assert_eq!(
        (
            p.status,
            p.completed_subtasks,
            p.failed_subtasks,
            p.cancelled_subtasks
        ),
        (PlanStatus::Cancelled, 1, 0, 2)
    );
}

/// The store's own `TaskReady` notifications that already arrived (after a short settle for
/// Postgres NOTIFY, whose channel other tests' stores share).
async fn ready_notes(
    s: &S,
    rx: &mut tokio::sync::broadcast::Receiver<crate::Notification>,
) -> Vec<TaskId> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ready = Vec::new();
    while let Ok(n) = rx.try_recv() {
        if let Change::TaskReady { task_id } = n.change
            && n.origin == s.origin()
        {
            ready.push(task_id);
        }
    }
    ready
}

pub async fn finish_and_claim_refills_in_one_step(s: S) {
    // a -> b, and an unrelated queued task x of lower priority.
    let (_, ids) = materialize(&s, plan(vec![node("a", &[]), node("b", &["a"])])).await;
    let mut x = NewTask::new("x", "test");
    x.priority = -1;
    let x = s.insert_tasks(vec![x]).await.unwrap()[0];
    let (a, run) = claim_one(&s, "w").await;
    assert_eq!(a, ids["a"]);
    let mut rx = s.subscribe().await.unwrap();
    let (reports, claims) = s
        .finish_and_claim(&[success(run)], &claim_params("w", 1))
        .await
        .unwrap();
    assert_eq!(reports[0].finished, Finished::Completed);
    assert_eq!(status(&s, ids["a"]).await, TaskStatus::Completed);
    // The dependent freed by the completion is claimable in the same step, ahead of x
    // (queue order), and nobody else is told about it.
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].task.id, ids["b"]);
    assert_eq!(claims[0].task.status, TaskStatus::InProgress);
    assert!(
        ready_notes(&s, &mut rx).await.is_empty(),
        "b was claimed, not announced"
    );
    // A stale outcome in the batch changes nothing; an empty claim claims nothing.
    let (reports, claims) = s
        .finish_and_claim(&[success(run)], &claim_params("w", 0))
        .await
        .unwrap();
    assert_eq!(reports[0].finished, Finished::Stale);
    assert!(claims.is_empty());
    assert_eq!(status(&s, x).await, TaskStatus::Queued);
    // Finishing b claims x: any ready task fills the freed slot.
    let (_, claims) = s
        .finish_and_claim(
            &[success(claims_run(&s, ids["b"]).await)],
            &claim_params("w", 5),
        )
        .await
        .unwrap();
    assert_eq!(
        claims.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![x]
    );
}

async fn claims_run(s: &S, task: TaskId) -> hive_models::RunId {
    load(s, task).await.current_run_id.unwrap()
}

pub async fn freed_dependents_are_announced_unless_claimed(s: S) {
    // a -> (b, c): finishing a frees two; a claim of one takes b, c is announced.
    let (_, ids) = materialize(
        &s,
        plan(vec![node("a", &[]), node("b", &["a"]), node("c", &["a"])]),
    )
    .await;
    let (_, run) = claim_one(&s, "w").await;
    let mut rx = s.subscribe().await.unwrap();
    let (_, claims) = s
        .finish_and_claim(&[success(run)], &claim_params("w", 1))
        .await
        .unwrap();
    assert_eq!(claims[0].task.id, ids["b"]);
    assert_eq!(ready_notes(&s, &mut rx).await, vec![ids["c"]]);
    // A plain finish announces what it frees.
    assert_eq!(claim_one(&s, "w").await.0, ids["c"]);
    let (_, ids) = materialize(&s, plan(vec![node("p", &[]), node("q", &["p"])])).await;
    let (_, run) = claim_one(&s, "w").await;
    s.finish_runs(&[success(run)]).await.unwrap();
    assert_eq!(ready_notes(&s, &mut rx).await, vec![ids["q"]]);
}
