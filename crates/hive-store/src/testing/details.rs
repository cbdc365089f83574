//! Conformance cases for what every backend records beyond status: a run's timestamps, a
//! plan's metadata, and the reasons kept with a cancellation, a worker's status and a
//! lease that ran out.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, Run, RunStatus, TaskStatus, Worker, WorkerStatus};
use serde_json::json;

use super::fixtures::{leased, node, plan, reap_params, registration, success, worker};
use super::notifications::wait_for;
use crate::{Change, ReapParams, StatusChange, Store, TaskFilter, WorkerStatusChange};

type S = Arc<dyn Store>;

pub async fn plan_metadata_round_trips(s: S) {
    let metadata = json!({
        "requested_by": "ops@example.com",
        "ticket": {"id": 42, "labels": ["release", "é ✓"]},
        "dry_run": false,
    });
    let with = s
        .insert_plan(plan(vec![node("a", &[])]).metadata(metadata.clone()))
        .await
        .unwrap();
    let without = s.insert_plan(plan(vec![node("a", &[])])).await.unwrap();
    assert_eq!(s.get_plan(with).await.unwrap().unwrap().metadata, metadata);
    assert_eq!(
        s.get_plan(without).await.unwrap().unwrap().metadata,
        json!({}),
        "a plan submitted without metadata has an empty object"
    );
    let listed = s.list_plans(None, None).await.unwrap();
    let found = listed.iter().find(|p| p.id == with).unwrap();
    assert_eq!(found.metadata, metadata);
    // Materializing and finishing the plan leave its metadata alone.
    s.materialize_plan(with).await.unwrap();
    let run = s
        .claim_tasks(&leased("w", 1, Duration::from_secs(60)))
        .await
        .unwrap();
    s.finish_runs(&[success(run[0].run.id)]).await.unwrap();
    let done = s.get_plan(with).await.unwrap().unwrap();
    assert_eq!(done.metadata, metadata);
}

