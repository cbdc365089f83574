//! The conformance cases for tasks (storing, listing, status moves, pruning, unknown ids),
//! and the helpers the other case modules share. Each case is one async function per rule
//! of the [`Store`] contract, run by every backend (`tests/conformance.rs`, through
//! [`crate::per_backend!`]); runs and workers, plans, and notifications have modules of
//! their own beside this one.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewPlan, NewTask, RetryPolicy, RunStatus, TaskId, TaskStatus};
use serde_json::json;

use crate::{Error, Finished, PruneParams, StatusChange, Store, TaskFilter};

pub use super::fixtures::{
    claim_params, failure, leased, listed, node, plan, reap_params, registration, set_status,
    success, tasks, worker,
};

type S = Arc<dyn Store>;

pub(super) async fn create(s: &S, title: &str, prio: i32) -> TaskId {
    s.insert_tasks(vec![NewTask::new(title, "test").priority(prio)])
        .await
        .unwrap()
        .ids[0]
}

pub(super) async fn status(s: &S, id: TaskId) -> TaskStatus {
    load(s, id).await.status
}

/// The plan, which must exist.
pub(super) async fn plan_row(s: &S, id: hive_models::PlanId) -> hive_models::ExecutionPlan {
    s.get_plan(id).await.unwrap().expect("the plan exists")
}

/// The task, which must exist.
pub(super) async fn load(s: &S, id: TaskId) -> hive_models::Task {
    s.get_task(id).await.unwrap().expect("the task exists")
}

/// Claims exactly one task and returns its run id.
pub(super) async fn claim_one(s: &S, w: &str) -> (TaskId, hive_models::RunId) {
    let claims = s.claim_tasks(&claim_params(w, 1)).await.unwrap();
    assert_eq!(claims.len(), 1, "expected one claimable task");
    (claims[0].task.id, claims[0].run.id)
}

/// Materializes a plan and returns subtask id → task id.
pub(super) async fn materialize(
    s: &S,
    p: NewPlan,
) -> (hive_models::PlanId, HashMap<String, TaskId>) {
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
    let id = s.insert_tasks(vec![new]).await.unwrap().ids[0];
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
    assert!(s.insert_tasks(vec![]).await.unwrap().ids.is_empty());
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
        let id = s.insert_tasks(vec![new]).await.unwrap().ids[0];
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
    let ids = s.insert_tasks(batch).await.unwrap().ids;
    let ready = TaskFilter {
        ready_only: true,
        ..Default::default()
    };
    let listed = listed(&*s, ready).await;
    assert_eq!(listed, ids);
}

/// Batches taking the same idempotency keys in opposite orders at once (a deadlock on
/// Postgres, tried again) each get every key's one task.
pub async fn keyed_batches_in_opposite_orders_agree(s: S) {
    let keys: Vec<String> = (0..300).map(|i| format!("race-{i}")).collect();
    let batch = |reversed: bool| {
        let mut tasks: Vec<NewTask> = keys
            .iter()
            .map(|k| NewTask::new(k.clone(), "test").idempotency_key(k.clone()))
            .collect();
        if reversed {
            tasks.reverse();
        }
        tasks
    };
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (s, tasks) = (s.clone(), batch(i % 2 == 1));
        calls.spawn(async move { (i % 2 == 1, s.insert_tasks(tasks).await) });
    }
    let mut by_key: HashMap<String, TaskId> = HashMap::new();
    let mut created = 0;
    while let Some(joined) = calls.join_next().await {
        let (reversed, inserted) = joined.unwrap();
        let inserted = inserted.unwrap();
        created += inserted.new_tasks;
        let mut ids = inserted.ids;
        if reversed {
            ids.reverse();
        }
        for (key, id) in keys.iter().zip(ids) {
            assert_eq!(*by_key.entry(key.clone()).or_insert(id), id, "{key}");
        }
    }
    assert_eq!(created, 300, "one task a key");
}

