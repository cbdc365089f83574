//! Schedules that create plans, and schedules declared again at every start, on memory,
//! SQLite and (with `HIVE_TEST_POSTGRES_URL`) Postgres: one whole plan per slot however
//! many schedulers fire it at once; a template no slot could submit refused with nothing
//! stored; a schedule that cannot fire leaves the others firing; `put_schedule` creates,
//! leaves alone or redefines, keeping an operator's pause; overlapping slots skipped or
//! queued.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use hive_models::{
    Missed, NewPlan, NewSchedule, Overlap, PlanStatus, Scheduled, ScheduledTask, SubTask, slot_key,
};
use hive_ops::{Error, Ops, OpsConfig, SchedulePut, Triggered};
use hive_store::Store;
use hive_store::testing::fixtures::worker;
use serde_json::json;

type O = Ops<dyn Store>;

fn ops(store: Arc<dyn Store>) -> O {
    Ops::new(store)
}

hive_store::per_backend!(hive_store::testing::TestStore::run, ops =>
    a_scheduled_plan_is_made_once_per_slot,
    a_scheduled_plan_no_slot_could_submit_is_refused,
    a_schedule_that_cannot_fire_leaves_the_others_firing,
    a_schedule_put_again_is_created_kept_or_redefined,
    a_schedule_that_skips_overlaps_waits_for_the_previous_slots_work,
    a_schedule_run_by_hand_creates_its_work_now,
    a_schedules_history_keeps_its_last_run_across_a_redefinition,
    a_schedule_that_queues_overlaps_starts_each_slot_once_the_last_has_ended,
    a_manual_run_holds_back_a_schedule_that_skips_or_queues_overlaps,
    a_manual_run_about_to_be_created_holds_back_its_schedule,
    a_slot_claimed_but_not_yet_created_starts_before_any_later_one,
    a_slot_claimed_long_ago_is_left_to_the_missed_slot_rule,
    a_slot_claimed_when_its_schedule_is_redefined_or_resumed_is_created_then,
);

fn template() -> NewPlan {
    NewPlan::new(
        "nightly report ✓",
        vec![
            SubTask::new("fetch", "Fetch", "fetch-nightly").payload(json!({"day": "today"})),
            SubTask::new("sum", "Sum", "sum-nightly").depends_on(["fetch"]),
        ],
    )
    .metadata(json!({"team": "data"}))
}

async fn a_scheduled_plan_is_made_once_per_slot(o: O) {
    // Before the schedule, no task, worker or schedule names the type: a likely typo.
    assert!(o.pause_queue("sum-nightly", false).await.is_err());
    let new =
        NewSchedule::new("nightly", "* * * * * *", template()).missed(Missed::CatchUp { limit: 3 });
    let s = o.add_schedule(new).await.unwrap();
    assert_eq!(o.get_schedule("nightly").await.unwrap(), Some(s.clone()));
    // Its plan's types are known now, though no task of them exists yet.
    o.pause_queue("sum-nightly", false).await.unwrap();
    assert!(o.resume_queue("sum-nightly").await.unwrap());

    // As if no scheduler had run for a minute; then two schedulers fire at once.
    let behind = hive_store::testing::fixtures::schedule_behind(&s, 60);
    assert!(o.store().advance_schedule(&behind).await.unwrap());
    let (a, b) = tokio::join!(o.fire_due_schedules(), o.fire_due_schedules());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.slots >= 3 || b.slots >= 3, "{a:?} {b:?}");

    let plans = o.list_plan_headers(None, None).await.unwrap();
    // Both submitted the latest 3 slots; a second may have passed between them.
    assert!((3..=4).contains(&plans.len()), "{} plans", plans.len());
    let keys: HashSet<_> = plans.iter().map(|p| p.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), plans.len(), "one plan per slot");
    for p in &plans {
        assert_eq!(p.title, "nightly report ✓");
        assert_eq!((p.status, p.total_subtasks), (PlanStatus::Pending, 2));
        assert!(p.materialized, "submitted whole: its tasks exist");
        assert_eq!(p.metadata["team"], "data", "the template's metadata stays");
        assert_eq!(p.metadata["schedule"], "nightly");
        let slot: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(p.metadata["slot"].clone()).unwrap();
        assert_eq!(
            p.idempotency_key.as_deref(),
            Some(slot_key("nightly", slot).as_str())
        );
    }
    // Listings show the last slot's plan and its status.
    let view = o.get_schedule_view("nightly").await.unwrap().unwrap();
    let Some(hive_store::KeyedWork::Plan { id, status }) = view.last_run else {
        panic!("the last slot made a plan: {:?}", view.last_run);
    };
    assert_eq!(status, PlanStatus::Pending);
    assert!(plans.iter().any(|p| p.id == id));
    assert_eq!(o.list_schedule_views().await.unwrap().len(), 1);
    // Firing again finds nothing due and makes nothing twice.
    o.fire_due_schedules().await.unwrap();
    let again = o.list_plan_headers(None, None).await.unwrap().len();
    assert!(
        again <= plans.len() + 1,
        "{again} plans after {}",
        plans.len()
    );

    // The slots' plans run: a root of each is claimable, its dependent waits.
    let c = o
        .claim_next_task(&worker("w"), &[], std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .expect("a root to claim");
    assert_eq!(c.task.task_type, "fetch-nightly");
    assert_eq!(c.task.payload, json!({"day": "today"}));
    assert!(c.task.plan_id.is_some());
}

