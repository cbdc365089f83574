//! Conformance cases for schedules: stored whole, listed by name, moved compare-and-set,
//! deleted; and what a schedule that skips or queues overlaps asks of its last runs' tasks
//! or plans.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use hive_models::{
    Missed, NewPlan, NewTask, Overlap, PlanStatus, Schedule, ScheduledTask, SubTask, TaskStatus,
};

use crate::testing::fixtures::{claim_params, failure};
use crate::{Error, KeyedWork, ScheduleAdvance, StatusChange, Store};

type S = Arc<dyn Store>;

pub async fn schedules_round_trip_and_move_compare_and_set(s: S) {
    let now = s.now().await.unwrap();
    let at = |secs: i64| now + chrono::Duration::seconds(secs);
    let mut task = ScheduledTask::new("report", "shell");
    task.payload = serde_json::json!({"command": "echo report"});
    task.max_retries = Some(2);
    let row = |name: &str| Schedule {
        name: name.into(),
        cron: "*/5 * * * * *".into(),
        timezone: "Europe/Paris".into(),
        creates: task.clone().into(),
        enabled: true,
        missed: Missed::CatchUp { limit: 4 },
        overlap: Overlap::Skip,
        done_until: now,
        last_fired: None,
        last_manual: None,
        last_manual_at: None,
        last_claimed_at: None,
        next_slot: Some(at(5)),
        created_at: now,
        updated_at: now,
    };
    s.insert_schedule(&row("nightly")).await.unwrap();
    s.insert_schedule(&row("hourly")).await.unwrap();
    let dup = s.insert_schedule(&row("nightly")).await.unwrap_err();
    assert!(matches!(dup, Error::Conflict(_)), "{dup}");
    assert_eq!(
        s.get_schedule("nightly").await.unwrap(),
        Some(row("nightly"))
    );
    let names: Vec<String> = s
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["hourly", "nightly"]);
    let due = |at: chrono::DateTime<chrono::Utc>| {
        let s = s.clone();
        async move {
            let due = s.due_schedules(at).await.unwrap();
            due.into_iter().map(|x| x.name).collect::<Vec<_>>()
        }
    };
    assert!(due(at(4)).await.is_empty(), "not due before its next slot");
    assert_eq!(
        due(at(5)).await,
        ["hourly", "nightly"],
        "due at its next slot"
    );

    // A schedule of a plan comes back whole: the template, its dependencies and metadata.
    let plan = NewPlan::new(
        "nightly report ✓",
        vec![
            SubTask::new("fetch", "fetch", "shell").payload(serde_json::json!({"n": [1, 2]})),
            SubTask::new("sum", "sum", "shell").depends_on(["fetch"]),
        ],
    )
    .metadata(serde_json::json!({"team": "data"}));
    let workflow = Schedule {
        name: "workflow".into(),
        creates: plan.into(),
        overlap: Overlap::Queue,
        ..row("workflow")
    };
    s.insert_schedule(&workflow).await.unwrap();
    assert_eq!(s.get_schedule("workflow").await.unwrap(), Some(workflow));
    assert!(s.delete_schedule("workflow").await.unwrap());

    let advance = ScheduleAdvance {
        name: "nightly".into(),
        from: now,
        to: at(10),
        last_fired: Some(at(10)),
        next_slot: Some(at(15)),
        enabled: None,
    };
    assert!(s.advance_schedule(&advance).await.unwrap());
    assert!(
        !s.advance_schedule(&advance).await.unwrap(),
        "a second scheduler holding the old value loses"
    );
    let moved = s.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(
        (
            moved.done_until,
            moved.last_fired,
            moved.next_slot,
            moved.enabled
        ),
        (at(10), Some(at(10)), Some(at(15)), true)
    );
    let pause = ScheduleAdvance {
        from: at(10),
        last_fired: None,
        enabled: Some(false),
        ..advance.clone()
    };
    assert!(s.advance_schedule(&pause).await.unwrap());
    let paused = s.get_schedule("nightly").await.unwrap().unwrap();
    assert!(!paused.enabled);
    assert_eq!(
        due(at(60)).await,
        ["hourly"],
        "a paused schedule is never due"
    );
    assert_eq!(
        paused.last_fired,
        Some(at(10)),
        "no fire keeps the last one"
    );
    assert!(
        !s.advance_schedule(&ScheduleAdvance {
            name: "ghost".into(),
            ..advance
        })
        .await
        .unwrap()
    );

    // A manual run's key noted, the latest kept.
    assert!(s.note_manual_run("nightly", "manual:a").await.unwrap());
    assert!(s.note_manual_run("nightly", "manual:b ✓").await.unwrap());
    assert!(!s.note_manual_run("ghost", "manual:a").await.unwrap());
    let noted = s.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(noted.last_manual.as_deref(), Some("manual:b ✓"));
    assert_eq!(
        (noted.done_until, noted.last_fired),
        (paused.done_until, paused.last_fired),
        "only the key changes"
    );

    // Redefined compare-and-set: its definition and progress replaced; its pause (which a
    // redefinition read before the pause must not undo), last fire, last manual run and
    // creation time kept.
    let redefined = Schedule {
        cron: "0 3 * * *".into(),
        overlap: Overlap::Allow,
        creates: ScheduledTask::new("other", "noop").into(),
        done_until: at(20),
        next_slot: Some(at(3600)),
        enabled: true,
        last_fired: None,
        created_at: at(-999),
        ..paused.clone()
    };
    assert!(
        !s.replace_schedule(&redefined, now).await.unwrap(),
        "moved since"
    );
    assert!(s.replace_schedule(&redefined, at(10)).await.unwrap());
    let stored = s.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(
        Schedule {
            updated_at: redefined.updated_at,
            enabled: true,
            last_fired: None,
            last_manual: None,
            last_manual_at: None,
            last_claimed_at: None,
            created_at: at(-999),
            ..stored.clone()
        },
        redefined
    );
    assert_eq!(
        (
            stored.enabled,
            stored.last_fired,
            stored.created_at,
            stored.last_manual.as_deref()
        ),
        (false, Some(at(10)), now, Some("manual:b ✓")),
        "pause, last fire, last manual run and creation time kept"
    );
    let ghost = Schedule {
        name: "ghost".into(),
        ..redefined
    };
    assert!(!s.replace_schedule(&ghost, at(20)).await.unwrap());
    // A slot claimed compare-and-set on the last slot started (at(10) here) and the last
    // manual run, as a scheduler read them.
    let get = |s: S| async move { s.get_schedule("nightly").await.unwrap().unwrap() };
    // Paused, it claims no new slot: a scheduler that read it before the pause creates
    // nothing after `hive schedule pause` returned.
    let paused = get(s.clone()).await;
    assert!(!paused.enabled);
    assert!(
        !s.claim_slot(&paused, at(15)).await.unwrap(),
        "a paused schedule claims no new slot"
    );
    let resume = ScheduleAdvance {
        name: "nightly".into(),
        from: paused.done_until,
        to: paused.done_until,
        last_fired: None,
        next_slot: paused.next_slot,
        enabled: Some(true),
    };
    assert!(s.advance_schedule(&resume).await.unwrap());
    let read = get(s.clone()).await;
    let stale = Schedule {
        last_fired: None,
        ..read.clone()
    };
    assert!(
        !s.claim_slot(&stale, at(15)).await.unwrap(),
        "a scheduler that read no last fire loses"
    );
    let before_manual = Schedule {
        last_manual: Some("manual:a".into()),
        ..read.clone()
    };
    assert!(
        !s.claim_slot(&before_manual, at(15)).await.unwrap(),
        "a scheduler that read the schedule before the last manual run loses"
    );
    assert!(s.claim_slot(&read, at(30)).await.unwrap());
    assert_eq!(get(s.clone()).await.last_fired, Some(at(30)));
    // The claim's time is noted (a slot may be claimed long after its time), and kept by
    // a claim of the same slot again.
    let claimed_at = get(s.clone()).await.last_claimed_at;
    assert!(
        claimed_at.is_some_and(|t| t < at(30)),
        "claimed before the slot: {claimed_at:?}"
    );
    assert!(
        !s.claim_slot(&read, at(31)).await.unwrap(),
        "a scheduler that picked another slot from the same read loses"
    );
    assert!(
        s.claim_slot(&read, at(30)).await.unwrap(),
        "one that picked the same slot goes on: its work is the same, by key"
    );
    assert_eq!(get(s.clone()).await.last_fired, Some(at(30)));
    assert_eq!(get(s.clone()).await.last_claimed_at, claimed_at);
    let ghost = Schedule {
        name: "ghost".into(),
        ..read.clone()
    };
    assert!(!s.claim_slot(&ghost, at(30)).await.unwrap());
    let hourly = s.get_schedule("hourly").await.unwrap().unwrap();
    assert!(s.claim_slot(&hourly, at(5)).await.unwrap(), "a first fire");

    // at(30) is claimed and done_until is at(20): a move to it or past it that did not
    // start it must not pass it (its work may not exist yet).
    let done = get(s.clone()).await.done_until;
    let passing = ScheduleAdvance {
        name: "nightly".into(),
        from: done,
        to: at(40),
        last_fired: None,
        next_slot: Some(at(45)),
        enabled: None,
    };
    assert!(!s.advance_schedule(&passing).await.unwrap(), "a skip");
    let older = ScheduleAdvance {
        last_fired: Some(at(29)),
        ..passing.clone()
    };
    assert!(!s.advance_schedule(&older).await.unwrap(), "an older fire");
    let put_off = ScheduleAdvance {
        to: done,
        next_slot: Some(at(100)),
        ..passing.clone()
    };
    assert!(
        s.advance_schedule(&put_off).await.unwrap(),
        "a move short of the claim goes"
    );
    assert_eq!(get(s.clone()).await.next_slot, Some(at(100)));
    let last = |s: S| async move { get(s).await.last_fired };
    let lost_race = ScheduleAdvance {
        name: "nightly".into(),
        from: at(20),
        to: at(21),
        last_fired: Some(at(25)),
        next_slot: Some(at(3600)),
        enabled: None,
    };
    assert!(s.advance_schedule(&lost_race).await.unwrap());
    assert_eq!(last(s.clone()).await, Some(at(30)), "never moved back");
    let moved = get(s.clone()).await;
    assert!(
        !s.claim_slot(&read, at(35)).await.unwrap(),
        "a read from before the move loses, even with the same last fire"
    );
    let other_manual = Schedule {
        last_manual: None,
        last_manual_at: None,
        last_claimed_at: None,
        ..moved.clone()
    };
    assert!(
        s.claim_slot(&other_manual, at(30)).await.unwrap(),
        "the slot claimed already is claimed whatever else changed"
    );
    let starter = ScheduleAdvance {
        name: "nightly".into(),
        from: at(21),
        to: at(30),
        last_fired: Some(at(30)),
        next_slot: Some(at(35)),
        enabled: None,
    };
    assert!(
        s.advance_schedule(&starter).await.unwrap(),
        "the claimed slot's starter moves past it"
    );

    assert!(s.delete_schedule("nightly").await.unwrap());
    assert!(!s.delete_schedule("nightly").await.unwrap());
    assert!(s.get_schedule("nightly").await.unwrap().is_none());
}