pub async fn idempotency_key_returns_first_id(s: S) {
    let mut rx = s.subscribe().await.unwrap();
    let first = s
        .insert_tasks(vec![NewTask::new("a", "test").idempotency_key("k1")])
        .await
        .unwrap();
    assert_eq!(first.new_tasks, 1);
    let first = first.ids[0];
    let again = s
        .insert_tasks(vec![NewTask::new("b", "test").idempotency_key("k1")])
        .await
        .unwrap();
    assert_eq!((again.ids.as_slice(), again.new_tasks), (&[first][..], 0));
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
    assert_eq!(batch.new_tasks, 2, "c and f");
    let batch = batch.ids;
    // Announced: a's creation, then the batch's two; the repeat of k1 announced nothing.
    let mut created = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv()).await {
        if let crate::Change::TaskCreated { task_id, count } = n.change {
            created.push((task_id, count));
            if created.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(created, vec![(Some(first), 1), (None, 2)]);
    assert_eq!(batch[1], first);
    assert_eq!(batch[0], batch[2]);
    assert_ne!(batch[3], batch[0]);
    assert_eq!(s.count_tasks(None).await.unwrap()[&TaskStatus::Queued], 3);
}

/// The diamond a -> (b, c) -> d.
pub(super) fn diamond() -> NewPlan {
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
        .unwrap()
        .ids[0];
    let _b = s
        .insert_tasks(vec![NewTask::new("b", "beta")])
        .await
        .unwrap()
        .ids[0];
    let c = s
        .insert_tasks(vec![NewTask::new("c", "alpha")])
        .await
        .unwrap()
        .ids[0];
    let later = s.now().await.unwrap() + chrono::Duration::hours(1);
    let delayed = s
        .insert_tasks(vec![NewTask::new("d", "alpha").run_at(later)])
        .await
        .unwrap()
        .ids[0];
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
    let (claimed, run) = claim_one(&s, "w").await;
    assert_eq!(claimed, id);
    // A held task cannot be requeued behind its worker's back: an operator's requeue of a
    // task claimed since they looked at it leaves the worker's run alone.
    let err = s.set_task_status(id, StatusChange::requeue()).await;
    assert!(matches!(&err, Err(Error::Invalid(_))), "{err:?}");
    let held = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(held.status, RunStatus::Running);
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
        .unwrap()
        .ids[0];
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
    // Not while a worker holds it: its handler would run on, its limits' room freed.
    let refused = s.delete_task(id).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("a worker holds it (in_progress)"),
        "{refused}"
    );
    s.finish_runs(&[success(run2)]).await.unwrap();
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
    // So is one that an unfinished task waits for, plan or not: the plan completed, then
    // `b` queued again to run once more.
    for _ in 0..2 {
        let (_, run) = claim_one(&s, "w").await;
        s.finish_runs(&[success(run)]).await.unwrap();
    }
    let requeue = StatusChange::requeue();
    s.set_task_status(ids["b"], requeue).await.unwrap().unwrap();
    let refused = s.delete_task(ids["a"]).await.unwrap_err();
    assert!(
        refused.to_string().contains("1 subtask(s) of plan"),
        "{refused}"
    );
    // Nor once `b` is cancelled: a retry of the plan would run it without `a`'s output.
    set_status(&*s, ids["b"], TaskStatus::Cancelled).await;
    let refused = s.delete_task(ids["a"]).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("would run them without its output"),
        "{refused}"
    );
    // Nor `b`, cancelled in the completed plan: the plan counts it, and a retry runs it.
    let refused = s.delete_task(ids["b"]).await.unwrap_err();
    assert!(
        refused.to_string().contains("it is cancelled in plan"),
        "{refused}"
    );
    // Once `b` completed again, `a` goes, and `b` forgets it.
    s.set_task_status(ids["b"], StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    let (_, run) = claim_one(&s, "w").await;
    s.finish_runs(&[success(run)]).await.unwrap();
    assert!(s.delete_task(ids["a"]).await.unwrap());
    let b = load(&s, ids["b"]).await;
    assert!(b.dependencies.is_empty());

    // Of a failed plan, which a retry would run on, only a completed subtask goes: `y`
    // still running, then `x` failed, stay; `y` goes once it completed.
    let mut x = node("x", &[]);
    x.max_retries = Some(0);
    let (_, ids) = materialize(&s, plan(vec![x, node("y", &[])])).await;
    let claims = s.claim_tasks(&claim_params("w", 2)).await.unwrap();
    let run_of = |sub: &str| {
        claims
            .iter()
            .find(|c| c.task.plan_subtask_id.as_deref() == Some(sub))
            .unwrap()
            .run
            .id
    };
    s.finish_runs(&[failure(run_of("x"), None)]).await.unwrap();
    for (sub, status) in [("y", "in_progress"), ("x", "failed")] {
        let refused = s.delete_task(ids[sub]).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains(&format!("it is {status} in plan"))
                && refused
                    .to_string()
                    .contains("which is failed and may be retried"),
            "{refused}"
        );
        assert!(s.get_task(ids[sub]).await.unwrap().is_some());
    }
    s.finish_runs(&[success(run_of("y"))]).await.unwrap();
    assert!(s.delete_task(ids["y"]).await.unwrap());
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
    // An age further back than time goes is nothing older, on every backend.
    for older_than in [Duration::MAX, Duration::from_secs(400_000 * 365 * 86_400)] {
        let p = PruneParams {
            older_than,
            statuses: vec![TaskStatus::Completed],
            limit: 10,
        };
        assert_eq!(s.prune_tasks(&p).await.unwrap(), 0);
        let plans = crate::PlanPruneParams {
            older_than,
            statuses: vec![hive_models::PlanStatus::Completed],
            limit: 10,
        };
        assert_eq!(s.prune_plans(&plans).await.unwrap().plans, 0);
    }
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