/// A plan submitted twice with one key is one plan: the second submission, whatever its
/// content, and a concurrent one, get the first plan's id and create nothing (but
/// materialize a first plan only stored). The key is kept with the plan and is free again
/// once the plan is pruned.
pub async fn a_plan_key_submits_once(s: S) {
    let keyed = |title: &str, key: &str| {
        let mut p = plan(vec![node("a", &[]), node("b", &["a"])]).idempotency_key(key);
        p.title = title.to_owned();
        p
    };
    let (first, created) = s.submit_plan(keyed("first", "order-42 ✓")).await.unwrap();
    assert_eq!(created, 2);
    let again = s.submit_plan(keyed("second", "order-42 ✓")).await.unwrap();
    assert_eq!(again, (first, 0), "the second submission creates nothing");
    let stored = s.get_plan(first).await.unwrap().unwrap();
    assert_eq!(stored.title, "first");
    assert_eq!(stored.idempotency_key.as_deref(), Some("order-42 ✓"));
    let header = s.get_plan_header(first).await.unwrap().unwrap();
    assert_eq!(header.idempotency_key.as_deref(), Some("order-42 ✓"));
    assert_eq!(
        s.insert_plan(keyed("third", "order-42 ✓")).await.unwrap(),
        first,
        "a stored plan answers an insert with its key too"
    );
    let counts = s.count_tasks(Some(first)).await.unwrap();
    assert_eq!(counts.values().sum::<u64>(), 2);

    // A plan stored but never materialized (a caller that died between the two steps) is
    // materialized by the submission that finds it: no plan is left that nothing runs.
    let stored = s.insert_plan(keyed("stored", "two-step")).await.unwrap();
    assert_eq!(
        s.submit_plan(keyed("stored", "two-step")).await.unwrap(),
        (stored, 2)
    );
    assert_eq!(
        s.submit_plan(keyed("stored", "two-step")).await.unwrap(),
        (stored, 0)
    );
    assert_eq!(s.materialize_plan(stored).await.unwrap(), Some(0));

    let (other, created) = s.submit_plan(keyed("other", "order-43")).await.unwrap();
    assert_ne!(other, first);
    assert_eq!(created, 2);
    let (plain, _) = s.submit_plan(plan(vec![node("a", &[])])).await.unwrap();
    assert_eq!(
        s.get_plan(plain).await.unwrap().unwrap().idempotency_key,
        None
    );
    let (plain_too, _) = s.submit_plan(plan(vec![node("a", &[])])).await.unwrap();
    assert_ne!(plain, plain_too, "plans without a key are never merged");

    let racers = (0..8).map(|i| {
        let (s, p) = (s.clone(), keyed(&format!("racer {i}"), "race"));
        tokio::spawn(async move { s.submit_plan(p).await.unwrap() })
    });
    let mut won = Vec::new();
    for r in futures::future::join_all(racers).await {
        won.push(r.unwrap());
    }
    let winner = won[0].0;
    assert!(won.iter().all(|(id, _)| *id == winner), "{won:?}");
    assert_eq!(won.iter().map(|(_, n)| n).sum::<u64>(), 2, "{won:?}");
    let plans = s.list_plan_headers(None, None).await.unwrap();
    assert_eq!(
        plans.len(),
        6,
        "first, stored, other, two plain and one racer"
    );

    s.cancel_plan(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pruned = s
        .prune_plans(&crate::PlanPruneParams {
            statuses: vec![hive_models::PlanStatus::Cancelled],
            ..super::plan_lifecycle::prune_params(Duration::ZERO, 10)
        })
        .await
        .unwrap();
    assert_eq!(pruned.plans, 1);
    let (reborn, created) = s.submit_plan(keyed("reborn", "order-42 ✓")).await.unwrap();
    assert_ne!(reborn, first, "a pruned plan's key is free again");
    assert_eq!(created, 2);
}

pub async fn runs_record_when_created_and_last_updated(s: S) {
    s.insert_tasks(vec![NewTask::new("t", "test")])
        .await
        .unwrap();
    s.register_worker(&registration("w")).await.unwrap();
    let lease = Duration::from_secs(60);
    let claim = s
        .claim_tasks(&leased("w", 1, lease))
        .await
        .unwrap()
        .remove(0);
    let opened = s.get_run(claim.run.id).await.unwrap().unwrap();
    assert_eq!(opened.created_at, opened.started_at);
    assert_eq!(opened.updated_at, opened.created_at);
    assert_eq!(opened, claim.run, "the claim reports the run as stored");
    // Extending the lease (directly, or by a heartbeat) is a change to the run.
    let until = s.extend_lease(claim.run.id, lease).await.unwrap();
    let extended = s.get_run(claim.run.id).await.unwrap().unwrap();
    assert!(extended.updated_at >= opened.updated_at);
    assert_eq!(until - extended.updated_at, chrono::Duration::seconds(60));
    s.heartbeat(&worker("w"), None).await.unwrap();
    let beat = s.get_run(claim.run.id).await.unwrap().unwrap();
    assert!(beat.updated_at >= extended.updated_at);
    assert_eq!(
        beat.lease_expires_at.unwrap() - beat.updated_at,
        chrono::Duration::seconds(60)
    );
    s.finish_runs(&[success(claim.run.id)]).await.unwrap();
    let closed = s.get_run(claim.run.id).await.unwrap().unwrap();
    assert_eq!(Some(closed.updated_at), closed.completed_at);
    assert_eq!(closed.created_at, opened.created_at, "creation never moves");
}

/// `get_runs` reads the runs asked for, as `get_run` would one by one, ordered by task then
/// run number whatever order they were asked in; ids of no run, and an empty list, read
/// nothing.
pub async fn runs_are_read_by_id_in_one_call(s: S) {
    let tasks = ["a", "b"].map(|t| NewTask::new(t, "test"));
    s.insert_tasks(tasks.to_vec()).await.unwrap();
    let lease = Duration::from_secs(60);
    let first = s.claim_tasks(&leased("w", 2, lease)).await.unwrap();
    assert_eq!(first.len(), 2);
    // The first task's first run is given back; its second run stays running.
    s.release_runs(&[first[0].run.id]).await.unwrap();
    let again = s.claim_tasks(&leased("w", 1, lease)).await.unwrap();
    assert_eq!(again.len(), 1, "the released task is claimed again");
    assert_eq!(again[0].task.id, first[0].task.id);
    let ids = [again[0].run.id, first[1].run.id, first[0].run.id];
    let ghost = hive_models::RunId::new();
    let mut asked = ids.to_vec();
    asked.push(ghost);
    asked.push(ids[0]);
    let read = s.get_runs(&asked).await.unwrap();
    let mut expected = Vec::new();
    for id in ids {
        expected.push(s.get_run(id).await.unwrap().unwrap());
    }
    expected.sort_by_key(|r: &Run| (r.task_id, r.run_number));
    assert_eq!(read, expected, "each run once, by task then run number");
    assert!(s.get_runs(&[]).await.unwrap().is_empty());
    assert!(s.get_runs(&[ghost]).await.unwrap().is_empty());
}

/// Tasks are read by id in one call: each existing one once, in insertion order, exactly
/// as one at a time reads it; unknown ids are left out.
pub async fn tasks_are_read_by_id_in_one_call(s: S) {
    let tasks = ["a", "b", "c"].map(|t| NewTask::new(t, "test").priority(3));
    let ids = s.insert_tasks(tasks.to_vec()).await.unwrap().ids;
    let claimed = s
        .claim_tasks(&leased("w", 1, Duration::from_secs(60)))
        .await;
    assert_eq!(claimed.unwrap().len(), 1);
    let ghost = hive_models::TaskId::new();
    let read = s
        .get_tasks(&[ids[2], ghost, ids[0], ids[1], ids[2]])
        .await
        .unwrap();
    let mut expected = Vec::new();
    for id in &ids {
        expected.push(s.get_task(*id).await.unwrap().unwrap());
    }
    assert_eq!(read, expected, "each task once, in insertion order");
    assert!(s.get_tasks(&[]).await.unwrap().is_empty());
    assert!(s.get_tasks(&[ghost]).await.unwrap().is_empty());
}

/// A run starts when its handler did: the wait its worker reports ([`crate::RunOutcome::waited`])
/// moves the start that much past the claim, and never past the run's end; in a batch of
/// successes (one statement on Postgres) and in a batch with a failure alike.
pub async fn a_runs_start_moves_by_its_wait_for_a_handler(s: S) {
    let tasks = ["a", "b", "c"].map(|t| NewTask::new(t, "test"));
    s.insert_tasks(tasks.to_vec()).await.unwrap();
    let claims = s
        .claim_tasks(&leased("w", 3, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(claims.len(), 3);
    // Long enough that a 30 ms wait ends before the runs do.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let wait = Duration::from_millis(30);
    let waited = |i: usize, waited: Duration| crate::RunOutcome {
        waited,
        ..success(claims[i].run.id)
    };
    s.finish_runs(&[waited(0, wait), waited(1, Duration::MAX)])
        .await
        .unwrap();
    let failed = crate::RunOutcome {
        waited: wait,
        ..super::fixtures::failure(claims[2].run.id, None)
    };
    s.finish_runs(&[failed]).await.unwrap();
    let run = |i: usize| {
        let s = s.clone();
        let id = claims[i].run.id;
        async move { s.get_run(id).await.unwrap().unwrap() }
    };
    let later = chrono::Duration::milliseconds(30);
    let (a, b, c) = (run(0).await, run(1).await, run(2).await);
    assert_eq!(a.started_at, claims[0].run.started_at + later);
    assert_eq!(Some(b.started_at), b.completed_at, "never past its end");
    assert_eq!(c.status, RunStatus::Failure);
    assert_eq!(c.started_at, claims[2].run.started_at + later);
    assert_eq!(
        a.created_at, claims[0].run.created_at,
        "creation never moves"
    );
}

pub async fn a_cancellation_keeps_its_reason(s: S) {
    let mut rx = s.subscribe().await.unwrap();
    let ids = s
        .insert_tasks(vec![NewTask::new("a", "test"), NewTask::new("b", "test")])
        .await
        .unwrap()
        .ids;
    let claim = s
        .claim_tasks(&leased("w", 1, Duration::from_secs(60)))
        .await
        .unwrap()
        .remove(0);
    let reason = "superseded by release 1.3".to_owned();
    let change = StatusChange::to(TaskStatus::Cancelled).because(Some(reason.clone()));
    let changed = s
        .set_task_status(claim.task.id, change)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.task.last_error.as_deref(), Some(reason.as_str()));
    let task = s.get_task(claim.task.id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.last_error.as_deref(), Some(reason.as_str()));
    let run = s.get_run(claim.run.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.error_message.as_deref(), Some(reason.as_str()));
    let (_, note) = wait_for(&mut rx, |n| match &n.change {
        Change::TaskStatus(c) if c.status == TaskStatus::Cancelled => Some(c.clone()),
        _ => None,
    })
    .await
    .expect("cancellation notification");
    assert_eq!(note.error.as_deref(), Some(reason.as_str()));
    // Without a reason nothing is made up.
    let other = ids.into_iter().find(|id| *id != claim.task.id).unwrap();
    let quiet = s
        .set_task_status(other, StatusChange::to(TaskStatus::Cancelled))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(quiet.task.last_error, None);
}

pub async fn a_worker_status_keeps_its_reason(s: S) {
    s.register_worker(&registration("w")).await.unwrap();
    let error = WorkerStatusChange {
        status: WorkerStatus::Error,
        reason: Some("GPU 0 fell off the bus".into()),
    };
    s.heartbeat(&worker("w"), Some(error))
        .await
        .unwrap()
        .unwrap();
    let w = s.get_worker(&worker("w")).await.unwrap().unwrap();
    assert_eq!(w.status, WorkerStatus::Error);
    assert_eq!(w.status_reason.as_deref(), Some("GPU 0 fell off the bus"));
    // A heartbeat without a status keeps it; a new status without a reason clears it.
    s.heartbeat(&worker("w"), None).await.unwrap().unwrap();
    let w = s.get_worker(&worker("w")).await.unwrap().unwrap();
    assert_eq!(w.status_reason.as_deref(), Some("GPU 0 fell off the bus"));
    let active = WorkerStatusChange::to(WorkerStatus::Active);
    s.heartbeat(&worker("w"), Some(active))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.get_worker(&worker("w"))
            .await
            .unwrap()
            .unwrap()
            .status_reason,
        None
    );
    // Registering again starts afresh.
    let error = WorkerStatusChange {
        status: WorkerStatus::Error,
        reason: Some("again".into()),
    };
    s.heartbeat(&worker("w"), Some(error)).await.unwrap();
    let w = s.register_worker(&registration("w")).await.unwrap();
    assert_eq!((w.status, w.status_reason), (WorkerStatus::Active, None));
    // The reaper says why it marked a worker offline.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let timeout = Duration::from_millis(10);
    let params = ReapParams {
        heartbeat_timeout: timeout,
        ..reap_params()
    };
    assert_eq!(
        s.reap(&params).await.unwrap().offline_workers,
        [worker("w")]
    );
    let w = s.get_worker(&worker("w")).await.unwrap().unwrap();
    assert_eq!(w.status, WorkerStatus::Offline);
    assert_eq!(w.status_reason, Some(Worker::silent_reason(timeout)));
}

pub async fn an_expired_lease_says_the_run_timed_out(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("t", "test").max_retries(0)])
        .await
        .unwrap()
        .ids[0];
    let short = leased("gone", 1, Duration::from_millis(50));
    let run = s.claim_tasks(&short).await.unwrap()[0].run.id;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(s.reap(&reap_params()).await.unwrap().failed, [id]);
    let r = s.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Timeout);
    assert_eq!(r.error_message.as_deref(), Some(Run::LEASE_EXPIRED));
    assert_eq!(Some(r.updated_at), r.completed_at);
    let task = s.get_task(id).await.unwrap().unwrap();
    assert_eq!(task.last_error.as_deref(), Some(Run::LEASE_EXPIRED));
}

