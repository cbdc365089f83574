//! Conformance cases for plans: materialization, dependencies gating claims, failure and
//! cancellation cascades, the plan's status moves, and freed dependents announced.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, PlanStatus, RetryPolicy, RunStatus, TaskId, TaskStatus};
use serde_json::json;

use super::fixtures::{claim_params, failure, node, plan, set_status, success};
use super::suite::{claim_one, diamond, load, materialize, plan_row, status};
use crate::{Change, Finished, Store, TaskFilter};

type S = Arc<dyn Store>;

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

/// `subtask_ids` names the plan subtasks among the ids asked for (each once, however often
/// asked); a task outside any plan and an unknown id are absent, as is everything for no ids.
pub async fn subtask_ids_name_a_plans_tasks(s: S) {
    let (_, ids) = materialize(&s, diamond()).await;
    let plain = s
        .insert_tasks(vec![NewTask::new("plain", "test")])
        .await
        .unwrap()
        .ids[0];
    let ghost = TaskId::new();
    let asked: Vec<TaskId> = ["a", "b", "d"]
        .iter()
        .map(|k| ids[*k])
        .chain([plain, ghost, ids["a"]])
        .collect();
    let named = s.subtask_ids(&asked).await.unwrap();
    let expected: HashMap<TaskId, String> = ["a", "b", "d"]
        .iter()
        .map(|k| (ids[*k], (*k).to_owned()))
        .collect();
    assert_eq!(named, expected);
    assert!(s.subtask_ids(&[]).await.unwrap().is_empty());
    assert!(s.subtask_ids(&[plain, ghost]).await.unwrap().is_empty());
}

/// The run `claims` opened for `task`.
pub(super) fn run_of(claims: &[crate::Claim], task: TaskId) -> hive_models::RunId {
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
    let x = s.insert_tasks(vec![x]).await.unwrap().ids[0];
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

/// A claim in the same step as a finish ranks the dependents the finish freed with the
/// tasks already ready, in queue order, and takes only its worker's types; the freed ones
/// it leaves are ready for the next claim, and announced.
pub async fn freed_dependents_compete_with_ready_tasks_in_queue_order(s: S) {
    // a -> (low, other): `low` ranks below a task made ready meanwhile, and `other` is of a
    // type the claiming worker does not take.
    let mut low = node("low", &["a"]);
    low.priority = 0;
    let mut other = node("other", &["a"]);
    other.task_type = "elsewhere".into();
    let (_, ids) = materialize(&s, plan(vec![node("a", &[]), low, other])).await;
    let (a, run) = claim_one(&s, "w").await;
    assert_eq!(a, ids["a"]);
    let mut urgent = NewTask::new("urgent", "test");
    urgent.priority = 5;
    let urgent = s.insert_tasks(vec![urgent]).await.unwrap().ids[0];
    let mut rx = s.subscribe().await.unwrap();
    let mut tests_only = claim_params("w", 1);
    tests_only.task_types = vec!["test".into()];
    let (_, claims) = s
        .finish_and_claim(&[success(run)], &tests_only)
        .await
        .unwrap();
    assert_eq!(
        claims.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![urgent]
    );
    let mut announced = ready_notes(&s, &mut rx).await;
    announced.sort();
    let mut freed = vec![ids["low"], ids["other"]];
    freed.sort();
    assert_eq!(announced, freed);
    for id in &freed {
        let t = load(&s, *id).await;
        assert_eq!((t.status, t.pending_dependencies), (TaskStatus::Queued, 0));
    }
    // The next step takes `low`; a worker of the other type takes `other`.
    let (_, claims) = s
        .finish_and_claim(&[success(claims_run(&s, urgent).await)], &tests_only)
        .await
        .unwrap();
    assert_eq!(
        claims.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![ids["low"]]
    );
    let mut elsewhere = claim_params("v", 5);
    elsewhere.task_types = vec!["elsewhere".into()];
    let claims = s.claim_tasks(&elsewhere).await.unwrap();
    assert_eq!(
        claims.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![ids["other"]]
    );
    // A freed dependent taken in the same step as its dependency's finish runs with that
    // dependency's output, and is counted down.
    let (_, ids) = materialize(&s, plan(vec![node("p", &[]), node("q", &["p"])])).await;
    let (_, run) = claim_one(&s, "w").await;
    let mut done = success(run);
    if let crate::Outcome::Success { result, .. } = &mut done.outcome {
        *result = Some(json!({"from": "p"}));
    }
    let (_, claims) = s
        .finish_and_claim(&[done], &claim_params("w", 3))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].task.id, ids["q"]);
    assert_eq!(claims[0].task.pending_dependencies, 0);
    assert_eq!(claims[0].inputs["p"], json!({"from": "p"}));
    assert_eq!(load(&s, ids["q"]).await.pending_dependencies, 0);
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

/// Plans are counted by status as they are listed: three submitted, one of them cancelled.
pub async fn plans_are_counted_by_status(s: S) {
    assert_eq!(s.count_plans(None).await.unwrap(), 0);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.submit_plan(plan(vec![node("a", &[])])).await.unwrap().0);
    }
    s.cancel_plan(ids[0]).await.unwrap().unwrap();
    assert_eq!(s.count_plans(None).await.unwrap(), 3);
    assert_eq!(s.count_plans(Some(PlanStatus::Cancelled)).await.unwrap(), 1);
    for &status in PlanStatus::ALL {
        let listed = s.list_plan_headers(Some(status), None).await.unwrap().len();
        assert_eq!(
            s.count_plans(Some(status)).await.unwrap(),
            listed as u64,
            "{status}"
        );
    }
}