async fn a_scheduled_plan_no_slot_could_submit_is_refused(o: O) {
    let cycle = NewPlan::new(
        "loop",
        vec![
            SubTask::new("a", "A", "x").depends_on(["b"]),
            SubTask::new("b", "B", "x").depends_on(["a"]),
        ],
    );
    let e = o
        .add_schedule(NewSchedule::new("loop", "0 2 * * *", cycle))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    let parented = NewPlan {
        parent_task_id: Some(hive_models::TaskId::new()),
        ..template()
    };
    let e = o
        .add_schedule(NewSchedule::new("parented", "0 2 * * *", parented))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("plan.parent_task_id"), "{e}");
    let keyed = template().idempotency_key("mine");
    let e = o
        .add_schedule(NewSchedule::new("keyed", "0 2 * * *", keyed))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("plan.idempotency_key"), "{e}");
    assert!(
        o.list_schedules().await.unwrap().is_empty(),
        "nothing stored"
    );
}

async fn a_schedule_that_cannot_fire_leaves_the_others_firing(o: O) {
    // "a-big" sorts first; its payload fits the limit it was added under, not the one a
    // later deploy set.
    let mut big = ScheduledTask::new("big", "big");
    big.payload = json!({"blob": "x".repeat(600)});
    // "b-small" fires at New Year's, so that it is not due again a second later on a
    // slow machine.
    for (name, cron, task, behind) in [
        ("a-big", "* * * * * *", big, 5),
        (
            "b-small",
            "0 0 0 1 1 *",
            ScheduledTask::new("small", "small"),
            2 * 366 * 86_400,
        ),
    ] {
        let s = o
            .add_schedule(NewSchedule::new(name, cron, task))
            .await
            .unwrap();
        let behind = hive_store::testing::fixtures::schedule_behind(&s, behind);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
    }
    let stricter = Ops::with_config(
        o.store().clone(),
        OpsConfig {
            max_payload_bytes: 100,
            ..OpsConfig::default()
        },
    );
    let report = stricter.fire_due_schedules().await.unwrap();
    assert_eq!((report.due, report.slots), (2, 1), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, "a-big");
    assert!(report.failed[0].1.contains("payload"), "{report:?}");
    let a = o.get_schedule("a-big").await.unwrap().unwrap();
    assert!(a.last_fired.is_none(), "its slots stay to fire");
    let retry_at = a.next_slot.unwrap() - o.store().now().await.unwrap();
    assert!(
        retry_at > chrono::Duration::seconds(50),
        "tried again a minute later, not at every step: {retry_at}"
    );
    let b = o.get_schedule("b-small").await.unwrap().unwrap();
    assert!(b.last_fired.is_some());
    assert_eq!(
        stricter.fire_due_schedules().await.unwrap().due,
        0,
        "put off"
    );
    // A minute later, under the limit it was added with, its missed slot fires.
    let a_minute_on = hive_store::ScheduleAdvance {
        next_slot: Some(a.done_until),
        ..hive_store::testing::fixtures::schedule_behind(&a, 0)
    };
    assert!(o.store().advance_schedule(&a_minute_on).await.unwrap());
    assert_eq!(o.fire_due_schedules().await.unwrap().failed, []);
    assert!(
        o.get_schedule("a-big")
            .await
            .unwrap()
            .unwrap()
            .last_fired
            .is_some()
    );
}

