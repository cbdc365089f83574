//! A finished subtask run again by hand, on memory, SQLite and (with
//! `HIVE_TEST_POSTGRES_URL`) Postgres: back in the queue it waits for the dependencies
//! requeued meanwhile, whatever status it came from; and one that then fails for good in a
//! completed plan leaves the plan retriable.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_models::{PlanStatus, TaskStatus};
use hive_ops::{Claimed, Ops};
use hive_store::Store;
use hive_store::testing::fixtures::{node, plan, worker};

type O = Ops<dyn Store>;

fn ops(store: Arc<dyn Store>) -> O {
    Ops::new(store)
}

hive_store::per_backend!(hive_store::testing::TestStore::run, ops =>
    a_task_requeued_from_review_waits_for_a_dependency_requeued_meanwhile,
    a_completed_plan_whose_rerun_subtask_failed_can_be_retried,
);

async fn claim(o: &O) -> Option<Claimed> {
    let lease = Duration::from_secs(60);
    o.claim_next_task(&worker("w"), &[], lease).await.unwrap()
}

/// Plan `a → b`: `a` completes, `b` is claimed and sent to review; `a` is requeued (`b`,
/// held, is not counted up then) and `b` retried from review. `b` waits for `a` again,
/// rather than running before it on the output `a` no longer has.
async fn a_task_requeued_from_review_waits_for_a_dependency_requeued_meanwhile(o: O) {
    let pid = o
        .submit_plan(plan(vec![node("a", &[]), node("b", &["a"])]))
        .await
        .unwrap();
    let a = claim(&o).await.unwrap();
    o.complete_task(a.run.id, None).await.unwrap();
    let b = claim(&o).await.unwrap();
    assert_eq!(b.task.plan_subtask_id.as_deref(), Some("b"));
    assert!(
        o.update_task_status(b.task.id, TaskStatus::ReviewPending, None)
            .await
            .unwrap()
    );
    assert!(o.requeue_task(a.task.id).await.unwrap());
    assert!(o.retry_task(b.task.id).await.unwrap());
    let next = claim(&o).await.unwrap();
    assert_eq!(next.task.id, a.task.id, "a first: b waits for it");
    assert!(claim(&o).await.is_none(), "b waits while a runs again");
    o.complete_task(next.run.id, None).await.unwrap();
    let again = claim(&o).await.unwrap();
    assert_eq!(again.task.id, b.task.id);
    o.complete_task(again.run.id, None).await.unwrap();
    let header = o.plan_header(pid).await.unwrap().unwrap();
    assert_eq!(header.status, PlanStatus::Completed);
}

/// Plan `[a]` completes; `a`, requeued by hand, fails for good. The plan stays completed
/// (a finished plan does not move again), yet counts the failure, and a retry of the plan
/// runs `a` once more, completing it.
async fn a_completed_plan_whose_rerun_subtask_failed_can_be_retried(o: O) {
    let pid = o
        .submit_plan(plan(vec![node("a", &[]).max_retries(0)]))
        .await
        .unwrap();
    let a = claim(&o).await.unwrap();
    o.complete_task(a.run.id, None).await.unwrap();
    assert!(
        o.retry_plan(pid).await.is_err(),
        "every subtask completed: nothing to retry"
    );
    assert!(o.requeue_task(a.task.id).await.unwrap());
    let rerun = claim(&o).await.unwrap();
    o.fail_task(rerun.run.id, "broke on the second run")
        .await
        .unwrap();
    let header = o.plan_header(pid).await.unwrap().unwrap();
    assert_eq!(
        (header.status, header.failed_subtasks),
        (PlanStatus::Completed, 1)
    );
    assert_eq!(o.retry_plan(pid).await.unwrap(), [a.task.id]);
    let last = claim(&o).await.unwrap();
    o.complete_task(last.run.id, None).await.unwrap();
    let header = o.plan_header(pid).await.unwrap().unwrap();
    assert_eq!(
        (
            header.status,
            header.completed_subtasks,
            header.failed_subtasks
        ),
        (PlanStatus::Completed, 1, 0)
    );
}
