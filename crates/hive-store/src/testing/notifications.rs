//! Conformance cases for what the store announces: each change after its commit, and every
//! task of a large batch.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hive_models::{TaskId, TaskStatus};

use super::fixtures::{claim_params, failure, success, tasks};
use super::suite::{claim_one, create};
use crate::{Change, Store};

type S = Arc<dyn Store>;

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
        .ids
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