async fn a_schedule_put_again_is_created_kept_or_redefined(o: O) {
    let daily = NewSchedule::new("report", "0 2 * * *", template());
    let (first, put) = o.put_schedule(daily.clone()).await.unwrap();
    assert_eq!(put, SchedulePut::Created);
    let (same, put) = o.put_schedule(daily.clone()).await.unwrap();
    assert_eq!((same, put), (first.clone(), SchedulePut::Unchanged));
    assert!(o.pause_schedule("report").await.unwrap());
    let paused = o.get_schedule("report").await.unwrap().unwrap();

    // As an app declaring it in code after a deploy: an hourly task now.
    let hourly = NewSchedule::new("report", "0 * * * *", ScheduledTask::new("r", "report"));
    let (redefined, put) = o.put_schedule(hourly.clone()).await.unwrap();
    assert_eq!(put, SchedulePut::Redefined);
    let stored = o.get_schedule("report").await.unwrap().unwrap();
    assert_eq!(stored.cron, "0 * * * *");
    assert_eq!(
        stored.creates,
        Scheduled::Task(ScheduledTask::new("r", "report"))
    );
    assert!(!stored.enabled, "the operator's pause outlives the deploy");
    assert_eq!(stored.created_at, first.created_at);
    assert!(
        stored.done_until > paused.done_until,
        "it continues from now, so a scheduler still holding the old row loses"
    );
    assert_eq!(redefined.next_slot, stored.next_slot);
    let old_scheduler = hive_store::ScheduleAdvance {
        name: "report".into(),
        from: paused.done_until,
        to: paused.done_until,
        last_fired: None,
        next_slot: paused.next_slot,
        enabled: None,
    };
    assert!(!o.store().advance_schedule(&old_scheduler).await.unwrap());
    // Declared again unchanged: nothing written, still paused.
    let (again, put) = o.put_schedule(hourly).await.unwrap();
    assert_eq!(put, SchedulePut::Unchanged);
    assert_eq!(again, stored);
    // A payload the database gives back in another form (jsonb: `1e16` as an integer) is
    // still the same definition.
    let mut floats = ScheduledTask::new("f", "floats");
    floats.payload = serde_json::from_str(r#"{"big": 1e16, "half": 0.5}"#).unwrap();
    let declared = NewSchedule::new("floats", "0 2 * * *", floats);
    assert_eq!(
        o.put_schedule(declared.clone()).await.unwrap().1,
        SchedulePut::Created
    );
    assert_eq!(
        o.put_schedule(declared).await.unwrap().1,
        SchedulePut::Unchanged
    );
    // Bad input changes nothing.
    let e = o
        .put_schedule(NewSchedule::new(
            "report",
            "* * *",
            ScheduledTask::new("r", "x"),
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`cron`"), "{e}");
    assert_eq!(o.get_schedule("report").await.unwrap().unwrap(), stored);
}

/// The work a task schedule and a plan schedule that skip overlaps created at their last
/// slot: the sync task's id and the etl plan's.
async fn last_slots_work(o: &O) -> (hive_models::TaskId, hive_models::PlanId) {
    let filter = hive_store::TaskFilter {
        task_type: Some("sync-task".into()),
        ..Default::default()
    };
    let tasks = o.list_tasks(&filter).await.unwrap();
    let plans = o.list_plan_headers(None, None).await.unwrap();
    assert_eq!((tasks.len(), plans.len()), (1, 1), "one slot's work each");
    (tasks[0].id, plans[0].id)
}

async fn a_schedule_that_skips_overlaps_waits_for_the_previous_slots_work(o: O) {
    let e = o
        .add_schedule(
            NewSchedule::new("bad", "* * * * * *", template())
                .overlap(Overlap::Skip)
                .missed(Missed::CatchUp { limit: 3 }),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("`overlap`"), "{e}");
    let sync = ScheduledTask::new("sync", "sync-task");
    for (name, creates) in [("etl", Scheduled::Plan(template())), ("sync", sync.into())] {
        let s = NewSchedule::new(name, "* * * * * *", creates).overlap(Overlap::Skip);
        let s = o.add_schedule(s).await.unwrap();
        assert_eq!(
            o.get_schedule(name).await.unwrap().unwrap().overlap,
            Overlap::Skip
        );
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 5);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
    }
    let first = o.fire_due_schedules().await.unwrap();
    assert_eq!((first.slots, first.skipped), (2, 0), "{first:?}");
    let (task, plan) = last_slots_work(&o).await;

    // A second later both are due again while their first slot's work is unfinished.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = o.fire_due_schedules().await.unwrap();
    assert_eq!((second.slots, second.skipped), (0, 2), "{second:?}");
    assert_eq!(
        last_slots_work(&o).await,
        (task, plan),
        "nothing new started"
    );

    // Once that work has ended, the next slot creates its own.
    o.cancel_task(task, Some("done with it")).await.unwrap();
    o.cancel_plan(plan).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let third = o.fire_due_schedules().await.unwrap();
    assert_eq!((third.slots, third.skipped), (2, 0), "{third:?}");
    assert_eq!(o.list_plan_headers(None, None).await.unwrap().len(), 2);

    // Its history, newest first: the running plan, the skipped slot, the ended plan.
    let history = o.schedule_history("etl", 100).await.unwrap().unwrap();
    assert!(
        history.windows(2).all(|w| w[0].slot > w[1].slot),
        "newest first"
    );
    assert!(
        matches!(
            history[0].run,
            Some(hive_store::KeyedWork::Plan {
                status: PlanStatus::Pending,
                ..
            })
        ),
        "{history:?}"
    );
    assert!(
        history.iter().any(|h| h.run.is_none()),
        "the skipped slot: {history:?}"
    );
    assert!(
        history.iter().any(|h| matches!(
            h.run,
            Some(hive_store::KeyedWork::Plan {
                status: PlanStatus::Cancelled,
                ..
            })
        )),
        "{history:?}"
    );
    assert_eq!(
        o.schedule_history("etl", 1).await.unwrap().unwrap().len(),
        1
    );
    assert!(o.schedule_history("ghost", 10).await.unwrap().is_none());
}

async fn a_schedule_run_by_hand_creates_its_work_now(o: O) {
    let nightly = NewSchedule::new("etl", "0 2 * * *", template()).enabled(false);
    o.add_schedule(nightly).await.unwrap();
    let sync = NewSchedule::new("sync", "0 2 * * *", ScheduledTask::new("sync", "sync-task"));
    o.add_schedule(sync).await.unwrap();

    // Paused, and hours from its next slot: run by hand now all the same.
    let Triggered::Plan(plan) = o.trigger_schedule("etl", None).await.unwrap() else {
        panic!("a plan schedule submits a plan");
    };
    let header = o.plan_header(plan).await.unwrap().unwrap();
    assert!(header.materialized, "submitted whole");
    assert_eq!(header.metadata["manual"], true);
    assert_eq!(header.metadata["schedule"], "etl");
    assert_eq!(
        header.metadata["team"], "data",
        "the template's metadata stays"
    );
    let key = header.idempotency_key.unwrap();
    assert!(key.starts_with("schedule-manual:3:etl:"), "{key}");
    assert!(
        header.metadata.get("slot").is_none(),
        "a manual run has no slot"
    );
    assert!(header.metadata["triggered_at"].is_string());
    let etl = o.get_schedule("etl").await.unwrap().unwrap();
    assert_eq!(etl.last_fired, None, "a manual run is not a slot's fire");

    // With a key, a retried request creates nothing new.
    let first = o.trigger_schedule("sync", Some("deploy-42")).await.unwrap();
    let again = o.trigger_schedule("sync", Some("deploy-42")).await.unwrap();
    assert_eq!(first, again);
    let Triggered::Task(task) = first else {
        panic!("a task schedule creates a task");
    };
    let task = o.get_task(task).await.unwrap().unwrap();
    assert_eq!(
        (task.task_type.as_str(), task.metadata["manual"].as_bool()),
        ("sync-task", Some(true))
    );

    // The same key for another schedule is that schedule's own run.
    let other = o.trigger_schedule("etl", Some("deploy-42")).await.unwrap();
    assert!(
        matches!(other, Triggered::Plan(p) if p != plan),
        "{other:?}"
    );
    // Names with `:` cannot make two schedules' manual keys meet.
    for name in ["a", "a:b"] {
        let task = ScheduledTask::new(name, "colon");
        o.add_schedule(NewSchedule::new(name, "0 2 * * *", task))
            .await
            .unwrap();
    }
    let a = o.trigger_schedule("a", Some("b:c")).await.unwrap();
    let ab = o.trigger_schedule("a:b", Some("c")).await.unwrap();
    assert_ne!(a, ab, "each schedule's own run");
    let e = o.trigger_schedule("ghost", None).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let e = o.trigger_schedule("sync", Some(" ")).await.unwrap_err();
    assert!(e.to_string().contains("idempotency_key"), "{e}");
}

async fn a_schedules_history_keeps_its_last_run_across_a_redefinition(o: O) {
    let task = ScheduledTask::new("h", "hist");
    let every = NewSchedule::new("h", "* * * * * *", task.clone());
    let s = o.add_schedule(every).await.unwrap();
    let behind = hive_store::testing::fixtures::schedule_behind(&s, 3);
    assert!(o.store().advance_schedule(&behind).await.unwrap());
    assert_eq!(o.fire_due_schedules().await.unwrap().slots, 1);
    let fired = o
        .get_schedule("h")
        .await
        .unwrap()
        .unwrap()
        .last_fired
        .unwrap();
    let daily = NewSchedule::new("h", "0 2 * * *", task);
    assert_eq!(
        o.put_schedule(daily).await.unwrap().1,
        SchedulePut::Redefined
    );
    let history = o.schedule_history("h", 5).await.unwrap().unwrap();
    assert!(
        history.iter().any(|h| h.slot == fired
            && matches!(
                h.run,
                Some(hive_store::KeyedWork::Task {
                    status: hive_models::TaskStatus::Queued,
                    ..
                })
            )),
        "the last fire's slot, made under the old expression: {history:?}"
    );
}

/// The slot each plan so far was made for, oldest first.
async fn plans_slots(o: &O) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut plans = o.list_plan_headers(None, None).await.unwrap();
    plans.sort_by_key(|p| p.created_at);
    plans
        .iter()
        .map(|p| serde_json::from_value(p.metadata["slot"].clone()).unwrap())
        .collect()
}

async fn a_schedule_that_queues_overlaps_starts_each_slot_once_the_last_has_ended(o: O) {
    // Catching up several slots goes with queueing: they start one after another. New
    // Year's slots, so that no slot comes or goes while the test runs.
    let queued = NewSchedule::new("etl", "0 0 0 1 1 *", template())
        .overlap(Overlap::Queue)
        .missed(Missed::CatchUp { limit: 3 });
    let s = o.add_schedule(queued).await.unwrap();
    assert_eq!(s.overlap, Overlap::Queue);
    let behind = hive_store::testing::fixtures::schedule_behind(&s, 10 * 366 * 86_400);
    assert!(o.store().advance_schedule(&behind).await.unwrap());

    // Three slots due: only the oldest starts, the schedule stays due for the others.
    let first = o.fire_due_schedules().await.unwrap();
    assert_eq!((first.slots, first.waiting), (1, 0), "{first:?}");
    let slots = plans_slots(&o).await;
    assert_eq!(slots.len(), 1);
    let s = o.get_schedule("etl").await.unwrap().unwrap();
    assert_eq!(s.last_fired, Some(slots[0]));
    let now = o.store().now().await.unwrap();
    assert!(s.next_slot.unwrap() <= now, "still due: {s:?}");

    // Two schedulers at once while that plan runs: both wait, nothing new.
    let (a, b) = tokio::join!(o.fire_due_schedules(), o.fire_due_schedules());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.slots + b.slots, a.waiting, b.waiting), (0, 1, 1));
    assert_eq!(plans_slots(&o).await.len(), 1, "nothing started beside it");

    // Once it has ended, the next slot in order starts, once however many fire it.
    let plan = o.list_plan_headers(None, None).await.unwrap()[0].id;
    o.cancel_plan(plan).await.unwrap();
    let (a, b) = tokio::join!(o.fire_due_schedules(), o.fire_due_schedules());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.slots + b.slots >= 1, "{a:?} {b:?}");
    let slots = plans_slots(&o).await;
    assert_eq!(slots.len(), 2, "one plan for the next slot: {slots:?}");
    use chrono::Datelike;
    assert_eq!(slots[1].year(), slots[0].year() + 1, "in order: {slots:?}");
    assert_eq!(o.fire_due_schedules().await.unwrap().waiting, 1);
    o.delete_schedule("etl").await.unwrap();

    // A task schedule that queues only its latest missed slot.
    let sync = ScheduledTask::new("sync", "sync-task");
    let s = NewSchedule::new("sync", "* * * * * *", sync).overlap(Overlap::Queue);
    let s = o.add_schedule(s).await.unwrap();
    let behind = hive_store::testing::fixtures::schedule_behind(&s, 5);
    assert!(o.store().advance_schedule(&behind).await.unwrap());
    assert_eq!(o.fire_due_schedules().await.unwrap().slots, 1);
    let filter = hive_store::TaskFilter {
        task_type: Some("sync-task".into()),
        ..Default::default()
    };
    let tasks = o.list_tasks(&filter).await.unwrap();
    assert_eq!(tasks.len(), 1, "the latest slot only");
    // A second later the next slot is due, and waits for the first slot's task.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let waiting = o.fire_due_schedules().await.unwrap();
    assert_eq!((waiting.slots, waiting.waiting), (0, 1), "{waiting:?}");
    assert_eq!(o.list_tasks(&filter).await.unwrap().len(), 1);
    o.cancel_task(tasks[0].id, Some("done")).await.unwrap();
    assert_eq!(o.fire_due_schedules().await.unwrap().slots, 1);
    let slot = |t: &hive_models::Task| -> chrono::DateTime<chrono::Utc> {
        serde_json::from_value(t.metadata["slot"].clone()).unwrap()
    };
    let mut made: Vec<_> = o
        .list_tasks(&filter)
        .await
        .unwrap()
        .iter()
        .map(slot)
        .collect();
    made.sort();
    assert_eq!(made.len(), 2, "the waiting slot started");
    assert!(made[1] > made[0], "a later slot: {made:?}");
}

