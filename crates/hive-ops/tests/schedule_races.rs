//! Schedules that skip or queue overlaps, fired by several schedulers at once for a few
//! seconds of per-second slots, on memory, SQLite and (with `HIVE_TEST_POSTGRES_URL`)
//! Postgres: however the schedulers' steps interleave, a slot's task never exists beside
//! the previous slot's unfinished one, and slots start in slot order.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_models::{Missed, NewSchedule, Overlap, ScheduledTask, Task, TaskStatus, Timestamp};
use hive_ops::Ops;
use hive_store::{Store, TaskFilter};

type O = Ops<dyn Store>;

fn ops(store: Arc<dyn Store>) -> O {
    Ops::new(store)
}

hive_store::per_backend!(hive_store::testing::TestStore::run, ops =>
    schedulers_racing_never_start_a_queued_slot_beside_the_last,
    schedulers_racing_never_start_a_skipping_slot_beside_the_last,
);

/// How long the schedulers race: a few slots' worth.
const RACE: Duration = Duration::from_millis(4_500);
/// Schedulers stepping at once, as workers on several hosts would.
const SCHEDULERS: usize = 4;

fn slot_of(t: &Task) -> Timestamp {
    serde_json::from_value(t.metadata["slot"].clone()).unwrap()
}

/// Schedules raced at once: a step goes through them one after another on what it read
/// at its start, so the later ones are acted on from an older read, as in a large fleet.
const SCHEDULES: usize = 12;

fn schedule_of(t: &Task) -> String {
    t.metadata["schedule"].as_str().unwrap().to_owned()
}

/// Races `SCHEDULERS` schedulers over `SCHEDULES` schedules with `overlap` while a
/// completer ends each slot's task a little after it appears, checking at every look that
/// at most one task of each schedule is unfinished; returns each schedule's tasks, in
/// creation order.
async fn race(o: O, overlap: Overlap, missed: Missed) -> Vec<Vec<Task>> {
    for n in 0..SCHEDULES {
        let task = ScheduledTask::new("tick", "race-task");
        let new = NewSchedule::new(format!("race-{n:02}"), "* * * * * *", task)
            .overlap(overlap)
            .missed(missed);
        let s = o.add_schedule(new).await.unwrap();
        let behind = hive_store::testing::fixtures::schedule_behind(&s, 4);
        assert!(o.store().advance_schedule(&behind).await.unwrap());
    }

    let o = Arc::new(o);
    let started = Instant::now();
    let mut schedulers = Vec::new();
    for n in 0..SCHEDULERS {
        let o = o.clone();
        schedulers.push(tokio::spawn(async move {
            let mut steps = 0u32;
            while started.elapsed() < RACE && steps < 2_000 {
                o.fire_due_schedules().await.unwrap();
                steps += 1;
                // Staggered, so steps land on both sides of each slot's time.
                tokio::time::sleep(Duration::from_millis(3 + 2 * n as u64)).await;
            }
        }));
    }
    let filter = TaskFilter {
        task_type: Some("race-task".into()),
        limit: Some(10_000),
        ..Default::default()
    };
    let mut looks = 0u32;
    while started.elapsed() < RACE && looks < 1_000 {
        // The store's clock, which stamped the tasks.
        let now = o.store().now().await.unwrap();
        let mut unfinished: Vec<Task> = o
            .list_tasks(&filter)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| !t.status.is_terminal())
            .collect();
        unfinished.sort_by_key(schedule_of);
        for pair in unfinished.windows(2) {
            assert_ne!(
                schedule_of(&pair[0]),
                schedule_of(&pair[1]),
                "two slots' tasks of one schedule unfinished at once: {} and {}",
                slot_of(&pair[0]),
                slot_of(&pair[1])
            );
        }
        // Each task ends a while after it appears, so the next slot has to wait for it:
        // each schedule's a different while, so that some end near a slot's time.
        for t in &unfinished {
            let n: i64 = schedule_of(t)["race-".len()..].parse().unwrap();
            let runs_for = chrono::Duration::milliseconds(200 + 40 * n);
            if (now - t.created_at) > runs_for {
                o.cancel_task(t.id, Some("ran")).await.unwrap();
            }
        }
        looks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in schedulers {
        s.await.unwrap();
    }
    let mut made = o.list_tasks(&filter).await.unwrap();
    made.sort_by_key(|t| (schedule_of(t), t.created_at, slot_of(t)));
    let mut each: Vec<Vec<Task>> = Vec::new();
    for t in made {
        match each.last_mut() {
            Some(last) if schedule_of(&last[0]) == schedule_of(&t) => last.push(t),
            _ => each.push(vec![t]),
        }
    }
    assert_eq!(each.len(), SCHEDULES, "every schedule fired");
    for tasks in &each {
        let slots: Vec<Timestamp> = tasks.iter().map(slot_of).collect();
        assert!(tasks.len() >= 2, "slots kept starting: {slots:?}");
    }
    each
}

async fn schedulers_racing_never_start_a_queued_slot_beside_the_last(o: O) {
    for made in race(o, Overlap::Queue, Missed::CatchUp { limit: 3 }).await {
        let slots: Vec<Timestamp> = made.iter().map(slot_of).collect();
        assert!(
            slots.windows(2).all(|w| w[0] < w[1]),
            "queued slots start in slot order: {slots:?}"
        );
        let ended = made
            .iter()
            .filter(|t| t.status == TaskStatus::Cancelled)
            .count();
        assert!(ended + 1 >= made.len(), "all but the last ended");
    }
}

async fn schedulers_racing_never_start_a_skipping_slot_beside_the_last(o: O) {
    for made in race(o, Overlap::Skip, Missed::Skip).await {
        let slots: Vec<Timestamp> = made.iter().map(slot_of).collect();
        assert!(
            slots.windows(2).all(|w| w[0] < w[1]),
            "a later slot never starts before an earlier one: {slots:?}"
        );
    }
}
