//! Conformance cases for retry policies: full jitter spreads a burst of failures over the
//! backoff window, a task's own policy replaces the caller's, and a snooze gives its
//! attempt back and is bounded by the snoozes alone, which a plan retry gives back.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, RetryPolicy, RunStatus, TaskStatus};

use super::fixtures::{claim_params, failure};
use crate::{Finished, Outcome, RunOutcome, Store};

type S = Arc<dyn Store>;

fn snooze(run_id: hive_models::RunId, delay: Duration, limit: u32) -> RunOutcome {
    RunOutcome {
        run_id,
        outcome: Outcome::Snooze { delay, limit },
        output_log: None,
        waited: std::time::Duration::ZERO,
    }
}

/// Fifty tasks failing in one batch under a 10 s full-jitter backoff come back spread over
/// the window, not at one instant.
pub async fn full_jitter_spreads_a_burst_of_retries(s: S) {
    let n = 50;
    let news: Vec<NewTask> = (0..n)
        .map(|i| NewTask::new(format!("burst {i}"), "test"))
        .collect();
    s.insert_tasks(news).await.unwrap();
    let claims = s.claim_tasks(&claim_params("w", n)).await.unwrap();
    assert_eq!(claims.len(), n as usize);
    let window = Duration::from_secs(10);
    let policy = RetryPolicy::exponential(window, window);
    let outcomes: Vec<RunOutcome> = claims
        .iter()
        .map(|c| failure(c.run.id, Some(policy)))
        .collect();
    let before = s.now().await.unwrap();
    let reports = s.finish_runs(&outcomes).await.unwrap();
    let after = s.now().await.unwrap();
    let mut delays: Vec<f64> = reports
        .iter()
        .map(|r| match r.finished {
            Finished::Retrying { run_at } => (run_at - before).as_seconds_f64(),
            ref other => panic!("expected a retry, got {other:?}"),
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let span = (after - before).as_seconds_f64();
    assert!(delays[0] >= 0.0, "{delays:?}");
    assert!(*delays.last().unwrap() <= 10.0 + span, "{delays:?}");
    // Uniform over 10 s: with 50 draws, the chance that all fall in one half is 2^-49.
    assert!(
        delays[0] < 5.0 && *delays.last().unwrap() > 5.0,
        "{delays:?}"
    );
    delays.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    assert!(
        delays.len() > 40,
        "retries at distinct instants: {delays:?}"
    );
}

/// A task created with its own policy retries under it, whatever policy its worker passes;
/// a permanent failure (no policy) still fails it at once.
pub async fn a_tasks_own_policy_replaces_the_callers(s: S) {
    let own =
        RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(60)).without_jitter();
    let ids = s
        .insert_tasks(vec![
            NewTask::new("patient", "test").retry_policy(own),
            NewTask::new("patient but broken", "test").retry_policy(own),
        ])
        .await
        .unwrap()
        .ids;
    assert_eq!(
        s.get_task(ids[0]).await.unwrap().unwrap().retry_policy,
        Some(own),
        "the policy round-trips"
    );
    let claims = s.claim_tasks(&claim_params("w", 2)).await.unwrap();
    let before = s.now().await.unwrap();
    let reports = s
        .finish_runs(&[
            failure(claims[0].run.id, Some(RetryPolicy::IMMEDIATE)),
            failure(claims[1].run.id, None),
        ])
        .await
        .unwrap();
    let Finished::Retrying { run_at } = reports[0].finished else {
        panic!("{:?}", reports[0]);
    };
    assert!(
        (run_at - before).as_seconds_f64() >= 59.0,
        "the task's 60 s backoff, not the caller's immediate one: {run_at} vs {before}"
    );
    assert_eq!(reports[1].finished, Finished::Failed);
}

/// A snooze requeues the task for later, gives the attempt back, closes the run
/// `cancelled` noting when it runs again; once the limit is reached, the next snooze fails
/// the task for good.
pub async fn snoozes_give_the_attempt_back_and_are_bounded(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("sleepy", "test").max_retries(0)])
        .await
        .unwrap()
        .ids[0];
    let limit = 2;
    for round in 1..=limit {
        let claims = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
        assert_eq!(
            claims.len(),
            1,
            "round {round}: claimable again after the snooze"
        );
        let run = claims[0].run.id;
        let rep = s
            .finish_runs(&[snooze(run, Duration::from_millis(300), limit)])
            .await
            .unwrap();
        assert!(
            matches!(rep[0].finished, Finished::Snoozed { .. }),
            "{:?}",
            rep[0]
        );
        let t = s.get_task(id).await.unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.attempts, 0, "a snooze uses up no attempt");
        let closed = s.get_run(run).await.unwrap().unwrap();
        assert_eq!(closed.status, RunStatus::Cancelled);
        assert!(
            closed
                .error_message
                .as_deref()
                .is_some_and(|e| e.starts_with("snoozed until")),
            "{closed:?}"
        );
        assert!(
            s.claim_tasks(&claim_params("w", 1))
                .await
                .unwrap()
                .is_empty(),
            "not claimable before the snooze ends"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    let claims = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    let rep = s
        .finish_runs(&[snooze(claims[0].run.id, Duration::from_millis(300), limit)])
        .await
        .unwrap();
    assert_eq!(
        rep[0].finished,
        Finished::Failed,
        "the limit bounds snoozing"
    );
    let t = s.get_task(id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.last_error
            .as_deref()
            .is_some_and(|e| e.contains("snoozed 2 times")),
        "{t:?}"
    );
}

