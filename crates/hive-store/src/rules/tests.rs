//! The rules on a hand-built view: what a batch decides, before any backend writes it.

use std::collections::HashMap;

use hive_models::{
    PlanCounters, PlanId, PlanStatus, RetryPolicy, RunId, RunStatus, Task, TaskId, TaskStatus,
};
use serde_json::json;

use super::{Changes, Loaded, TaskState};
use crate::{Change, Finished, Notifier, Outcome, RunOutcome, StatusChange};

fn at() -> hive_models::Timestamp {
    chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
}

/// A plan of `n` tasks in a chain t0 → t1 → …; t0 running as `run`.
fn chain(n: usize) -> (Loaded, Vec<TaskId>, PlanId, RunId) {
    let plan = PlanId::new();
    let run = RunId::new();
    let ids: Vec<TaskId> = (0..n).map(|_| TaskId::new()).collect();
    let mut view = Loaded::default();
    for (i, id) in ids.iter().enumerate() {
        let running = i == 0;
        view.add_task(
            *id,
            TaskState {
                status: if running {
                    TaskStatus::InProgress
                } else {
                    TaskStatus::Queued
                },
                seq: i as i64,
                plan_id: Some(plan),
                attempts: u32::from(running),
                max_retries: 1,
                retry_policy: None,
                snoozes: 0,
                current_run: running.then_some(run),
                run_running: running,
            },
        );
    }
    view.add_edges(ids.windows(2).map(|w| (w[0], w[1])));
    view.plans.insert(
        plan,
        PlanCounters {
            status: PlanStatus::InProgress,
            total: n as u32,
            completed: 0,
            failed: 0,
            cancelled: 0,
        },
    );
    (view, ids, plan, run)
}

fn failure(run: RunId, retry: Option<RetryPolicy>) -> RunOutcome {
    RunOutcome {
        run_id: run,
        outcome: Outcome::Failure {
            error: "boom".into(),
            retry,
        },
        output_log: Some("log".into()),
        waited: std::time::Duration::ZERO,
    }
}

#[test]
fn a_failure_for_good_cancels_descendants_and_fails_the_plan_once() {
    let (view, ids, plan, run) = chain(4);
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    let report = ch.finish(&failure(run, None), Some(ids[0]));
    assert_eq!(report.finished, Finished::Failed);
    assert_eq!(report.cancelled_dependents, ids[1..].to_vec());
    assert_eq!(report.plan_transition, Some(PlanStatus::Failed));
    // The same run again is stale: it was closed by the first outcome.
    assert_eq!(
        ch.finish(&failure(run, None), Some(ids[0])).finished,
        Finished::Stale
    );
    let p = ch.into_patches();
    assert_eq!(p.runs.len(), 1);
    assert_eq!(p.runs[0].status, RunStatus::Failure);
    assert_eq!(p.runs[0].log, Some(Some("log".into())));
    let statuses: HashMap<TaskId, TaskStatus> = p.tasks.iter().map(|t| (t.id, t.status)).collect();
    assert_eq!(statuses[&ids[0]], TaskStatus::Failed);
    assert!(
        ids[1..]
            .iter()
            .all(|t| statuses[t] == TaskStatus::Cancelled)
    );
    let (pid, counters) = p.plans[0];
    assert_eq!((pid, counters.failed, counters.cancelled), (plan, 1, 3));
    let plan_notes = p
        .notes
        .iter()
        .filter(|n| matches!(n.change, Change::PlanStatus { .. }))
        .count();
    assert_eq!(plan_notes, 1, "the plan fails once");
}

#[test]
fn a_failure_with_retries_left_requeues_after_the_backoff() {
    let (view, ids, _, run) = chain(2);
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    let report = ch.finish(
        &failure(run, Some(RetryPolicy::default().without_jitter())),
        Some(ids[0]),
    );
    let Finished::Retrying { run_at } = report.finished else {
        panic!("{report:?}")
    };
    assert_eq!(run_at, at() + chrono::Duration::seconds(1));
    let p = ch.into_patches();
    assert_eq!(p.tasks[0].requeue, Some(Some(run_at)));
    assert_eq!(p.tasks[0].error.as_deref(), Some("boom"));
    assert!(
        p.plans.is_empty(),
        "a retry counts nothing against the plan"
    );
}