async fn a_manual_run_holds_back_a_schedule_that_skips_or_queues_overlaps(o: O) {
    let sync = ScheduledTask::new("sync", "sync-task");
    let schedules = [
        ("etl", Scheduled::Plan(template()), Overlap::Skip),
        ("sync", sync.into(), Overlap::Queue),
    ];
    let mut manual = Vec::new();
    for (name, creates, overlap) in schedules {
        let s = NewSchedule::new(name, "* * * * * *", creates).overlap(overlap);
        let s = o.add_schedule(s).await.unwrap();
        manual.push(o.trigger_schedule(name, Some("by-hand")).await.unwrap());
        let noted = o.get_schedule(name).await.unwrap().unwrap();
        assert_eq!(
            noted.last_manual,
            Some(format!("schedule-manual:{}:{name}:by-hand", name.len()))
        );
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 5);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
    }
    // While the manual runs' work is unfinished, one schedule skips, the other waits.
    let held = o.fire_due_schedules().await.unwrap();
    assert_eq!(
        (held.slots, held.skipped, held.waiting),
        (0, 1, 1),
        "{held:?}"
    );
    for run in manual {
        match run {
            Triggered::Plan(p) => o.cancel_plan(p).await.map(drop).unwrap(),
            Triggered::Task(t) => o.cancel_task(t, Some("done")).await.map(drop).unwrap(),
        }
    }
    // Ended, they hold nothing back: the waiting slot starts, and the skipping schedule's
    // next slot (a second on, or now if a second has passed) does.
    o.fire_due_schedules().await.unwrap();
    let filter = hive_store::TaskFilter {
        task_type: Some("sync-task".into()),
        ..Default::default()
    };
    assert_eq!(
        o.list_tasks(&filter).await.unwrap().len(),
        2,
        "the manual run's task and the queued slot's"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    o.fire_due_schedules().await.unwrap();
    assert_eq!(
        o.list_plan_headers(None, None).await.unwrap().len(),
        2,
        "the manual run's plan and a slot's"
    );
}

