//! Conformance cases for a plan's life after its first run: a subtask requeued, failed and
//! cancelled plans retried, a failure racing a retry, finished plans pruned with their
//! tasks. Run by every backend (`tests/conformance.rs`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use hive_models::{PlanId, PlanStatus, SubTask, TaskId, TaskStatus};
use serde_json::json;

use super::fixtures::{claim_params, node, success};
use super::workflows::{claim_all, done, materialized, subtask_of};
use crate::{Claim, RunOutcome, Store, TaskFilter};

type S = Arc<dyn Store>;

/// A completed subtask an operator requeues is unfinished again: its plan stops counting
/// it, so completing it a second time does not finish the plan early, and a dependent that
/// has not started waits for its new output.
pub async fn a_requeued_completed_subtask_is_unfinished_again(s: S) {
    let (pid, ids) = materialized(
        &s,
        vec![node("a", &[]), node("b", &[]), node("after_a", &["a"])],
    )
    .await;
    let counters = |s: S| async move { s.get_plan_counters(pid).await.unwrap().unwrap() };
    let first = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    assert_eq!(subtask_of(&first[0]), "a");
    s.finish_runs(&[done(first[0].run.id, Some(json!("old")), vec![])])
        .await
        .unwrap();
    let after_a = s.get_task(ids["after_a"]).await.unwrap().unwrap();
    assert_eq!(after_a.pending_dependencies, 0);
    assert_eq!(counters(s.clone()).await.completed, 1);

    let requeued = s
        .set_task_status(ids["a"], crate::StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(requeued.previous, TaskStatus::Completed);
    let after_a = s.get_task(ids["after_a"]).await.unwrap().unwrap();
    assert_eq!(after_a.pending_dependencies, 1, "waits for a's new output");
    let c = counters(s.clone()).await;
    assert_eq!((c.completed, c.status), (0, PlanStatus::InProgress));

    // a and b are ready; the dependent is not.
    let claims = claim_all(&s).await;
    let mut claimed: Vec<&str> = claims.iter().map(subtask_of).collect();
    claimed.sort_unstable();
    assert_eq!(claimed, ["a", "b"]);
    let a = claims.iter().find(|c| subtask_of(c) == "a").unwrap();
    s.finish_runs(&[done(a.run.id, Some(json!("new")), vec![])])
        .await
        .unwrap();
    let c = counters(s.clone()).await;
    assert_eq!(
        (c.completed, c.status),
        (1, PlanStatus::InProgress),
        "a counts once, and b and the dependent are still to run"
    );
    let dependent = claim_all(&s).await;
    assert_eq!(dependent.len(), 1);
    assert_eq!(subtask_of(&dependent[0]), "after_a");
    assert_eq!(dependent[0].inputs.get("a"), Some(&json!("new")));

    let b = claims.iter().find(|c| subtask_of(c) == "b").unwrap();
    s.finish_runs(&[
        done(b.run.id, None, vec![]),
        done(dependent[0].run.id, None, vec![]),
    ])
    .await
    .unwrap();
    let c = counters(s.clone()).await;
    assert_eq!((c.completed, c.status), (3, PlanStatus::Completed));
}

/// A subtask cancelled with its dependency (its plan left running) is not queued again
/// alone: it would wait for good for a dependency that will not complete, and its plan
/// would never finish. Queued again after that dependency, it runs after it, and the plan
/// completes.
pub async fn a_subtask_is_not_requeued_behind_a_dependency_that_will_not_complete(s: S) {
    let (pid, ids) =
        materialized(&s, vec![node("a", &[]), node("b", &["a"]), node("c", &[])]).await;
    let cancelled = s
        .set_task_status(ids["a"], crate::StatusChange::to(TaskStatus::Cancelled))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.cancelled_dependents, vec![ids["b"]]);
    let e = s
        .set_task_status(ids["b"], crate::StatusChange::requeue())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            crate::Error::Invalid(hive_models::Error::DependencyWillNotComplete { task, dependency, status: "cancelled" })
                if *task == ids["b"].to_string() && *dependency == ids["a"].to_string()
        ),
        "{e:?}"
    );
    assert_eq!(
        status_of(&s, ids["b"]).await,
        TaskStatus::Cancelled,
        "nothing changed"
    );

    for first in ["a", "b"] {
        s.set_task_status(ids[first], crate::StatusChange::requeue())
            .await
            .unwrap()
            .unwrap();
    }
    let b = s.get_task(ids["b"]).await.unwrap().unwrap();
    assert_eq!(b.pending_dependencies, 1, "b waits for a");
    let mut round_of = std::collections::HashMap::new();
    for round in 0.. {
        let claims = claim_all(&s).await;
        if claims.is_empty() {
            break;
        }
        for c in &claims {
            assert!(round_of.insert(subtask_of(c).to_owned(), round).is_none());
        }
        finish_all(&s, &claims).await;
    }
    assert_eq!(round_of.len(), 3, "{round_of:?}");
    assert!(round_of["b"] > round_of["a"], "{round_of:?}");
    let c = s.get_plan_counters(pid).await.unwrap().unwrap();
    assert_eq!((c.completed, c.status), (3, PlanStatus::Completed));
}

