//! Conformance cases for the operator's reads: keyset pages (newest first, every filter,
//! no row twice or missed across pages, a bad limit refused) and the queue statistics.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use hive_models::{NewTask, RetryPolicy, SubTask, TaskId, TaskStatus};

use super::fixtures::{claim_params, failure, plan, success, tasks};
use crate::{ClaimParams, Error, Store, TaskPageParams};

type S = Arc<dyn Store>;

fn params(limit: u32) -> TaskPageParams {
    TaskPageParams {
        limit,
        ..TaskPageParams::default()
    }
}

/// Every id the pages of `p` yield, following the cursor page after page.
async fn walk(s: &S, mut p: TaskPageParams) -> Vec<TaskId> {
    let mut all = Vec::new();
    loop {
        let page = s.page_tasks(&p).await.unwrap();
        assert!(page.len() <= p.limit as usize);
        let Some(last) = page.last() else {
            return all;
        };
        p.before = Some(last.id);
        all.extend(page.iter().map(|t| t.id));
    }
}

pub async fn task_pages_are_newest_first_and_follow_the_cursor(s: S) {
    let mut ids = s.insert_tasks(tasks("a", "alpha", 7)).await.unwrap().ids;
    ids.extend(s.insert_tasks(tasks("b", "beta", 5)).await.unwrap().ids);
    let mut newest_first = ids.clone();
    newest_first.sort_by_key(|x| std::cmp::Reverse(*x));
    assert_eq!(walk(&s, params(3)).await, newest_first, "pages of 3");
    assert_eq!(walk(&s, params(500)).await, newest_first, "one page");
    let betas = walk(
        &s,
        TaskPageParams {
            task_type: Some("beta".into()),
            ..params(2)
        },
    )
    .await;
    assert_eq!(betas, newest_first[..5].to_vec(), "the type filter");
    let titled = walk(
        &s,
        TaskPageParams {
            title_contains: Some("a1".into()),
            ..params(10)
        },
    )
    .await;
    assert_eq!(
        titled,
        vec![ids[1]],
        "the title filter is a substring match"
    );
    let literal = walk(
        &s,
        TaskPageParams {
            title_contains: Some("%".into()),
            ..params(10)
        },
    )
    .await;
    assert!(literal.is_empty(), "`%` is literal, not a wildcard");
    for bad in [0, TaskPageParams::MAX_LIMIT + 1] {
        let e = s.page_tasks(&params(bad)).await.unwrap_err();
        assert!(matches!(e, Error::Rejected(_)), "{e}");
    }
}

pub async fn task_pages_filter_by_status_worker_and_plan(s: S) {
    let ids = s.insert_tasks(tasks("t", "test", 4)).await.unwrap().ids;
    let claims = s.claim_tasks(&claim_params("pager", 2)).await.unwrap();
    assert_eq!(claims.len(), 2);
    s.finish_runs(&[success(claims[0].run.id)]).await.unwrap();
    let running: Vec<TaskId> = walk(
        &s,
        TaskPageParams {
            status: Some(TaskStatus::InProgress),
            ..params(5)
        },
    )
    .await;
    assert_eq!(running, vec![claims[1].task.id]);
    let by_worker = walk(
        &s,
        TaskPageParams {
            worker: Some(claims[0].run.worker_id.clone()),
            ..params(5)
        },
    )
    .await;
    let mut both = vec![claims[0].task.id, claims[1].task.id];
    both.sort_by_key(|x| std::cmp::Reverse(*x));
    assert_eq!(by_worker, both, "the worker filter: what it ran or runs");
    let plan = s
        .insert_plan(super::fixtures::plan(vec![super::fixtures::node("x", &[])]))
        .await
        .unwrap();
    s.materialize_plan(plan).await.unwrap();
    let in_plan = walk(
        &s,
        TaskPageParams {
            plan_id: Some(plan),
            ..params(5)
        },
    )
    .await;
    assert_eq!(in_plan.len(), 1);
    assert!(!ids.contains(&in_plan[0]));
}

