//! Quick handlers report in whole rounds where the store queues its write transactions
//! (SQLite): the outcomes of the tasks a commit has just claimed ride on the next commit
//! together with the rest, instead of the worker's runs splitting into two groups that
//! take turns committing. (On Postgres a second commit may overlap the first instead.)
//!
//! Sixteen chains of forty steps, one worker with a handler for each: every step of a
//! chain is claimed by the commit that finishes the step before it, so forty rounds carry
//! all 640 tasks when rounds are whole. Runs finished by one commit share its timestamp, so
//! the distinct completion times count the commits. With the wait turned off, the groups
//! that form took a fifth to two thirds more commits (49–66).

use std::collections::HashSet;
use std::time::Duration;

use hive_client::store::TaskFilter;
use hive_client::{Client, NewPlan, SubTask, TaskContext, TaskError, TaskStatus};

use super::worker::client;

hive_store::per_backend!([sqlite], hive_store::testing::TestStore::run, client =>
    quick_handlers_report_in_whole_rounds,
);

const CHAINS: usize = 16;
const STEPS: usize = 40;

async fn quick_handlers_report_in_whole_rounds(c: Client) {
    let subtasks = (0..CHAINS)
        .flat_map(|chain| {
            (0..STEPS).map(move |step| {
                let s = SubTask::new(format!("c{chain}s{step}"), "step", "step");
                match step {
                    0 => s,
                    _ => s.depends_on([format!("c{chain}s{}", step - 1)]),
                }
            })
        })
        .collect();
    let plan = c
        .submit_plan(NewPlan::new("chains", subtasks))
        .await
        .unwrap();
    let worker = c
        .worker("rounds")
        .concurrency(CHAINS as u32)
        .prefetch(0)
        .exit_when_idle(true)
        .handle_signals(false)
        .poll_interval(Duration::from_millis(50))
        .run(|_ctx: TaskContext| async { Ok::<_, TaskError>(()) });
    let report = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker drained the chains")
        .unwrap();
    assert_eq!(report.completed, (CHAINS * STEPS) as u64, "{report:?}");

    let tasks = c.list_tasks(&TaskFilter::in_plan(plan)).await.unwrap();
    assert_eq!(tasks.len(), CHAINS * STEPS);
    let mut commits = HashSet::new();
    for t in &tasks {
        assert_eq!(t.status, TaskStatus::Completed, "{}", t.title);
        for run in c.list_runs(t.id).await.unwrap() {
            commits.insert(run.completed_at.expect("a finished run has an end"));
        }
    }
    // A straggler now and then may miss its round (the wait is bounded by half a commit).
    assert!(
        commits.len() <= STEPS + STEPS / 10,
        "{} commits finished {} chains of {STEPS} steps",
        commits.len(),
        CHAINS
    );
}
