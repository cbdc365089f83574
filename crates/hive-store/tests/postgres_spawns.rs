//! Postgres-only: a plan's writers racing — a spawn and the finish of a running subtask it
//! makes a dependency of, spawns closing a cycle together, a requeue and the settle or the
//! finish of the plan it reopens. Memory and SQLite have one writer, so the interleavings cannot happen
//! there.
//!
//! Runs against `HIVE_TEST_POSTGRES_URL` (in a fresh schema) and reports a skip when it is
//! unset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_store::models::{PlanId, RunId, SubTask, TaskId};
use hive_store::models::{PlanStatus, TaskStatus};
use hive_store::testing::fixtures::{claim_params, node, plan, success};
use hive_store::testing::{self, TestStore};
use hive_store::{FinishReport, Outcome, RunOutcome, StatusChange, Store, TaskFilter};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

async fn fresh(test: &str) -> Option<TestStore> {
    let ts = testing::postgres().await;
    if ts.is_none() {
        testing::report_skip(test);
    }
    ts
}

async fn subtasks(s: &dyn Store, plan_id: PlanId) -> HashMap<String, TaskId> {
    let filter = TaskFilter {
        plan_id: Some(plan_id),
        ..Default::default()
    };
    s.list_tasks(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.plan_subtask_id.unwrap(), t.id))
        .collect()
}