fn failing_for_good(subtasks: Vec<SubTask>) -> Vec<SubTask> {
    subtasks
        .into_iter()
        .map(|mut st| {
            st.max_retries = Some(0);
            st
        })
        .collect()
}

async fn status_of(s: &S, id: TaskId) -> TaskStatus {
    s.get_task(id).await.unwrap().unwrap().status
}

pub async fn a_retried_plan_runs_its_failed_and_cancelled_subtasks_again(s: S) {
    // a -> b -> c; e on its own.
    let subtasks = failing_for_good(vec![
        node("a", &[]),
        node("b", &["a"]),
        node("c", &["b"]),
        node("e", &[]),
    ]);
    let (pid, ids) = materialized(&s, subtasks).await;
    let roots = claim_all(&s).await;
    let outs: Vec<RunOutcome> = roots
        .iter()
        .map(|c| done(c.run.id, Some(json!({"from": subtask_of(c)})), vec![]))
        .collect();
    s.finish_runs(&outs).await.unwrap();
    let b = claim_all(&s).await.pop().unwrap();
    assert_eq!(b.task.id, ids["b"]);
    let rep = s
        .finish_runs(&[super::fixtures::failure(b.run.id, None)])
        .await
        .unwrap();
    assert_eq!(rep[0].plan_transition, Some(PlanStatus::Failed));
    assert_eq!(status_of(&s, ids["c"]).await, TaskStatus::Cancelled);

    assert_eq!(s.retry_plan(PlanId::new()).await.unwrap(), None);
    let requeued = s.retry_plan(pid).await.unwrap().unwrap();
    assert_eq!(requeued, [ids["b"], ids["c"]], "in insertion order");
    let p = s.get_plan_counters(pid).await.unwrap().unwrap();
    assert_eq!(p.status, PlanStatus::InProgress);
    assert_eq!((p.completed, p.failed, p.cancelled), (2, 0, 0));
    let c = s.get_task(ids["c"]).await.unwrap().unwrap();
    assert_eq!(c.status, TaskStatus::Queued);
    assert_eq!(c.pending_dependencies, 1, "c waits for b again");
    let b_task = s.get_task(ids["b"]).await.unwrap().unwrap();
    assert_eq!(b_task.attempts, 0, "a fresh retry budget");
    assert_eq!(
        s.retry_plan(pid).await.unwrap(),
        None,
        "a plan in progress is not retried"
    );

    // Only b is claimable, and a's output still reaches it.
    let again = claim_all(&s).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task.id, ids["b"]);
    assert_eq!(again[0].inputs["a"], json!({"from": "a"}));
    assert_eq!((again[0].task.attempts, again[0].run.run_number), (1, 2));
    s.finish_runs(&[done(again[0].run.id, Some(json!("b")), vec![])])
        .await
        .unwrap();
    let last = claim_all(&s).await.pop().unwrap();
    assert_eq!(last.task.id, ids["c"]);
    assert_eq!(last.inputs["b"], json!("b"));
    let rep = s
        .finish_runs(&[done(last.run.id, None, vec![])])
        .await
        .unwrap();
    assert_eq!(rep[0].plan_transition, Some(PlanStatus::Completed));
    let p = s.get_plan_counters(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed), (PlanStatus::Completed, 4));
    for k in ["a", "e"] {
        assert_eq!(
            s.list_runs(ids[k]).await.unwrap().len(),
            1,
            "{k} completed before the retry and did not run again"
        );
    }
    assert_eq!(s.list_runs(ids["b"]).await.unwrap().len(), 2);
    assert_eq!(
        s.retry_plan(pid).await.unwrap(),
        None,
        "a completed plan is not retried"
    );
}

