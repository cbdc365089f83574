//! Conformance cases for plans as workflows: outputs reaching dependents, plans growing
//! while they run, a plan's last two subtasks finishing at once, and failed plans retried. Run
//! by every backend (`tests/conformance.rs`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use hive_models::{PlanId, PlanStatus, RunId, SubTask, TaskId, TaskStatus};
use serde_json::json;

use super::fixtures::{claim_params, node, plan, success};
use crate::{Claim, Outcome, RunOutcome, Store, TaskFilter};

type S = Arc<dyn Store>;

async fn materialized(s: &S, subtasks: Vec<SubTask>) -> (PlanId, HashMap<String, TaskId>) {
    let pid = s.insert_plan(plan(subtasks)).await.unwrap();
    s.materialize_plan(pid).await.unwrap().unwrap();
    let ids = s
        .list_tasks(&TaskFilter::in_plan(pid))
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.plan_subtask_id.clone().unwrap(), t.id))
        .collect();
    (pid, ids)
}

async fn claim_all(s: &S) -> Vec<Claim> {
    s.claim_tasks(&claim_params("w", 100)).await.unwrap()
}

fn subtask_of(c: &Claim) -> &str {
    c.task.plan_subtask_id.as_deref().unwrap()
}

fn done(run_id: RunId, result: Option<serde_json::Value>, spawn: Vec<SubTask>) -> RunOutcome {
    RunOutcome {
        run_id,
        outcome: Outcome::Success { result, spawn },
        output_log: None,
        waited: std::time::Duration::ZERO,
    }
}

pub async fn outputs_reach_dependents_exactly(s: S) {
    let (_, ids) = materialized(
        &s,
        vec![node("a", &[]), node("b", &[]), node("join", &["a", "b"])],
    )
    .await;
    let output = json!({
        "text": "héllo → 世界 🐝 \"quoted\" \\ back",
        "nested": {"list": [1, 2.5, -3, null, true, {"deep": ["x"]}], "empty": {}},
        "big": 9007199254740993u64,
    });
    let claims = claim_all(&s).await;
    assert_eq!(claims.len(), 2);
    assert!(
        claims.iter().all(|c| c.inputs.is_empty()),
        "roots get no inputs"
    );
    let outcomes: Vec<RunOutcome> = claims
        .iter()
        .map(|c| match subtask_of(c) {
            "a" => done(c.run.id, Some(output.clone()), vec![]),
            _ => done(c.run.id, None, vec![]),
        })
        .collect();
    s.finish_runs(&outcomes).await.unwrap();
    let claims = claim_all(&s).await;
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].task.id, ids["join"]);
    let inputs = &claims[0].inputs;
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs["a"], output, "an output arrives exactly as returned");
    assert_eq!(
        inputs["b"],
        serde_json::Value::Null,
        "no output reads as null"
    );
}

pub async fn spawned_subtasks_join_before_the_dependents(s: S) {
    let (pid, ids) = materialized(&s, vec![node("split", &[]), node("summary", &["split"])]).await;
    let split = claim_all(&s).await.pop().unwrap();
    let spawn = vec![
        node("chunk-1", &["split"]),
        node("chunk-2", &["split"]),
        node("check", &["chunk-1"]),
    ];
    let rep = s
        .finish_runs(&[done(split.run.id, Some(json!({"chunks": 2})), spawn)])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, crate::Finished::Completed);
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(p.total_subtasks, 5);
    assert_eq!(p.dependency_graph["summary"], ["split", "chunk-2", "check"]);
    let summary = s.get_task(ids["summary"]).await.unwrap().unwrap();
    assert_eq!(summary.pending_dependencies, 2, "waits for the new sinks");
    let first = claim_all(&s).await;
    let mut got: Vec<&str> = first.iter().map(subtask_of).collect();
    got.sort();
    assert_eq!(got, ["chunk-1", "chunk-2"]);
    assert_eq!(first[0].inputs["split"], json!({"chunks": 2}));
    let outs: Vec<RunOutcome> = first
        .iter()
        .map(|c| done(c.run.id, Some(json!(subtask_of(c))), vec![]))
        .collect();
    s.finish_runs(&outs).await.unwrap();
    let check = claim_all(&s).await;
    assert_eq!(check.len(), 1, "only the check is ready, not the summary");
    assert_eq!(subtask_of(&check[0]), "check");
    s.finish_runs(&[success(check[0].run.id)]).await.unwrap();
    let last = claim_all(&s).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].task.id, ids["summary"]);
    let mut keys: Vec<&String> = last[0].inputs.keys().collect();
    keys.sort();
    assert_eq!(keys, ["check", "chunk-2", "split"]);
    s.finish_runs(&[success(last[0].run.id)]).await.unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 5));
}