pub async fn queue_stats_count_types_ready_age_and_finished_runs(s: S) {
    let before = s.now().await.unwrap();
    s.insert_tasks(tasks("a", "alpha", 3)).await.unwrap();
    s.insert_tasks(vec![NewTask::new("b", "beta")])
        .await
        .unwrap();
    let claims = s.claim_tasks(&claim_params("stats", 2)).await.unwrap();
    s.finish_runs(&[success(claims[0].run.id), failure(claims[1].run.id, None)])
        .await
        .unwrap();
    let stats = s.queue_stats(Some(before)).await.unwrap();
    let finished = s.count_finished_tasks().await.unwrap();
    let of = |ty: &str, st: TaskStatus| {
        (stats.counts.iter().chain(&finished))
            .filter(|c| c.task_type == ty && c.status == st)
            .map(|c| c.count)
            .sum::<u64>()
    };
    // Queue order: the first two alphas were claimed; one completed, one failed for good.
    assert_eq!(of("alpha", TaskStatus::Completed), 1);
    assert_eq!(of("alpha", TaskStatus::Failed), 1);
    assert_eq!(of("alpha", TaskStatus::Queued), 1);
    assert_eq!(of("beta", TaskStatus::Queued), 1);
    // The unfinished from the stats, the finished from their own count.
    assert!(stats.counts.iter().all(|c| !c.status.is_terminal()));
    assert_eq!(s.count_unfinished_tasks().await.unwrap(), stats.counts);
    assert!(finished.iter().all(|c| c.status.is_terminal()));
    assert_eq!(stats.counts.iter().map(|c| c.count).sum::<u64>(), 2);
    assert_eq!(finished.iter().map(|c| c.count).sum::<u64>(), 2);
    let ready: Vec<&str> = stats
        .oldest_ready
        .iter()
        .map(|o| o.task_type.as_str())
        .collect();
    assert_eq!(ready, vec!["alpha", "beta"]);
    assert!(stats.oldest_ready.iter().all(|o| o.since <= stats.now));
    let succeeded: u64 = stats.finished.iter().map(|m| m.succeeded).sum();
    let failed: u64 = stats.finished.iter().map(|m| m.failed).sum();
    assert_eq!((succeeded, failed), (1, 1));
    let later = s
        .queue_stats(Some(stats.now + chrono::TimeDelta::minutes(5)))
        .await
        .unwrap();
    assert!(later.finished.is_empty(), "only runs closed since `since`");
    let counts_only = s.queue_stats(None).await.unwrap();
    assert!(
        counts_only.finished.is_empty(),
        "no runs read without a `since`"
    );
    assert_eq!(counts_only.counts, stats.counts);
    assert_eq!(counts_only.oldest_ready, stats.oldest_ready);
}

/// The age of the oldest ready task counts from when it became ready — freed by its last
/// dependency, or back in the queue for a retry — not from its creation: a plan's subtask
/// freed now, or a task retried now, has not waited since it was created.
pub async fn a_task_is_ready_since_it_was_freed_or_requeued(s: S) {
    let sub = |id: &str, ty: &str, deps: &[&str]| {
        let mut t = SubTask::new(id, id, ty).depends_on(deps.iter().copied());
        t.priority = 0;
        t
    };
    let first = s
        .insert_plan(plan(vec![sub("a", "root", &[]), sub("b", "freed", &["a"])]))
        .await
        .unwrap();
    let second = s
        .insert_plan(plan(vec![
            sub("a", "root", &[]),
            sub("c", "deferred", &["a"]),
        ]))
        .await
        .unwrap();
    for p in [first, second] {
        s.materialize_plan(p).await.unwrap();
    }
    s.insert_tasks(vec![
        NewTask::new("r", "retried"),
        NewTask::new("u", "untouched"),
    ])
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mark = s.now().await.unwrap();
    let of_type = |ty: &str| ClaimParams {
        task_types: vec![ty.into()],
        ..claim_params("ages", 2)
    };
    let roots = s.claim_tasks(&of_type("root")).await.unwrap();
    assert_eq!(roots.len(), 2);
    let retried = s.claim_tasks(&of_type("retried")).await.unwrap();
    s.finish_runs(&[
        success(roots[0].run.id),
        failure(retried[0].run.id, Some(RetryPolicy::IMMEDIATE)),
    ])
    .await
    .unwrap();
    // A finish whose claim could take the freed subtask but takes a more urgent task
    // instead (Postgres leaves the subtask for the claim, then counts it down apart).
    let mut urgent = NewTask::new("x", "urgent");
    urgent.priority = 9;
    s.insert_tasks(vec![urgent]).await.unwrap();
    let (_, took) = s
        .finish_and_claim(&[success(roots[1].run.id)], &claim_params("ages", 1))
        .await
        .unwrap();
    assert_eq!(took[0].task.task_type, "urgent");
    let stats = s.queue_stats(Some(mark)).await.unwrap();
    let since = |ty: &str| {
        let found = stats.oldest_ready.iter().find(|o| o.task_type == ty);
        found.unwrap_or_else(|| panic!("no ready {ty} task")).since
    };
    for ty in ["freed", "deferred", "retried"] {
        assert!(
            since(ty) >= mark,
            "{ty}: ready since {} though it became ready after {mark}",
            since(ty)
        );
    }
    assert!(
        since("untouched") < mark,
        "a task untouched since its creation"
    );
}