pub async fn a_cancelled_plan_retried_resumes_and_one_with_nothing_left_completes(s: S) {
    let (pid, ids) = materialized(&s, vec![node("a", &[]), node("b", &["a"])]).await;
    let a = claim_all(&s).await.pop().unwrap();
    s.finish_runs(&[done(a.run.id, None, vec![])])
        .await
        .unwrap();
    s.cancel_plan(pid).await.unwrap().unwrap();
    assert_eq!(s.retry_plan(pid).await.unwrap().unwrap(), [ids["b"]]);
    assert_eq!(status_of(&s, ids["b"]).await, TaskStatus::Queued);
    let b = claim_all(&s).await.pop().unwrap();
    assert_eq!(b.task.id, ids["b"]);
    let rep = s
        .finish_runs(&[done(b.run.id, None, vec![])])
        .await
        .unwrap();
    assert_eq!(rep[0].plan_transition, Some(PlanStatus::Completed));

    // A failed subtask of a failed plan is not retried alone (the plan would never move
    // again, what depends on it cancelled): refused, naming the plan; the plan's retry
    // runs it, and its completion completes the plan.
    let (pid, ids) = materialized(
        &s,
        failing_for_good(vec![node("x", &[]), node("after_x", &["x"])]),
    )
    .await;
    let x = claim_all(&s).await.pop().unwrap();
    s.finish_runs(&[super::fixtures::failure(x.run.id, None)])
        .await
        .unwrap();
    let refused = s
        .set_task_status(ids["x"], crate::StatusChange::requeue())
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(&format!("plan `{pid}`, which is failed")),
        "{refused}"
    );
    let x_task = s.get_task(ids["x"]).await.unwrap().unwrap();
    assert_eq!(
        x_task.status,
        TaskStatus::Failed,
        "the refusal changed nothing"
    );
    assert_eq!(s.retry_plan(pid).await.unwrap().unwrap().len(), 2);
    for _ in 0..2 {
        let next = claim_all(&s).await.pop().unwrap();
        s.finish_runs(&[done(next.run.id, None, vec![])])
            .await
            .unwrap();
    }
    assert_eq!(
        s.get_plan_counters(pid).await.unwrap().unwrap().status,
        PlanStatus::Completed
    );
}

/// A subtask failing while its plan is retried: either the retry finds the failure and
/// queues it again, or the failure comes after and fails the plan again. Never a plan in
/// progress with a failed subtask (which would leave the plan's failure to its last task).
pub async fn a_failure_racing_a_retry_still_fails_the_plan(s: S) {
    for round in 0..20 {
        // A type of its own per round: the tasks an earlier round's retry queued stay put.
        let task_type = format!("race-{round}");
        let subtasks = (0..8)
            .map(|i| SubTask::new(format!("n{i}"), "racer", &task_type))
            .collect();
        let (pid, _) = materialized(&s, failing_for_good(subtasks)).await;
        let claims = s
            .claim_tasks(&crate::ClaimParams {
                task_types: vec![task_type],
                ..claim_params("w", 100)
            })
            .await
            .unwrap();
        assert_eq!(claims.len(), 8);
        s.finish_runs(&[super::fixtures::failure(claims[0].run.id, None)])
            .await
            .unwrap();
        let late: Vec<RunOutcome> = claims[1..4]
            .iter()
            .map(|c| super::fixtures::failure(c.run.id, None))
            .collect();
        let (retried, finished) = tokio::join!(
            {
                let s = s.clone();
                tokio::spawn(async move { s.retry_plan(pid).await })
            },
            {
                let s = s.clone();
                tokio::spawn(async move { s.finish_runs(&late).await })
            }
        );
        retried.unwrap().unwrap().unwrap();
        finished.unwrap().unwrap();
        let status = s.get_plan_counters(pid).await.unwrap().unwrap().status;
        let failed = s
            .list_tasks(&TaskFilter {
                status: Some(TaskStatus::Failed),
                ..TaskFilter::in_plan(pid)
            })
            .await
            .unwrap();
        assert!(
            failed.is_empty() || status == PlanStatus::Failed,
            "round {round}: plan {status} with {} failed subtasks",
            failed.len()
        );
    }
}

