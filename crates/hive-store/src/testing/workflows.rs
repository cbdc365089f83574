//! Conformance cases for plans as workflows: outputs reaching dependents, plans growing
//! while they run, a plan's last two subtasks finishing at once (requeues, retries and
//! pruning are in `plan_lifecycle`). Run by every backend (`tests/conformance.rs`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use hive_models::{PlanId, PlanStatus, RunId, SubTask, TaskId, TaskStatus};
use serde_json::json;

use super::fixtures::{claim_params, node, plan, success};
use crate::{Claim, Outcome, RunOutcome, Store, TaskFilter};

type S = Arc<dyn Store>;

pub(super) async fn materialized(
    s: &S,
    subtasks: Vec<SubTask>,
) -> (PlanId, HashMap<String, TaskId>) {
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

pub(super) async fn claim_all(s: &S) -> Vec<Claim> {
    s.claim_tasks(&claim_params("w", 100)).await.unwrap()
}

pub(super) fn subtask_of(c: &Claim) -> &str {
    c.task.plan_subtask_id.as_deref().unwrap()
}

pub(super) fn done(
    run_id: RunId,
    result: Option<serde_json::Value>,
    spawn: Vec<SubTask>,
) -> RunOutcome {
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
pub(super) async fn plan_notes(
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