#[test]
fn completing_every_task_completes_the_plan_and_counts_down() {
    let (mut view, ids, _, run) = chain(2);
    // Make it the last unfinished one: the other completed already.
    if let Some(c) = view.plans.values_mut().next() {
        c.completed = 1;
    }
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    let ok = RunOutcome {
        run_id: run,
        outcome: Outcome::success(Some(json!({"n": 1}))),
        output_log: None,
        waited: std::time::Duration::ZERO,
    };
    let report = ch.finish(&ok, Some(ids[0]));
    assert_eq!(report.plan_transition, Some(PlanStatus::Completed));
    let p = ch.into_patches();
    assert_eq!(p.completed, vec![ids[0]]);
    assert_eq!(p.tasks[0].result, Some(Some(json!({"n": 1}))));
}

#[test]
fn release_gives_the_attempt_back_and_requeues_at_once() {
    let (view, ids, _, run) = chain(1);
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    assert!(ch.release(run, ids[0]));
    assert!(!ch.release(run, ids[0]), "released once");
    let p = ch.into_patches();
    assert_eq!(p.tasks[0].attempts_delta, -1);
    assert_eq!(p.tasks[0].requeue, Some(None));
    assert_eq!(p.runs[0].status, RunStatus::Cancelled);
}

#[test]
fn status_changes_check_the_table_merge_metadata_and_recount_on_requeue() {
    let id = TaskId::new();
    let mut task = Task::from_new(id, hive_models::NewTask::new("t", "x"), at());
    task.metadata = json!({"a": 1, "b": 1});
    task.status = TaskStatus::Failed;
    let mut view = Loaded::default();
    view.add_task(id, TaskState::of(&task, 0, 0, false));
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    let illegal = ch.change_status(&task, &StatusChange::to(TaskStatus::InProgress));
    assert!(illegal.is_err(), "failed → in_progress is not in the table");
    let requeue = StatusChange {
        metadata: Some(json!({"b": 2})),
        ..StatusChange::requeue()
    };
    let out = ch
        .change_status(&task, &requeue)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.previous, TaskStatus::Failed);
    let p = ch.into_patches();
    assert!(p.tasks[0].recount_pending);
    assert_eq!(p.tasks[0].metadata, Some(json!({"a": 1, "b": 2})));
}

#[test]
fn a_reason_goes_to_the_task_the_closed_run_and_the_note_but_not_the_dependents() {
    let (view, ids, _, run) = chain(2);
    let mut task = Task::from_new(ids[0], hive_models::NewTask::new("t", "x"), at());
    task.status = TaskStatus::InProgress;
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    let cancel = StatusChange::to(TaskStatus::Cancelled).because(Some("not needed".into()));
    let out = ch
        .change_status(&task, &cancel)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.effects.cancelled, [ids[1]]);
    let p = ch.into_patches();
    assert_eq!(p.runs.len(), 1);
    assert_eq!(
        (p.runs[0].id, p.runs[0].status),
        (run, RunStatus::Cancelled)
    );
    assert_eq!(p.runs[0].error, Some(Some("not needed".into())));
    let patch = |id| {
        p.tasks
            .iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    assert_eq!(patch(ids[0]).error.as_deref(), Some("not needed"));
    assert_eq!(
        patch(ids[1]).error,
        None,
        "a cascade gives no reason of its own"
    );
    let note = p.notes.iter().find_map(|n| match &n.change {
        Change::TaskStatus(c) if c.task_id == ids[0] => Some(c.clone()),
        _ => None,
    });
    let note = note.unwrap_or_else(|| panic!("no note"));
    assert_eq!(note.error.as_deref(), Some("not needed"));
    // The run it closed goes with it, for a worker to stop that run and no later one.
    assert_eq!(note.run_id, Some(run));
    let cascaded = p.notes.iter().find_map(|n| match &n.change {
        Change::TaskStatus(c) if c.task_id == ids[1] => Some(c.run_id),
        _ => None,
    });
    assert_eq!(cascaded, Some(None), "the dependent had no run");
}

#[test]
fn cancelling_a_plan_cancels_its_open_tasks_in_order() {
    let (view, ids, plan, _) = chain(3);
    let n = Notifier::new();
    let mut ch = Changes::new(&view, &n, at());
    assert_eq!(ch.cancel_plan(plan, &ids), ids);
    let p = ch.into_patches();
    assert_eq!(p.runs.len(), 1, "the running task's run is closed");
    assert_eq!(p.plans[0].1.status, PlanStatus::Cancelled);
    assert_eq!(p.plans[0].1.cancelled, 3);
}