/// A task or plan holding a key is unfinished until it reaches a terminal status; a key
/// nothing holds is not. `keyed_work` finds which, with its status.
pub async fn work_is_unfinished_by_key_until_it_ends(s: S) {
    assert!(
        !s.unfinished_by_key(&["schedule:none".to_owned()])
            .await
            .unwrap()
    );
    let task = NewTask::new("slot", "report").idempotency_key("schedule:t:1");
    let id = s.insert_tasks(vec![task]).await.unwrap().ids[0];
    assert!(
        s.unfinished_by_key(&["schedule:t:1".to_owned()])
            .await
            .unwrap(),
        "queued"
    );
    s.set_task_status(id, StatusChange::to(TaskStatus::Cancelled))
        .await
        .unwrap();
    assert!(
        !s.unfinished_by_key(&["schedule:t:1".to_owned()])
            .await
            .unwrap(),
        "cancelled"
    );
    let keys = ["schedule:t:1".to_owned(), "schedule:none".to_owned()];
    let found = s.keyed_work(&keys).await.unwrap();
    assert_eq!(
        found.get("schedule:t:1"),
        Some(&KeyedWork::Task {
            id,
            status: TaskStatus::Cancelled
        })
    );
    assert_eq!(found.len(), 1, "a key nothing holds is left out: {found:?}");
    assert!(s.keyed_work(&[]).await.unwrap().is_empty());

    let plan = NewPlan::new("slot", vec![SubTask::new("a", "A", "report")])
        .idempotency_key("schedule:p:1");
    let (plan_id, _) = s.submit_plan(plan).await.unwrap();
    assert!(
        s.unfinished_by_key(&["schedule:p:1".to_owned()])
            .await
            .unwrap(),
        "pending"
    );
    assert!(
        !s.unfinished_by_key(&["schedule:p:2".to_owned()])
            .await
            .unwrap()
    );
    let both = ["schedule:t:1", "schedule:p:1"].map(String::from);
    assert!(
        s.unfinished_by_key(&both).await.unwrap(),
        "one of them, in one read"
    );
    assert!(!s.unfinished_by_key(&[]).await.unwrap());
    let keys = ["schedule:p:1", "schedule:t:1", "schedule:p:2"].map(String::from);
    let found = s.keyed_work(&keys).await.unwrap();
    assert_eq!(
        found.get("schedule:p:1"),
        Some(&KeyedWork::Plan {
            id: plan_id,
            status: PlanStatus::Pending
        })
    );
    assert_eq!(
        found.get("schedule:t:1"),
        Some(&KeyedWork::Task {
            id,
            status: TaskStatus::Cancelled
        }),
        "a task and a plan in one read"
    );
    assert_eq!(found.len(), 2);
    s.cancel_plan(plan_id).await.unwrap();
    assert!(
        !s.unfinished_by_key(&["schedule:p:1".to_owned()])
            .await
            .unwrap(),
        "cancelled"
    );

    // A failure fails the plan at once, but a branch it does not cancel still runs.
    let plan = NewPlan::new(
        "slot",
        vec![
            SubTask::new("a", "A", "report"),
            SubTask::new("b", "B", "report"),
        ],
    )
    .idempotency_key("schedule:p:3");
    let (plan_id, _) = s.submit_plan(plan).await.unwrap();
    let claimed = s.claim_tasks(&claim_params("w", 1)).await.unwrap();
    s.finish_runs(&[failure(claimed[0].run.id, None)])
        .await
        .unwrap();
    let failed = s.get_plan_header(plan_id).await.unwrap().unwrap();
    assert_eq!(failed.status, PlanStatus::Failed);
    assert!(
        s.unfinished_by_key(&["schedule:p:3".to_owned()])
            .await
            .unwrap(),
        "failed, with a subtask still queued"
    );
    let other = s
        .list_tasks(&crate::TaskFilter {
            plan_id: Some(plan_id),
            status: Some(TaskStatus::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    s.set_task_status(other[0].id, StatusChange::to(TaskStatus::Cancelled))
        .await
        .unwrap();
    assert!(
        !s.unfinished_by_key(&["schedule:p:3".to_owned()])
            .await
            .unwrap(),
        "all ended"
    );
}