/// A manual run noted a moment ago whose work its trigger has not created yet holds the
/// slots back as unfinished work does: a scheduler stepping between the note and the
/// creation starts no slot beside it. One noted over a minute ago whose work never came
/// (its creation failed) holds nothing back.
async fn a_manual_run_about_to_be_created_holds_back_its_schedule(o: O) {
    for (name, overlap) in [("skip", Overlap::Skip), ("queue", Overlap::Queue)] {
        let task = ScheduledTask::new("t", "about-task");
        let s = NewSchedule::new(name, "* * * * * *", task).overlap(overlap);
        let s = o.add_schedule(s).await.unwrap();
        let key = format!("schedule-manual:{}:{name}:pending", name.len());
        assert!(o.store().note_manual_run(name, &key).await.unwrap());
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 5);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
    }
    let held = o.fire_due_schedules().await.unwrap();
    assert_eq!(
        (held.slots, held.skipped, held.waiting),
        (0, 1, 1),
        "{held:?}"
    );
    for name in ["skip", "queue"] {
        let mut s = o.get_schedule(name).await.unwrap().unwrap();
        s.last_manual_at = s.last_manual_at.map(|t| t - chrono::TimeDelta::minutes(2));
        assert!(o.store().delete_schedule(name).await.unwrap());
        o.store().insert_schedule(&s).await.unwrap();
        // Due again (the skipping one moved past the slots it skipped).
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 5);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
    }
    let started = o.fire_due_schedules().await.unwrap();
    assert_eq!(
        (started.slots, started.waiting),
        (2, 0),
        "a note whose work never came holds nothing back: {started:?}"
    );
}