/// A run given back (a worker stopping gives back what it holds) is not a snooze: a task
/// given back, then snoozed under a limit of 1, waits rather than failing.
pub async fn a_run_given_back_is_not_a_snooze(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("handed back", "test").max_retries(0)])
        .await
        .unwrap()
        .ids[0];
    let claims = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    assert_eq!(s.release_runs(&[claims[0].run.id]).await.unwrap(), vec![id]);
    let claims = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    assert_eq!(claims.len(), 1, "given back: claimable at once");
    let rep = s
        .finish_runs(&[snooze(claims[0].run.id, Duration::from_secs(60), 1)])
        .await
        .unwrap();
    assert!(
        matches!(rep[0].finished, Finished::Snoozed { .. }),
        "the first snooze of a task given back once: {:?}",
        rep[0]
    );
}

/// A plan retry gives a subtask a fresh snooze budget, as it gives its attempts back: the
/// snoozes of its earlier runs do not count against the next one.
pub async fn a_plan_retry_gives_a_subtask_its_snoozes_back(s: S) {
    let subtask = hive_models::SubTask::new("poll", "polls", "test").max_retries(0);
    let (plan, _) = s
        .submit_plan(super::fixtures::plan(vec![subtask]))
        .await
        .unwrap();
    let snoozed = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    let rep = s
        .finish_runs(&[snooze(snoozed[0].run.id, Duration::from_millis(100), 1)])
        .await
        .unwrap();
    assert!(matches!(rep[0].finished, Finished::Snoozed { .. }));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let failed = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    let rep = s
        .finish_runs(&[failure(failed[0].run.id, None)])
        .await
        .unwrap();
    assert_eq!(rep[0].finished, Finished::Failed);
    assert_eq!(s.retry_plan(plan).await.unwrap().map(|t| t.len()), Some(1));

    let again = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    assert_eq!(again.len(), 1, "the retried subtask runs again");
    let rep = s
        .finish_runs(&[snooze(again[0].run.id, Duration::from_secs(60), 1)])
        .await
        .unwrap();
    assert!(
        matches!(rep[0].finished, Finished::Snoozed { .. }),
        "the first snooze since the retry: {:?}",
        rep[0]
    );
}

/// A completed task queued again no longer carries its result (a failure next must not
/// read as the earlier success), and gets one again only by finishing.
pub async fn a_requeued_task_loses_its_result_until_it_finishes_again(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("report", "test").max_retries(0)])
        .await
        .unwrap()
        .ids[0];
    let first = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    s.finish_runs(&[super::fixtures::success(first[0].run.id)])
        .await
        .unwrap();
    assert!(s.get_task(id).await.unwrap().unwrap().result.is_some());
    s.set_task_status(id, crate::StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    let t = s.get_task(id).await.unwrap().unwrap();
    assert_eq!((t.status, t.result), (TaskStatus::Queued, None));
    let again = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    s.finish_runs(&[failure(again[0].run.id, None)])
        .await
        .unwrap();
    let t = s.get_task(id).await.unwrap().unwrap();
    assert_eq!((t.status, t.result), (TaskStatus::Failed, None));
}

/// A queued task waiting out its retry's backoff, queued again by hand, may run at once.
pub async fn a_queued_task_queued_again_runs_now(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("later", "test").max_retries(2)])
        .await
        .unwrap()
        .ids[0];
    let first = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    let minute =
        RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(60)).without_jitter();
    s.finish_runs(&[failure(first[0].run.id, Some(minute))])
        .await
        .unwrap();
    assert!(
        s.claim_tasks(&claim_params("w", 1))
            .await
            .unwrap()
            .is_empty(),
        "waiting out its backoff"
    );
    s.set_task_status(id, crate::StatusChange::requeue())
        .await
        .unwrap()
        .unwrap();
    let now = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    assert_eq!(now.len(), 1, "queued again: claimable at once");
    assert_eq!(now[0].task.id, id);
}