/// A plan submitted in one step is stored and materialized as the two steps leave it:
/// the same plan row, the same tasks with the same dependencies, one announcement.
pub async fn a_plan_submitted_in_one_step_is_stored_as_two_steps_store_it(s: S) {
    let parent = s
        .insert_tasks(vec![NewTask::new("parent", "p")])
        .await
        .unwrap()
        .ids[0];
    let mut p = plan(vec![
        node("build", &[]),
        node("test", &["build"]),
        node("ship", &["build", "test"]),
    ])
    .parent_task_id(parent)
    .metadata(json!({"ticket": "é ✓"}));
    p.subtasks[0].priority = 5;
    p.subtasks[0].payload = json!({"command": "make"});
    p.subtasks[2].max_retries = Some(0);
    p.subtasks[2].timeout_secs = Some(30);
    let stepwise = s.insert_plan(p.clone()).await.unwrap();
    assert_eq!(s.materialize_plan(stepwise).await.unwrap(), Some(3));
    let mut rx = s.subscribe().await.unwrap();
    let (submitted, created) = s.submit_plan(p).await.unwrap();
    assert_eq!(created, 3);
    let announced = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Change::TaskCreated { count, .. } = rx.recv().await.unwrap().change {
                return count;
            }
        }
    })
    .await
    .expect("the tasks are announced");
    assert_eq!(announced, 3);
    assert_eq!(s.materialize_plan(submitted).await.unwrap(), Some(0));
    let (a, b) = (
        s.get_plan(stepwise).await.unwrap().unwrap(),
        s.get_plan(submitted).await.unwrap().unwrap(),
    );
    assert!(b.materialized);
    assert_eq!(
        (
            &b.title,
            &b.status,
            b.total_subtasks,
            &b.subtasks,
            &b.metadata
        ),
        (
            &a.title,
            &a.status,
            a.total_subtasks,
            &a.subtasks,
            &a.metadata
        )
    );
    assert_eq!(b.parent_task_id, Some(parent));
    let tasks = |pid| {
        let s = s.clone();
        async move {
            let tasks = s.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
            let subtask_of: HashMap<_, _> = tasks
                .iter()
                .map(|t| (t.id, t.plan_subtask_id.clone().unwrap()))
                .collect();
            let mut out: Vec<_> = tasks
                .iter()
                .map(|t| {
                    let mut deps: Vec<&String> =
                        t.dependencies.iter().map(|d| &subtask_of[d]).collect();
                    deps.sort();
                    format!(
                        "{:?} {} {} {:?} {} {} {:?} {:?} {:?} {:?}",
                        t.plan_subtask_id,
                        t.task_type,
                        t.priority,
                        t.status,
                        t.payload,
                        t.max_retries,
                        t.timeout_secs,
                        t.parent_task_id,
                        t.pending_dependencies,
                        deps
                    )
                })
                .collect();
            out.sort();
            out
        }
    };
    let (want, got) = (tasks(stepwise).await, tasks(submitted).await);
    assert_eq!(got.len(), 3);
    assert_eq!(got, want);
}