pub(super) fn prune_params(older_than: std::time::Duration, limit: u32) -> crate::PlanPruneParams {
    crate::PlanPruneParams {
        older_than,
        statuses: vec![
            PlanStatus::Completed,
            PlanStatus::Failed,
            PlanStatus::Cancelled,
        ],
        limit,
    }
}

async fn finish_all(s: &S, claims: &[Claim]) {
    let outs: Vec<RunOutcome> = claims
        .iter()
        .map(|c| done(c.run.id, None, vec![]))
        .collect();
    s.finish_runs(&outs).await.unwrap();
}

pub async fn finished_plans_are_pruned_with_their_tasks(s: S) {
    use std::time::Duration;
    let (first, first_ids) = materialized(&s, vec![node("a", &[]), node("b", &["a"])]).await;
    finish_all(&s, &claim_all(&s).await).await;
    finish_all(&s, &claim_all(&s).await).await;
    let (second, _) = materialized(&s, vec![node("c", &[])]).await;
    finish_all(&s, &claim_all(&s).await).await;
    // A failed plan whose other branch still runs.
    let (busy, busy_ids) =
        materialized(&s, failing_for_good(vec![node("x", &[]), node("y", &[])])).await;
    let claims = claim_all(&s).await;
    let x = claims.iter().find(|c| c.task.id == busy_ids["x"]).unwrap();
    let y = claims.iter().find(|c| c.task.id == busy_ids["y"]).unwrap();
    s.finish_runs(&[super::fixtures::failure(x.run.id, None)])
        .await
        .unwrap();
    let loose = s
        .insert_tasks(vec![hive_models::NewTask::new("loose", "test")])
        .await
        .unwrap()
        .ids[0];
    tokio::time::sleep(Duration::from_millis(5)).await;

    let running = crate::PlanPruneParams {
        statuses: vec![PlanStatus::InProgress],
        ..prune_params(Duration::ZERO, 10)
    };
    assert!(
        s.prune_plans(&running).await.is_err(),
        "unfinished plans are refused"
    );
    let young = s
        .prune_plans(&prune_params(Duration::from_secs(3600), 10))
        .await;
    assert_eq!(young.unwrap(), crate::PlansPruned::default());

    let oldest = s
        .prune_plans(&prune_params(Duration::ZERO, 1))
        .await
        .unwrap();
    assert_eq!(
        oldest,
        crate::PlansPruned { plans: 1, tasks: 2 },
        "the oldest first"
    );
    assert!(s.get_plan(first).await.unwrap().is_none());
    for k in ["a", "b"] {
        assert!(s.get_task(first_ids[k]).await.unwrap().is_none(), "{k}");
        assert!(s.list_runs(first_ids[k]).await.unwrap().is_empty(), "{k}");
    }
    let next = s
        .prune_plans(&prune_params(Duration::ZERO, 10))
        .await
        .unwrap();
    assert_eq!(next, crate::PlansPruned { plans: 1, tasks: 1 });
    assert!(s.get_plan(second).await.unwrap().is_none());
    assert!(
        s.get_plan(busy).await.unwrap().is_some(),
        "a failed plan with a subtask still running stays"
    );
    assert!(
        s.get_task(loose).await.unwrap().is_some(),
        "tasks of no plan stay"
    );

    finish_all(&s, std::slice::from_ref(y)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let last = s
        .prune_plans(&prune_params(Duration::ZERO, 10))
        .await
        .unwrap();
    assert_eq!(last, crate::PlansPruned { plans: 1, tasks: 2 });
    assert!(s.get_plan(busy).await.unwrap().is_none());
    assert!(s.list_plan_headers(None, None).await.unwrap().is_empty());
    assert!(s.get_task(loose).await.unwrap().is_some());
}

/// Pruning old tasks never reaches into a plan, finished or not: a completed subtask's
/// output is what its dependents still read, a failed one is what a retry runs again.
pub async fn task_prune_leaves_plan_subtasks_to_their_plan(s: S) {
    use std::time::Duration;
    let (failed, failed_ids) = materialized(&s, failing_for_good(vec![node("x", &[])])).await;
    let x = claim_all(&s).await.pop().unwrap();
    s.finish_runs(&[super::fixtures::failure(x.run.id, None)])
        .await
        .unwrap();
    let (_, ids) = materialized(&s, vec![node("a", &[]), node("b", &["a"])]).await;
    let a = claim_all(&s).await.pop().unwrap();
    s.finish_runs(&[done(a.run.id, Some(json!({"rows": 3})), vec![])])
        .await
        .unwrap();
    let loose = s
        .insert_tasks(vec![hive_models::NewTask::new("loose", "loose")])
        .await
        .unwrap()
        .ids[0];
    let only_loose = crate::ClaimParams {
        task_types: vec!["loose".into()],
        ..claim_params("w", 1)
    };
    let run = s
        .claim_tasks(&only_loose)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .run
        .id;
    s.finish_runs(&[success(run)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let every_finished = crate::PruneParams {
        older_than: Duration::from_millis(1),
        statuses: vec![
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ],
        limit: 100,
    };
    assert_eq!(
        s.prune_tasks(&every_finished).await.unwrap(),
        1,
        "only the task of no plan"
    );
    assert!(s.get_task(loose).await.unwrap().is_none());
    assert_eq!(status_of(&s, ids["a"]).await, TaskStatus::Completed);
    assert_eq!(status_of(&s, failed_ids["x"]).await, TaskStatus::Failed);
    assert_eq!(s.list_runs(ids["a"]).await.unwrap().len(), 1);
    // What the plans still need is all there: b's input, and x to run again.
    let b = claim_all(&s).await.pop().unwrap();
    assert_eq!(b.task.id, ids["b"]);
    assert_eq!(b.inputs.get("a"), Some(&json!({"rows": 3})));
    assert_eq!(
        s.retry_plan(failed).await.unwrap().unwrap(),
        [failed_ids["x"]]
    );
}

/// A plan cancelled before its tasks were created stays without them: creating them is
/// refused (they would run in a cancelled plan that never moves again), a submit of its
/// key creates none either, and a retry makes
/// it pending again, to be materialized and run as any new plan.
pub async fn a_plan_cancelled_before_its_tasks_exist_runs_only_once_retried(s: S) {
    let new =
        super::fixtures::plan(vec![node("a", &[]), node("b", &["a"])]).idempotency_key("once");
    let pid = s.insert_plan(new.clone()).await.unwrap();
    assert_eq!(s.cancel_plan(pid).await.unwrap(), Some(vec![]));
    let refused = s.materialize_plan(pid).await.unwrap_err();
    assert!(refused.to_string().contains("cancelled"), "{refused}");
    // A submit of the same key answers with the plan as it is.
    assert_eq!(s.submit_plan(new).await.unwrap(), (pid, 0));
    let tasks = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    assert!(tasks.is_empty(), "nothing was created");

    assert_eq!(s.retry_plan(pid).await.unwrap(), Some(vec![]));
    let counters = s.get_plan_counters(pid).await.unwrap().unwrap();
    assert_eq!(
        counters.status,
        PlanStatus::Pending,
        "pending, not running nothing"
    );
    assert_eq!(s.materialize_plan(pid).await.unwrap(), Some(2));
    for _ in 0..2 {
        let claims = claim_all(&s).await;
        assert_eq!(claims.len(), 1);
        s.finish_runs(&[success(claims[0].run.id)]).await.unwrap();
    }
    let counters = s.get_plan_counters(pid).await.unwrap().unwrap();
    assert_eq!(
        (counters.status, counters.completed),
        (PlanStatus::Completed, 2)
    );
}

/// A spawner requeued after its spawn ran spawns the same again on its next run: what the
/// plan holds already is kept (not refused as duplicates, which would fail the spawner for
/// good, and its plan with it, however often the plan was retried), and its dependent
/// waits for its new run before running again.
pub async fn a_spawner_run_again_keeps_what_it_spawned(s: S) {
    let (pid, ids) = materialized(
        &s,
        vec![
            node("split", &[]),
            node("join", &["split"]),
            node("side", &[]),
        ],
    )
    .await;
    let spawn = || vec![node("chunk", &["split"])];
    let first = claim_all(&s).await;
    let split = first.iter().find(|c| subtask_of(c) == "split").unwrap();
    let side = first.iter().find(|c| subtask_of(c) == "side").unwrap();
    s.finish_runs(&[done(split.run.id, Some(json!(1)), spawn())])
        .await
        .unwrap();
    let chunk = claim_all(&s).await;
    assert_eq!(chunk.len(), 1);
    s.finish_runs(&[success(chunk[0].run.id)]).await.unwrap();

    s.set_task_status(ids["split"], crate::StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    let again = claim_all(&s).await;
    assert_eq!(
        again.len(),
        1,
        "only the split: the join waits for it again"
    );
    let rep = s
        .finish_runs(&[done(again[0].run.id, Some(json!(2)), spawn())])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, crate::Finished::Completed, "{rep:?}");
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(p.total_subtasks, 4, "nothing added twice");

    let join = claim_all(&s).await;
    assert_eq!(join.len(), 1);
    assert_eq!(subtask_of(&join[0]), "join");
    assert_eq!(
        join[0].inputs.get("split"),
        Some(&json!(2)),
        "the new output"
    );
    s.finish_runs(&[success(join[0].run.id), success(side.run.id)])
        .await
        .unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 4));

    // Once more after the plan completed: what it spawned before, spawned again, is taken
    // by the finished plan too (it adds nothing), and the split completes again.
    s.set_task_status(ids["split"], crate::StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    let third = claim_all(&s).await;
    assert_eq!(third.len(), 1);
    let rep = s
        .finish_runs(&[done(third[0].run.id, Some(json!(3)), spawn())])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, crate::Finished::Completed, "{rep:?}");
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.status, p.completed_subtasks, p.failed_subtasks),
        (PlanStatus::Completed, 4, 0)
    );
}