/// Yearly schedules `queued` and `skipping` (overlaps queued, skipped), years behind,
/// whose last New Year's slot a scheduler claimed just now (long after its time, catching
/// up) and stalled before creating its plan; this year's slot is due too.
async fn last_new_years_slot_claimed(o: &O) {
    use chrono::{Datelike, TimeZone};
    for (name, overlap) in [("queued", Overlap::Queue), ("skipping", Overlap::Skip)] {
        let yearly = NewSchedule::new(name, "0 0 0 1 1 *", template()).overlap(overlap);
        let s = o.add_schedule(yearly).await.unwrap();
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 10 * 366 * 86_400);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
        let year = o.store().now().await.unwrap().year();
        let claimed = chrono::Utc
            .with_ymd_and_hms(year - 1, 1, 1, 0, 0, 0)
            .unwrap();
        let read = o.get_schedule(name).await.unwrap().unwrap();
        assert!(o.store().claim_slot(&read, claimed).await.unwrap());
    }
}

async fn a_slot_claimed_but_not_yet_created_starts_before_any_later_one(o: O) {
    use chrono::Datelike;
    last_new_years_slot_claimed(&o).await;
    let redo = o.fire_due_schedules().await.unwrap();
    assert_eq!(redo.slots, 2, "the claimed slots: {redo:?}");
    let years: Vec<i32> = plans_slots(&o).await.iter().map(|s| s.year()).collect();
    let last_year = o.store().now().await.unwrap().year() - 1;
    assert_eq!(years, [last_year, last_year], "not this year's beside them");
    // Next, this year's slot finds the claimed slot's plan unfinished.
    let next = o.fire_due_schedules().await.unwrap();
    assert_eq!(
        (next.slots, next.waiting, next.skipped),
        (0, 1, 1),
        "{next:?}"
    );
}