pub async fn a_spawn_the_plan_cannot_take_adds_nothing(s: S) {
    let (pid, ids) = materialized(&s, vec![node("split", &[]), node("summary", &["split"])]).await;
    let split = claim_all(&s).await.pop().unwrap();
    // A cycle through the re-wiring: the summary waits for `x`, which waits for it.
    let spawn = vec![node("ok", &["split"]), node("x", &["summary"])];
    s.finish_runs(&[done(split.run.id, None, spawn)])
        .await
        .unwrap();
    let t = s.get_task(ids["split"]).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Failed, "refused for good");
    assert!(
        t.last_error.as_deref().unwrap().contains("cycle"),
        "{:?}",
        t.last_error
    );
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(p.total_subtasks, 2);
    assert_eq!(p.status, PlanStatus::Failed);
    let all = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    assert_eq!(all.len(), 2, "nothing half-added");
}

/// A spawned subtask may not wait for one that will never complete (cancelled alone, its
/// plan left running): it would wait for good and its plan never finish. The spawn is
/// refused, naming both, and nothing is added.
pub async fn a_spawn_waiting_on_a_cancelled_subtask_is_refused(s: S) {
    let (pid, ids) = materialized(&s, vec![node("split", &[]), node("extra", &[])]).await;
    super::fixtures::set_status(&*s, ids["extra"], TaskStatus::Cancelled).await;
    let split = claim_all(&s).await.pop().unwrap();
    assert_eq!(subtask_of(&split), "split");
    let spawn = vec![node("ok", &["split"]), node("after", &["extra"])];
    s.finish_runs(&[done(split.run.id, None, spawn)])
        .await
        .unwrap();
    let t = s.get_task(ids["split"]).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Failed, "refused for good");
    let why = t.last_error.unwrap();
    assert!(
        why.contains(r#"subtask "after" depends on "extra", which is cancelled"#),
        "{why}"
    );
    assert_eq!(s.get_plan(pid).await.unwrap().unwrap().total_subtasks, 2);
    let all = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    assert_eq!(all.len(), 2, "nothing added");
}

/// A subtask that finishes after its plan failed: its spawn is refused, naming why, so it
/// fails and what depends on it is cancelled — a join after it never runs without the
/// fan-out it spawns. The plan's retry runs it again, and then the spawn is taken.
pub async fn a_failed_plan_refuses_a_spawn_until_it_is_retried(s: S) {
    let (pid, ids) = materialized(
        &s,
        vec![
            node("bad", &[]),
            node("split", &[]),
            node("report", &["split"]),
        ],
    )
    .await;
    let claims = claim_all(&s).await;
    assert_eq!(claims.len(), 2);
    let run_of = |name: &str| {
        claims
            .iter()
            .find(|c| subtask_of(c) == name)
            .unwrap()
            .run
            .id
    };
    s.finish_runs(&[super::fixtures::failure(run_of("bad"), None)])
        .await
        .unwrap();
    assert_eq!(
        s.get_plan(pid).await.unwrap().unwrap().status,
        PlanStatus::Failed
    );
    let spawn = vec![node("sum-1", &["split"])];
    s.finish_runs(&[done(run_of("split"), None, spawn.clone())])
        .await
        .unwrap();
    let split = s.get_task(ids["split"]).await.unwrap().unwrap();
    assert_eq!(split.status, TaskStatus::Failed, "refused, not dropped");
    let why = split.last_error.unwrap();
    assert!(why.contains("failed and takes no more subtasks"), "{why}");
    let report = s.get_task(ids["report"]).await.unwrap().unwrap();
    assert_eq!(
        report.status,
        TaskStatus::Cancelled,
        "never runs without the fan-out"
    );
    assert_eq!(s.get_plan(pid).await.unwrap().unwrap().total_subtasks, 3);
    assert_eq!(
        s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap().len(),
        3
    );

    s.retry_plan(pid).await.unwrap().unwrap();
    let again = claim_all(&s).await;
    let mut outcomes = Vec::new();
    for c in &again {
        let spawned = if subtask_of(c) == "split" {
            spawn.clone()
        } else {
            vec![]
        };
        outcomes.push(done(c.run.id, None, spawned));
    }
    s.finish_runs(&outcomes).await.unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.total_subtasks), (PlanStatus::InProgress, 4));
    let next = claim_all(&s).await;
    assert_eq!(next.iter().map(subtask_of).collect::<Vec<_>>(), ["sum-1"]);
    s.finish_runs(&[success(next[0].run.id)]).await.unwrap();
    let last = claim_all(&s).await;
    assert_eq!(last.iter().map(subtask_of).collect::<Vec<_>>(), ["report"]);
    s.finish_runs(&[success(last[0].run.id)]).await.unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 4));
}

