//! A worker's batch of outcomes, on memory, SQLite and (with `HIVE_TEST_POSTGRES_URL`)
//! Postgres, applied as if its outcomes came one at a time: a spawn that follows, in the
//! same batch, a failure that fails its plan is refused, as it would be sent alone.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_models::{PlanId, PlanStatus, TaskStatus};
use hive_ops::{Claimed, Ops};
use hive_store::testing::fixtures::{node, plan, worker};
use hive_store::{Finished, Outcome, RunOutcome, Store};

type O = Ops<dyn Store>;

fn ops(store: Arc<dyn Store>) -> O {
    Ops::new(store)
}

hive_store::per_backend!(hive_store::testing::TestStore::run, ops =>
    a_spawn_after_its_plans_failure_in_one_batch_is_refused,
);

const LEASE: Duration = Duration::from_secs(60);

/// A plan of `f` (no retries) and `s`, both claimed: the outcomes of `f` failing and `s`
/// spawning `x`, in that order.
async fn failure_then_spawn(o: &O) -> (PlanId, Claimed, Vec<RunOutcome>) {
    let pid = o
        .submit_plan(plan(vec![node("f", &[]).max_retries(0), node("s", &[])]))
        .await
        .unwrap();
    let claims = o.claim_tasks(&worker("w"), &[], 10, LEASE).await.unwrap();
    let of = |id: &str| {
        claims
            .iter()
            .find(|c| c.task.plan_id == Some(pid) && c.task.plan_subtask_id.as_deref() == Some(id))
            .unwrap()
            .clone()
    };
    let (f, s) = (of("f"), of("s"));
    let outcome = |run_id, outcome| RunOutcome {
        run_id,
        outcome,
        output_log: None,
        waited: Duration::ZERO,
    };
    let outcomes = vec![
        outcome(
            f.run.id,
            Outcome::Failure {
                error: "broke".into(),
                retry: None,
            },
        ),
        outcome(
            s.run.id,
            Outcome::Success {
                result: None,
                spawn: vec![node("x", &["s"])],
            },
        ),
    ];
    (pid, s, outcomes)
}

async fn refused(o: &O, pid: PlanId, s: &Claimed, finished: &Finished) {
    assert_eq!(*finished, Finished::Failed, "the spawner fails for good");
    let header = o.plan_header(pid).await.unwrap().unwrap();
    assert_eq!(
        (header.status, header.total_subtasks),
        (PlanStatus::Failed, 2),
        "nothing added to the failed plan"
    );
    let spawner = o.get_task(s.task.id).await.unwrap().unwrap();
    assert_eq!(spawner.status, TaskStatus::Failed);
    let why = spawner.last_error.unwrap_or_default();
    assert!(why.contains("cannot spawn"), "{why}");
}

async fn a_spawn_after_its_plans_failure_in_one_batch_is_refused(o: O) {
    // As the SDK's completer sends them: finished, and the freed slots refilled.
    let (pid, s, outcomes) = failure_then_spawn(&o).await;
    let (reports, _) = o
        .finish_and_claim(&outcomes, &worker("w"), &[], 10, LEASE)
        .await
        .unwrap();
    assert_eq!(reports.len(), 2);
    refused(&o, pid, &s, &reports[1].finished).await;
    // And finished alone.
    let (pid, s, outcomes) = failure_then_spawn(&o).await;
    let reports = o.finish_runs(outcomes).await.unwrap();
    assert_eq!(reports.len(), 2);
    refused(&o, pid, &s, &reports[1].finished).await;
}