/// Moves the claim of schedule `name`'s last slot 20 minutes back: its starter stalled
/// longer than one does.
async fn claimed_long_ago(o: &O, name: &str) {
    let mut s = o.get_schedule(name).await.unwrap().unwrap();
    assert!(s.last_claimed_at.is_some(), "{s:?}");
    s.last_claimed_at = s
        .last_claimed_at
        .map(|t| t - chrono::TimeDelta::minutes(20));
    assert!(o.store().delete_schedule(name).await.unwrap());
    o.store().insert_schedule(&s).await.unwrap();
}

/// A slot claimed longer ago than a starter stalls (its work kept failing for days) is
/// not started once the fault is fixed: the missed-slot rule picks what starts, as for
/// any slot not started. Measured from the claim, not the slot's time.
async fn a_slot_claimed_long_ago_is_left_to_the_missed_slot_rule(o: O) {
    use chrono::Datelike;
    last_new_years_slot_claimed(&o).await;
    for name in ["queued", "skipping"] {
        claimed_long_ago(&o, name).await;
    }
    let fired = o.fire_due_schedules().await.unwrap();
    assert_eq!(fired.slots, 2, "{fired:?}");
    let years: Vec<i32> = plans_slots(&o).await.iter().map(|s| s.year()).collect();
    let this_year = o.store().now().await.unwrap().year();
    assert_eq!(
        years,
        [this_year, this_year],
        "the latest slot, as `missed skip` says"
    );
    for name in ["queued", "skipping"] {
        let s = o.get_schedule(name).await.unwrap().unwrap();
        assert_eq!(s.last_fired.map(|l| l.year()), Some(this_year), "{s:?}");
    }
}