/// Waits (at most 20 s) until `sql`, a count, is at least 1.
async fn until(conn: &mut PgConnection, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = sqlx::query(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plan of `subtasks` submitted, and the runs of the first `claim` of its subtasks
/// claimed, by subtask id; with every subtask's task id.
async fn started(
    s: &Arc<dyn Store>,
    subtasks_of_plan: Vec<SubTask>,
    claim: u32,
) -> (PlanId, HashMap<String, TaskId>, HashMap<String, RunId>) {
    let (plan_id, _) = s.submit_plan(plan(subtasks_of_plan)).await.unwrap();
    let ids = subtasks(&**s, plan_id).await;
    let claims = s.claim_tasks(&claim_params("w", claim)).await.unwrap();
    assert_eq!(claims.len(), claim as usize);
    let runs = claims
        .iter()
        .map(|c| (c.task.plan_subtask_id.clone().unwrap(), c.run.id))
        .collect();
    (plan_id, ids, runs)
}

/// A transaction holding `task`'s row, on a connection of its own, and its id as
/// `pg_locks` shows it: a finish that re-wires the task stops there, uncommitted.
async fn hold(url: &str, task: TaskId) -> (PgConnection, i64) {
    hold_row(url, "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task.0).await
}

/// A transaction holding the row `lock` (a query binding `id`) locks.
async fn hold_row(url: &str, lock: &'static str, id: uuid::Uuid) -> (PgConnection, i64) {
    let mut holder = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query(lock)
        .bind(id)
        .execute(&mut holder)
        .await
        .unwrap();
    let xid: i64 = sqlx::query("SELECT pg_current_xact_id()::text::bigint % 4294967296")
        .fetch_one(&mut holder)
        .await
        .unwrap()
        .get(0);
    (holder, xid)
}

/// Waits until a transaction waits for the holder `xid`.
async fn until_held_up(watcher: &mut PgConnection, xid: i64, what: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' \
         AND transactionid::text = '{xid}' AND NOT granted"
    );
    until(watcher, &sql, what).await;
}

/// Requeues `task` in a task of its own; returns once the requeue has committed or waits
/// for its plan's lock (held by a transaction the caller then lets go on).
async fn requeue_meanwhile(
    s: &Arc<dyn Store>,
    task: TaskId,
    watcher: &mut PgConnection,
) -> tokio::task::JoinHandle<hive_store::Result<Option<hive_store::StatusChanged>>> {
    let requeue = {
        let s = s.clone();
        tokio::spawn(async move { s.set_task_status(task, StatusChange::requeue()).await })
    };
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
               AND query LIKE 'SELECT 1 FROM plans WHERE id = $1 FOR NO KEY UPDATE'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !requeue.is_finished() {
        let waiting: i64 = sqlx::query(sql)
            .fetch_one(&mut *watcher)
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "waited 20 s for the requeue");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    requeue
}

/// What a requeue of cancelled subtask `a` racing the move that ends its plan may leave,
/// in either order: after the move, the plan is cancelled and the requeue refused, `a`
/// staying cancelled; before it, `a` is queued and the plan runs on. Never a cancelled
/// plan with `a` queued to run in it.
async fn requeued_in_either_order(
    s: &dyn Store,
    plan_id: PlanId,
    a: TaskId,
    requeued: hive_store::Result<Option<hive_store::StatusChanged>>,
) {
    let a = s.get_task(a).await.unwrap().unwrap();
    let counters = s.get_plan_counters(plan_id).await.unwrap().unwrap();
    match requeued {
        Err(e) => {
            assert!(e.to_string().contains("cancelled"), "{e}");
            assert_eq!(a.status, TaskStatus::Cancelled);
            assert_eq!(counters.status, PlanStatus::Cancelled);
        }
        Ok(_) => {
            assert_eq!(a.status, TaskStatus::Queued);
            assert_eq!(
                counters.status,
                PlanStatus::InProgress,
                "`a` is queued again, yet the plan is {counters:?}"
            );
        }
    }
}

/// Finishes `run` with success, spawning `spawn`, in a task of its own.
fn spawn_from(
    s: &Arc<dyn Store>,
    run: RunId,
    spawn: SubTask,
) -> tokio::task::JoinHandle<Vec<FinishReport>> {
    let s = s.clone();
    tokio::spawn(async move {
        let outcome = RunOutcome {
            run_id: run,
            outcome: Outcome::Success {
                result: None,
                spawn: vec![spawn],
            },
            output_log: None,
            waited: Duration::ZERO,
        };
        s.finish_runs(&[outcome]).await.unwrap()
    })
}

/// `r` spawns `n`, which depends on `e`, running beside it. `e`'s finish takes its
/// statement's snapshot while the spawn is uncommitted, then waits for the spawn's lock on
/// `e`: it must still count `n` down, or `n` (and the plan) would wait for good.
#[tokio::test]
async fn a_spawn_depending_on_a_sibling_that_finishes_meanwhile_is_counted_down() {
    let Some(ts) = fresh("a_spawn_depending_on_a_sibling_that_finishes_meanwhile").await else {
        return;
    };
    let s = ts.store.clone();
    let (plan_id, ids, runs) = started(
        &s,
        vec![node("r", &[]), node("d", &["r"]), node("e", &[])],
        2,
    )
    .await;
    // Hold `d`, which the spawn re-wires to wait for `n` too: the spawn then stops after
    // marking `e`, uncommitted.
    let url = ts.url.clone().unwrap();
    let (mut holder, xid) = hold(&url, ids["d"]).await;
    let mut watcher = PgConnection::connect(&url).await.unwrap();
    let spawning = spawn_from(&s, runs["r"], node("n", &["e"]));
    until_held_up(&mut watcher, xid, "the spawn to wait for `d`").await;
    let e_run = runs["e"];
    let finishing = {
        let s = s.clone();
        tokio::spawn(async move { s.finish_runs(&[success(e_run)]).await.unwrap() })
    };
    until(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%waited_us FROM input%'",
        "`e`'s finish to wait for the spawn",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let spawn_report = spawning.await.unwrap();
    let finish_report = finishing.await.unwrap();
    assert_eq!(spawn_report[0].finished, hive_store::Finished::Completed);
    assert_eq!(finish_report[0].finished, hive_store::Finished::Completed);

    let ids = subtasks(&*s, plan_id).await;
    let n = s.get_task(ids["n"]).await.unwrap().unwrap();
    assert_eq!(n.pending_dependencies, 0, "e completed: n is ready");
    // n, then d (which waits for r's spawn), then the plan is done.
    for next in ["n", "d"] {
        let claims = s.claim_tasks(&claim_params("w", 10)).await.unwrap();
        assert_eq!(claims.len(), 1, "{next}");
        assert_eq!(claims[0].task.id, ids[next]);
        s.finish_runs(&[success(claims[0].run.id)]).await.unwrap();
    }
    let counters = s.get_plan_counters(plan_id).await.unwrap().unwrap();
    assert_eq!(
        (counters.completed, counters.status),
        (4, hive_store::models::PlanStatus::Completed)
    );
}

/// Two subtasks spawning at once, each acceptable alone, together closing a cycle: `s1`
/// adds `n1` waiting for `x` (a dependent of `s2`), `s2` adds `n2` waiting for `d1` (a
/// dependent of `s1`). The second to take the plan checks against the first's additions
/// and is refused (its spawner failing, as for any spawn its plan cannot take); the plan
/// stays a DAG.
#[tokio::test]
async fn spawns_racing_into_one_plan_cannot_close_a_cycle() {
    let Some(ts) = fresh("spawns_racing_into_one_plan_cannot_close_a_cycle").await else {
        return;
    };
    let s = ts.store.clone();
    let (plan_id, ids, runs) = started(
        &s,
        vec![
            node("s1", &[]),
            node("s2", &[]),
            node("d1", &["s1"]),
            node("x", &["s2"]),
        ],
        2,
    )
    .await;
    // `s1`'s spawn stops at `d1`, which it re-wires, holding the plan.
    let url = ts.url.clone().unwrap();
    let (mut holder, xid) = hold(&url, ids["d1"]).await;
    let mut watcher = PgConnection::connect(&url).await.unwrap();
    let first = spawn_from(&s, runs["s1"], node("n1", &["x"]));
    until_held_up(&mut watcher, xid, "the first spawn to wait for `d1`").await;
    // It waits for `d1` too (it marks its dependency `d1`, held), or for the plan.
    let second = spawn_from(&s, runs["s2"], node("n2", &["d1"]));
    until(
        &mut watcher,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND (query LIKE '%FROM plans WHERE id = $1 FOR NO KEY UPDATE%' \
              OR query LIKE '%SET late_dependents = true%')",
        "the second spawn to wait for `d1` or the plan",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(first[0].finished, hive_store::Finished::Completed);
    assert_eq!(second[0].finished, hive_store::Finished::Failed);
    let s2 = s.get_task(ids["s2"]).await.unwrap().unwrap();
    let why = s2.last_error.unwrap_or_default();
    assert!(
        why.contains("cannot spawn") && why.contains("cycle"),
        "{why}"
    );
    let ids = subtasks(&*s, plan_id).await;
    assert!(ids.contains_key("n1") && !ids.contains_key("n2"), "{ids:?}");
}

/// `a` cancelled alone, then queued again while the finish of `b`, the plan's last open
/// subtask, settles the plan: the settle read counts saying every subtask finished, some
/// cancelled. Held between that read and its move (a share lock on the plan row), the
/// settle must not move the plan to cancelled over the requeue, which would leave a
/// cancelled plan with a subtask in the queue. Taken in either order, the requeue is
/// refused (the plan is cancelled) or the plan waits for `a`.
#[tokio::test]
async fn a_requeue_during_a_plans_settle_is_not_overwritten() {
    let Some(ts) = fresh("a_requeue_during_a_plans_settle_is_not_overwritten").await else {
        return;
    };
    let s = ts.store.clone();
    let (plan_id, _) = s
        .submit_plan(plan(vec![node("a", &[]), node("b", &[])]))
        .await
        .unwrap();
    let ids = subtasks(&*s, plan_id).await;
    let cancel = StatusChange::to(TaskStatus::Cancelled);
    s.set_task_status(ids["a"], cancel).await.unwrap().unwrap();
    let claims = s.claim_tasks(&claim_params("w", 10)).await.unwrap();
    assert_eq!(claims.len(), 1);
    let url = ts.url.clone().unwrap();
    let (mut holder, xid) = hold_row(
        &url,
        "SELECT 1 FROM plans WHERE id = $1 FOR SHARE",
        plan_id.0,
    )
    .await;
    let mut watcher = PgConnection::connect(&url).await.unwrap();
    let b_run = claims[0].run.id;
    let finishing = {
        let s = s.clone();
        tokio::spawn(async move { s.finish_runs(&[success(b_run)]).await.unwrap() })
    };
    until_held_up(
        &mut watcher,
        xid,
        "the settle of `b`'s finish to wait for the plan",
    )
    .await;
    let a = ids["a"];
    let requeue = requeue_meanwhile(&s, a, &mut watcher).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    finishing.await.unwrap();
    let requeued = requeue.await.unwrap();

    requeued_in_either_order(&*s, plan_id, a, requeued).await;
}

/// `b`, the last open subtask, is marked completed while `a`, cancelled alone before, is
/// requeued. The completion read the plan's counts (one cancelled, one completed: the plan
/// is cancelled) before the requeue committed, and writes after it: the plan must not end
/// cancelled with `a` queued to run in it.
#[tokio::test]
async fn a_requeue_while_a_plans_last_subtask_completes_is_not_overwritten() {
    let test = "a_requeue_while_a_plans_last_subtask_completes_is_not_overwritten";
    let Some(ts) = fresh(test).await else {
        return;
    };
    let s = ts.store.clone();
    let (plan_id, ids, _) = started(&s, vec![node("a", &[]), node("b", &[])], 0).await;
    let cancel = StatusChange::to(TaskStatus::Cancelled);
    s.set_task_status(ids["a"], cancel).await.unwrap().unwrap();
    let claims = s.claim_tasks(&claim_params("w", 10)).await.unwrap();
    assert_eq!(claims.len(), 1, "`b` runs");
    let url = ts.url.clone().unwrap();
    let mut watcher = PgConnection::connect(&url).await.unwrap();
    // The completion's write of `b` waits for an advisory lock the test holds: its counts
    // are read by then.
    let b = ids["b"];
    for ddl in [
        "CREATE FUNCTION hold_b() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$"
            .to_owned(),
        format!(
            "CREATE TRIGGER hold_b BEFORE UPDATE ON tasks FOR EACH ROW \
             WHEN (NEW.id = '{}' AND NEW.status = 'completed') EXECUTE FUNCTION hold_b()",
            b.0
        ),
        "SELECT pg_advisory_lock(4242)".to_owned(),
    ] {
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut watcher)
            .await
            .unwrap();
    }
    let completing = {
        let s = s.clone();
        tokio::spawn(async move {
            let done = StatusChange::to(TaskStatus::Completed);
            s.set_task_status(b, done).await.unwrap().unwrap()
        })
    };
    let advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted";
    until(
        &mut watcher,
        advisory,
        "`b`'s completion to reach its write",
    )
    .await;
    let requeue = requeue_meanwhile(&s, ids["a"], &mut watcher).await;
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut watcher)
        .await
        .unwrap();
    completing.await.unwrap();
    let requeued = requeue.await.unwrap();

    requeued_in_either_order(&*s, plan_id, ids["a"], requeued).await;
}

/// `r` spawns `n`, which depends on `e`, queued. Were `e` claimed and finished while the
/// spawn is uncommitted, its finish could not see `n` to count it down, and `n` (and the
/// plan) would wait for good: the spawn holds `e` until it commits.
#[tokio::test]
async fn a_spawn_depending_on_a_queued_sibling_is_counted_down_when_it_runs() {
    let test = "a_spawn_depending_on_a_queued_sibling_is_counted_down_when_it_runs";
    let Some(ts) = fresh(test).await else {
        return;
    };
    let s = ts.store.clone();
    let (plan_id, ids, runs) = started(
        &s,
        vec![node("r", &[]), node("d", &["r"]), node("e", &[])],
        1,
    )
    .await;
    assert!(runs.contains_key("r"), "{runs:?}");
    // Hold `d`, which the spawn re-wires: the spawn stops there, `n` inserted, uncommitted.
    let url = ts.url.clone().unwrap();
    let (mut holder, xid) = hold(&url, ids["d"]).await;
    let mut watcher = PgConnection::connect(&url).await.unwrap();
    let spawning = spawn_from(&s, runs["r"], node("n", &["e"]));
    until_held_up(&mut watcher, xid, "the spawn to wait for `d`").await;
    for c in s.claim_tasks(&claim_params("w2", 10)).await.unwrap() {
        s.finish_runs(&[success(c.run.id)]).await.unwrap();
    }
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let spawned = spawning.await.unwrap();
    assert_eq!(spawned[0].finished, hive_store::Finished::Completed);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counters = s.get_plan_counters(plan_id).await.unwrap().unwrap();
        if counters.status == PlanStatus::Completed {
            assert_eq!(counters.completed, 4);
            break;
        }
        let claims = s.claim_tasks(&claim_params("w2", 10)).await.unwrap();
        let outcomes: Vec<RunOutcome> = claims.iter().map(|c| success(c.run.id)).collect();
        if !outcomes.is_empty() {
            s.finish_runs(&outcomes).await.unwrap();
        }
        let ids = subtasks(&*s, plan_id).await;
        let n = s.get_task(ids["n"]).await.unwrap().unwrap();
        assert!(
            Instant::now() < deadline,
            "the plan never completed: {counters:?}; `n` waits for {} dependencies",
            n.pending_dependencies
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