/// Cancelling a failed plan cancels the subtasks that did not depend on the failure and
/// are still open (one running, one waiting for it), closing the running one's run; the
/// plan stays failed. Once nothing is open, cancelling it again changes nothing.
pub async fn a_failed_plans_open_subtasks_can_be_cancelled(s: S) {
    let (pid, ids) = materialized(
        &s,
        vec![
            node("bad", &[]),
            node("long", &[]),
            node("after", &["long"]),
        ],
    )
    .await;
    let claims = claim_all(&s).await;
    let bad = claims.iter().find(|c| subtask_of(c) == "bad").unwrap();
    let long = claims.iter().find(|c| subtask_of(c) == "long").unwrap();
    s.finish_runs(&[super::fixtures::failure(bad.run.id, None)])
        .await
        .unwrap();
    let mut cancelled = s.cancel_plan(pid).await.unwrap().unwrap();
    cancelled.sort();
    let mut open = vec![ids["long"], ids["after"]];
    open.sort();
    assert_eq!(cancelled, open);
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.status, p.failed_subtasks, p.cancelled_subtasks),
        (PlanStatus::Failed, 1, 2)
    );
    let rep = s.finish_runs(&[success(long.run.id)]).await.unwrap();
    assert_eq!(
        rep[0].finished,
        crate::Finished::Stale,
        "its run was closed"
    );
    assert_eq!(s.cancel_plan(pid).await.unwrap(), Some(vec![]));
}

/// A plan's last open subtask spawns: the plan counts what it spawned before it decides
/// whether it is done (a count read before the spawn would complete it at once).
pub async fn a_last_subtask_that_spawns_keeps_its_plan_running(s: S) {
    let (pid, _) = materialized(&s, vec![node("split", &[])]).await;
    let split = claim_all(&s).await.pop().unwrap();
    s.finish_runs(&[done(split.run.id, None, vec![node("chunk", &["split"])])])
        .await
        .unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.status, p.total_subtasks, p.completed_subtasks),
        (PlanStatus::InProgress, 2, 1)
    );
    let chunk = claim_all(&s)
        .await
        .pop()
        .expect("the spawned subtask is ready");
    assert_eq!(subtask_of(&chunk), "chunk");
    s.finish_runs(&[success(chunk.run.id)]).await.unwrap();
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 2));
}

pub async fn a_stale_run_spawns_nothing(s: S) {
    let (pid, _) = materialized(&s, vec![node("split", &[])]).await;
    let split = claim_all(&s).await.pop().unwrap();
    s.finish_runs(&[success(split.run.id)]).await.unwrap();
    let late = done(split.run.id, None, vec![node("late", &["split"])]);
    let rep = s.finish_runs(&[late]).await.unwrap();
    assert_eq!(rep[0].finished, crate::Finished::Stale);
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!((p.total_subtasks, p.status), (1, PlanStatus::Completed));
}

