//! Conformance cases for runs and workers: claims, finishes, retries, leases, releases,
//! the reaper, heartbeats, and the worker registry.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, RetryPolicy, Run, RunId, RunStatus, TaskId, TaskStatus, WorkerStatus};
use serde_json::json;

use super::fixtures::{
    claim_params, failure, leased, reap_params, registration, success, tasks, worker,
};
use super::suite::{claim_one, create, load, status};
use crate::{
    ClaimParams, Error, Finished, ReapParams, Store, WorkerFilter, WorkerRegistration,
    WorkerStatusChange,
};

type S = Arc<dyn Store>;

pub async fn claim_opens_run_and_respects_types(s: S) {
    let a = s
        .insert_tasks(vec![NewTask::new("a", "alpha").priority(1)])
        .await
        .unwrap()
        .ids[0];
    let b = s
        .insert_tasks(vec![NewTask::new("b", "beta").priority(9)])
        .await
        .unwrap()
        .ids[0];
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
        .unwrap()
        .ids[0];
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
        .unwrap()
        .ids[0];
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
    // A shorter lease asked for later shortens nothing: neither the expiry nor what the
    // worker's heartbeats extend it by (they would no longer keep the run alive).
    s.register_worker(&registration("w")).await.unwrap();
    let again = s.extend_lease(run, Duration::from_millis(1)).await.unwrap();
    assert_eq!(again, after);
    s.heartbeat(&worker("w"), None).await.unwrap().unwrap();
    let beat = s
        .get_run(run)
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at
        .unwrap();
    assert!(
        beat > before + chrono::Duration::seconds(100),
        "{beat} {before}"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.reap(&reap_params()).await.unwrap().requeued.is_empty());
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

/// A run its worker gives back with a reason (it lost the store for longer than its
/// lease): queued again at once, the attempt not counted, the run `cancelled` with the
/// reason and the log; a second give-back, or one after another worker took the task, is
/// stale.
pub async fn a_run_given_back_by_its_worker_is_queued_again_uncounted(s: S) {
    let id = create(&s, "t", 1).await;
    let (_, run) = claim_one(&s, "w").await;
    let give_back = |run| crate::RunOutcome {
        run_id: run,
        outcome: crate::Outcome::GiveBack {
            reason: "lost the store for 12s, longer than the lease".into(),
        },
        output_log: Some("half done".into()),
        waited: Duration::ZERO,
    };
    let rep = s.finish_runs(&[give_back(run)]).await.unwrap();
    assert_eq!(rep[0].finished, Finished::GivenBack);
    let t = load(&s, id).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::Queued, 0));
    assert!(t.assigned_worker.is_none());
    let r = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Cancelled);
    assert_eq!(
        r.error_message.as_deref(),
        Some("lost the store for 12s, longer than the lease")
    );
    assert_eq!(r.output_log.as_deref(), Some("half done"));
    let rep = s.finish_runs(&[give_back(run)]).await.unwrap();
    assert_eq!(rep[0].finished, Finished::Stale, "given back once");
    let (_, second) = claim_one(&s, "w2").await;
    assert_eq!(load(&s, id).await.attempts, 1);
    let rep = s.finish_runs(&[success(second)]).await.unwrap();
    assert_eq!(rep[0].finished, Finished::Completed);
}

pub async fn reap_expired_lease(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("t", "test").max_retries(1)])
        .await
        .unwrap()
        .ids[0];
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
    let status = |s: S| async move { s.get_worker(&worker("w")).await.unwrap().unwrap() };
    assert_eq!(status(s.clone()).await.status, WorkerStatus::Idle);
    // A beat alone keeps a status, and brings back a worker taken offline (late beats,
    // a partition healed), its reason gone with the status.
    s.heartbeat(&worker("w"), None).await.unwrap().unwrap();
    assert_eq!(status(s.clone()).await.status, WorkerStatus::Idle);
    let offline = WorkerStatusChange {
        status: WorkerStatus::Offline,
        reason: Some("no heartbeat for 30s".into()),
    };
    s.heartbeat(&worker("w"), Some(offline))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status(s.clone()).await.status, WorkerStatus::Offline);
    s.heartbeat(&worker("w"), None).await.unwrap().unwrap();
    let back = status(s.clone()).await;
    assert_eq!(
        (back.status, back.status_reason),
        (WorkerStatus::Active, None)
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
    assert_eq!(
        held(s.running_runs(&[worker("w")]).await.unwrap()),
        expected
    );
    // Both workers' in one read, by task.
    let mut both: Vec<(RunId, TaskId)> = mine
        .iter()
        .chain(&theirs)
        .map(|c| (c.run.id, c.task.id))
        .collect();
    both.sort_by_key(|(r, t)| (*t, *r));
    let read = s
        .running_runs(&[worker("w"), worker("other")])
        .await
        .unwrap();
    assert_eq!(held(read), both);
    // A run that ends, however it ends, is no longer held.
    s.finish_runs(&[success(mine[0].run.id)]).await.unwrap();
    s.release_runs(&[theirs[0].run.id]).await.unwrap();
    assert_eq!(
        held(s.running_runs(&[worker("w")]).await.unwrap()),
        vec![(mine[1].run.id, mine[1].task.id)]
    );
    assert!(s.running_runs(&[worker("other")]).await.unwrap().is_empty());
    assert!(s.running_runs(&[worker("ghost")]).await.unwrap().is_empty());
    assert!(s.running_runs(&[]).await.unwrap().is_empty());
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

pub async fn concurrent_claims_exactly_once(s: S) {
    const TASKS: usize = 500;
    const CLAIMERS: usize = 8;
    let batch: Vec<NewTask> = tasks("t", "test", TASKS);
    let ids: HashSet<TaskId> = s
        .insert_tasks(batch)
        .await
        .unwrap()
        .ids
        .into_iter()
        .collect();
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