/// A slot a scheduler claimed and had not created yet when the schedule is redefined (or
/// resumed) is not passed as if it had finished: its work is created then, as the
/// definition it was claimed under says, so the next slot finds it unfinished (skipped or
/// waiting) instead of starting beside it once the stalled scheduler creates it after all.
/// A slot claimed long ago (its scheduler died, the schedule paused since) is passed.
async fn a_slot_claimed_when_its_schedule_is_redefined_or_resumed_is_created_then(o: O) {
    use chrono::{DurationRound, TimeDelta};
    let now = o.store().now().await.unwrap();
    let this_minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap();
    let last_year = this_minute - TimeDelta::days(365);
    for (name, redefined, claimed) in [
        ("redefined", true, this_minute),
        ("resumed", false, this_minute),
        ("resumed-late", false, last_year),
    ] {
        let minutely = NewSchedule::new(name, "0 * * * * *", template()).overlap(Overlap::Skip);
        let s = o.add_schedule(minutely).await.unwrap();
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 10 * 366 * 86_400);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
        // A scheduler claims a slot, then stalls before creating its plan; the schedule is
        // paused meanwhile (a paused schedule claims no slot).
        let read = o.get_schedule(name).await.unwrap().unwrap();
        assert!(o.store().claim_slot(&read, claimed).await.unwrap());
        if name == "resumed-late" {
            // Its scheduler died long ago.
            claimed_long_ago(&o, name).await;
        }
        if !redefined {
            assert!(o.pause_schedule(name).await.unwrap());
            let paused = o.get_schedule(name).await.unwrap().unwrap();
            assert!(
                !o.store()
                    .claim_slot(&paused, claimed + TimeDelta::minutes(1))
                    .await
                    .unwrap(),
                "a step that read it paused claims nothing"
            );
        }
        if redefined {
            let later = NewSchedule::new(name, "30 * * * * *", template()).overlap(Overlap::Skip);
            let (_, change) = o.put_schedule(later).await.unwrap();
            assert_eq!(change, SchedulePut::Redefined);
        } else {
            assert!(o.resume_schedule(name).await.unwrap());
        }
    }
    assert_eq!(plans_slots(&o).await, [this_minute, this_minute]);
}