pub async fn last_two_subtasks_finishing_at_once_complete_the_plan_once(s: S) {
    for _ in 0..15 {
        let (pid, _) = materialized(&s, vec![node("a", &[]), node("b", &[])]).await;
        let mut notes = s.subscribe().await.unwrap();
        let claims = claim_all(&s).await;
        assert_eq!(claims.len(), 2);
        let (one, two) = (success(claims[0].run.id), success(claims[1].run.id));
        let (s1, s2) = (s.clone(), s.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { s1.finish_runs(&[one]).await }),
            tokio::spawn(async move { s2.finish_runs(&[two]).await }),
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();
        let p = s.get_plan(pid).await.unwrap().unwrap();
        assert_eq!((p.status, p.completed_subtasks), (PlanStatus::Completed, 2));
        let completed = plan_notes(&mut notes, pid, PlanStatus::Completed).await;
        assert_eq!(completed, 1, "the plan completes once");
    }
}

/// A join whose parents finish in separate transactions at the same instant waits for the
/// last of them and then becomes ready once. On Postgres a finish that finds the join's row
/// held credits it instead of waiting and folds the credit just after its commit, so the
/// join may become ready a moment after the finishes return: claims poll for it.
pub async fn a_join_whose_parents_finish_at_once_becomes_ready_once(s: S) {
    for _ in 0..15 {
        let parents = ["a", "b", "c"];
        let mut nodes: Vec<SubTask> = parents.iter().map(|p| node(p, &[])).collect();
        nodes.push(node("j", &parents));
        let (_, ids) = materialized(&s, nodes).await;
        let claims = claim_all(&s).await;
        assert_eq!(claims.len(), 3, "the join waits");
        let finishes: Vec<_> = claims
            .iter()
            .map(|c| {
                let (s, run, out) = (s.clone(), c.run.id, json!(subtask_of(c)));
                tokio::spawn(async move { s.finish_runs(&[done(run, Some(out), vec![])]).await })
            })
            .collect();
        for f in finishes {
            f.await.unwrap().unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let next = loop {
            let next = claim_all(&s).await;
            if !next.is_empty() || std::time::Instant::now() > deadline {
                break next;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(
            next.len(),
            1,
            "the join is ready once its last parent finished"
        );
        assert_eq!(next[0].task.id, ids["j"]);
        for p in parents {
            assert_eq!(
                next[0].inputs.get(p),
                Some(&json!(p)),
                "{p}'s output reaches the join"
            );
        }
        s.finish_runs(&[success(next[0].run.id)]).await.unwrap();
    }
}

pub async fn ten_thousand_subtasks_submitted_and_drained(s: S) {
    // 100 chains of 100 would take 100 rounds; a wide plan drains in a few batches.
    let n = 10_000;
    let mut subtasks = vec![node("root", &[])];
    subtasks.extend((1..n - 1).map(|i| node(&format!("n{i}"), &["root"])));
    let middle: Vec<String> = (1..n - 1).map(|i| format!("n{i}")).collect();
    let middle: Vec<&str> = middle.iter().map(String::as_str).collect();
    subtasks.push(node("join", &middle));
    let (pid, ids) = materialized(&s, subtasks).await;
    assert_eq!(ids.len(), n);
    let done = super::fixtures::drain(s.clone(), "w".into(), 500).await;
    assert_eq!(done.len(), n);
    let p = s.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(
        (p.status, p.completed_subtasks as usize),
        (PlanStatus::Completed, n)
    );
}

/// How many notifications say plan `pid` moved to `status`: waits for the first (up to 10 s;
/// Postgres delivers after commit), then counts what else arrives within half a second.
async fn plan_notes(
    rx: &mut tokio::sync::broadcast::Receiver<crate::Notification>,
    pid: PlanId,
    status: PlanStatus,
) -> usize {
    let is_it = |n: &crate::Notification| {
        matches!(&n.change, crate::Change::PlanStatus { plan_id, status: to }
            if *plan_id == pid && *to == status)
    };
    let mut seen = 0;
    let mut deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(n)) if is_it(&n) => {
                if seen == 0 {
                    deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
                }
                seen += 1;
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => return seen,
        }
    }
}

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
        .unwrap()[0];
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
        .unwrap()[0];
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