/// `split` spawns `a` and `b` (after `a`); `a` spawns `x`, which re-wires `b` to wait for
/// it too. `split` requeued and run again spawns `a` and `b` as before: taken as what the
/// plan holds (not refused as duplicates, which would fail `split` and its plan for good).
pub async fn a_spawner_run_again_keeps_what_a_later_spawn_rewired(s: S) {
    let (pid, ids) = materialized(&s, vec![node("split", &[])]).await;
    let spawn = || vec![node("a", &["split"]), node("b", &["split", "a"])];
    let split = claim_all(&s).await;
    s.finish_runs(&[done(split[0].run.id, None, spawn())])
        .await
        .unwrap();
    let a = claim_all(&s).await;
    assert_eq!(a.len(), 1);
    s.finish_runs(&[done(a[0].run.id, None, vec![node("x", &["a"])])])
        .await
        .unwrap();
    s.set_task_status(ids["split"], crate::StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    let again = claim_all(&s).await;
    let mut names: Vec<&str> = again.iter().map(subtask_of).collect();
    names.sort_unstable();
    assert_eq!(names, ["split", "x"]);
    let split = again.iter().find(|c| subtask_of(c) == "split").unwrap();
    let x = again.iter().find(|c| subtask_of(c) == "x").unwrap();
    let rep = s
        .finish_runs(&[done(split.run.id, None, spawn())])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, crate::Finished::Completed, "{rep:?}");
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.total_subtasks), (PlanStatus::InProgress, 4));
    // The rest runs to the end: `x`, then `b`.
    s.finish_runs(&[success(x.run.id)]).await.unwrap();
    let b = claim_all(&s).await;
    assert_eq!(b.iter().map(subtask_of).collect::<Vec<_>>(), ["b"]);
    s.finish_runs(&[success(b[0].run.id)]).await.unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 4));
}
