use chrono::TimeZone;

use super::*;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

#[test]
fn five_and_six_fields_parse_and_others_are_refused_by_name() {
    assert!(Timing::parse("*/5 * * * *", "UTC").is_ok());
    assert!(Timing::parse("*/10 * * * * *", "Europe/Paris").is_ok());
    let e = Timing::parse("* * * *", "UTC").unwrap_err().to_string();
    assert!(e.contains("`cron`") && e.contains("4 fields"), "{e}");
    let e = Timing::parse("61 * * * *", "UTC").unwrap_err().to_string();
    assert!(
        e.contains("`cron`") && e.contains("minute field `61`"),
        "{e}"
    );
    // The field the parser refuses is named, seconds counted when given.
    for (cron, named) in [
        ("0 25 * * *", "hour field `25`"),
        ("0 0 1 13 *", "month field `13`"),
        ("0 0 * * funday", "day-of-week field `funday`"),
        ("70 0 0 * * *", "second field `70`"),
        ("0 0-61/5 0 * * *", "minute field `0-61/5`"),
    ] {
        let e = Timing::parse(cron, "UTC").unwrap_err().to_string();
        assert!(e.contains(named), "{cron}: {e}");
    }
    let e = Timing::parse("* * * * *", "Mars/Olympus")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`timezone`") && e.contains("Mars/Olympus"),
        "{e}"
    );
}

#[test]
fn slots_follow_the_zones_clock_across_daylight_saving() {
    // 09:00 in Paris: 08:00 UTC in winter, 07:00 UTC in summer (DST began 2026-03-29).
    let t = Timing::parse("0 9 * * *", "Europe/Paris").unwrap();
    assert_eq!(
        t.next_after(at(2026, 3, 27, 12, 0, 0)),
        Some(at(2026, 3, 28, 8, 0, 0))
    );
    assert_eq!(
        t.next_after(at(2026, 3, 28, 12, 0, 0)),
        Some(at(2026, 3, 29, 7, 0, 0))
    );
    // 02:30 does not exist in Paris on 2026-03-29: the slot is not fired twice nor lost
    // for the following days.
    let night = Timing::parse("30 2 * * *", "Europe/Paris").unwrap();
    let after = night.next_after(at(2026, 3, 28, 12, 0, 0)).unwrap();
    assert!(after > at(2026, 3, 28, 12, 0, 0), "{after}");
    let next = night.next_after(after).unwrap();
    assert!(
        next > after && next - after <= chrono::Duration::hours(25),
        "{after} → {next}"
    );
}

#[test]
fn skip_fires_only_the_latest_missed_slot_and_catch_up_is_bounded() {
    let t = Timing::parse("0 * * * *", "UTC").unwrap();
    let last = at(2026, 1, 1, 0, 0, 0);
    let now = at(2026, 1, 1, 10, 30, 0);
    assert_eq!(
        t.due(last, now, Missed::Skip),
        vec![at(2026, 1, 1, 10, 0, 0)]
    );
    let caught = t.due(last, now, Missed::CatchUp { limit: 3 });
    assert_eq!(
        caught,
        vec![
            at(2026, 1, 1, 8, 0, 0),
            at(2026, 1, 1, 9, 0, 0),
            at(2026, 1, 1, 10, 0, 0)
        ]
    );
    let all = t.due(last, now, Missed::CatchUp { limit: 100 });
    assert_eq!(all.len(), 10, "every missed slot, none twice: {all:?}");
    assert!(
        t.due(at(2026, 1, 1, 10, 0, 0), now, Missed::Skip)
            .is_empty()
    );
    // Missed for years, a per-second schedule still costs only its kept slots.
    let every_second = Timing::parse("* * * * * *", "UTC").unwrap();
    let far = every_second.due(at(2020, 1, 1, 0, 0, 0), now, Missed::CatchUp { limit: 5 });
    assert_eq!(far.len(), 5);
    assert_eq!(*far.last().unwrap(), now);
    // Slots are whole seconds, whatever the fraction of `now`.
    let fraction = now + chrono::Duration::microseconds(451_386);
    assert_eq!(
        every_second.due(now, fraction, Missed::Skip),
        Vec::<Timestamp>::new()
    );
    assert_eq!(
        every_second.next_after(fraction),
        Some(now + chrono::Duration::seconds(1))
    );
}

#[test]
fn a_new_schedule_is_validated_whole() {
    let task = ScheduledTask::new("report", "shell");
    assert!(
        NewSchedule::new("nightly", "0 2 * * *", task.clone())
            .validate(1024)
            .is_ok()
    );
    let e = NewSchedule::new(" ", "0 2 * * *", task.clone())
        .validate(1024)
        .unwrap_err();
    assert!(e.to_string().contains("`name`"), "{e}");
    let e = NewSchedule::new("n", "0 2 * * *", task.clone())
        .missed(Missed::CatchUp { limit: 0 })
        .validate(1024)
        .unwrap_err();
    assert!(e.to_string().contains("missed.limit"), "{e}");
    let e = NewSchedule::new("n", "0 2 * * *", ScheduledTask::new("", "shell"))
        .validate(1024)
        .unwrap_err();
    assert!(e.to_string().contains("`title`"), "{e}");
    let e = NewSchedule::new("n", "0 0 31 2 *", task.clone())
        .validate(1024)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid `cron`: `0 0 31 2 *` never fires: no date matches it"
    );
    // A date that comes only in leap years still comes.
    assert!(
        NewSchedule::new("n", "0 0 29 2 *", task.clone())
            .validate(1024)
            .is_ok()
    );
    let slot = at(2026, 1, 1, 2, 0, 0);
    let t = task.to_new_task("nightly", slot);
    assert_eq!(
        t.idempotency_key.as_deref(),
        Some("schedule:nightly:2026-01-01T02:00:00+00:00")
    );
}

#[test]
fn a_schedules_concurrency_key_reaches_each_slots_task() {
    let mut task = ScheduledTask::new("sync", "shell");
    task.concurrency_key = Some("nightly-sync".into());
    let slot = chrono::Utc::now();
    let t = task.to_new_task("nightly-sync", slot);
    assert_eq!(t.concurrency_key.as_deref(), Some("nightly-sync"));
    assert_eq!(t.concurrency_limit, None, "serial: the key's default of 1");
    t.validate(1024).unwrap();
}

#[test]
fn a_schedules_json_names_what_it_creates_task_or_plan() {
    let task = NewSchedule::new("n", "0 2 * * *", ScheduledTask::new("report", "shell"));
    let json = serde_json::to_value(&task).unwrap();
    assert_eq!(json["task"]["task_type"], "shell", "{json}");
    assert!(json.get("plan").is_none());
    assert_eq!(serde_json::from_value::<NewSchedule>(json).unwrap(), task);

    let plan = crate::NewPlan::new("nightly", vec![crate::SubTask::new("a", "A", "x")]);
    let json = serde_json::to_value(NewSchedule::new("n", "0 2 * * *", plan.clone())).unwrap();
    assert_eq!(json["plan"]["title"], "nightly", "{json}");
    assert!(json.get("task").is_none());
    let back: NewSchedule = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back.creates, Scheduled::Plan(plan));

    let mut both = json.clone();
    both["task"] = serde_json::to_value(ScheduledTask::new("t", "x")).unwrap();
    let e = serde_json::from_value::<NewSchedule>(both).unwrap_err();
    assert!(
        e.to_string().contains("a `task` or a `plan`, not both"),
        "{e}"
    );
    let mut neither = json.clone();
    neither.as_object_mut().unwrap().remove("plan");
    let e = serde_json::from_value::<NewSchedule>(neither).unwrap_err();
    assert!(e.to_string().contains("missing `task` or `plan`"), "{e}");
    let mut bad = json;
    bad["plan"]["subtasks"] = serde_json::json!("none");
    let e = serde_json::from_value::<NewSchedule>(bad).unwrap_err();
    assert!(e.to_string().starts_with("`plan`: "), "{e}");
}

#[test]
fn a_stored_task_reads_back_as_stores_held_it_before_plans() {
    let task = ScheduledTask::new("report", "shell");
    let before_plans = serde_json::to_value(&task).unwrap();
    assert_eq!(
        Scheduled::Task(task.clone()).to_stored().unwrap(),
        before_plans
    );
    assert_eq!(
        Scheduled::from_stored(before_plans).unwrap(),
        Scheduled::Task(task)
    );
    let plan = Scheduled::Plan(crate::NewPlan::new(
        "nightly",
        vec![crate::SubTask::new("a", "A", "x")],
    ));
    let stored = plan.to_stored().unwrap();
    assert!(stored.get("plan").is_some(), "{stored}");
    assert_eq!(Scheduled::from_stored(stored).unwrap(), plan);
}

#[test]
fn each_slots_plan_has_the_slots_key_and_says_where_it_came_from() {
    let template = crate::NewPlan::new("nightly", vec![crate::SubTask::new("a", "A", "x")])
        .metadata(serde_json::json!({"team": "data", "slot": "mine"}));
    let slot = at(2026, 1, 1, 2, 0, 0);
    let SlotWork::Plan(p) = Scheduled::Plan(template).for_slot("nightly", slot) else {
        panic!("a plan schedule makes plans");
    };
    assert_eq!(
        p.idempotency_key.as_deref(),
        Some("schedule:nightly:2026-01-01T02:00:00+00:00")
    );
    assert_eq!(
        p.metadata,
        serde_json::json!({"team": "data", "schedule": "nightly", "slot": "2026-01-01T02:00:00Z"})
    );
    p.validate(1024).unwrap();
}

#[test]
fn the_pending_slot_stays_on_the_first_slot_not_handled_and_is_overdue_after_a_grace() {
    let s = Schedule {
        name: "nightly".into(),
        cron: "0 2 * * *".into(),
        timezone: "UTC".into(),
        creates: ScheduledTask::new("n", "report").into(),
        enabled: true,
        missed: Missed::Skip,
        overlap: Overlap::Queue,
        done_until: at(2026, 12, 1, 12, 0, 0),
        last_fired: Some(at(2026, 12, 1, 2, 0, 0)),
        last_manual: None,
        last_manual_at: None,
        last_claimed_at: None,
        // Put off a minute at a time by a scheduler that could not create the work.
        next_slot: Some(at(2026, 12, 6, 23, 0, 0)),
        created_at: at(2026, 11, 1, 0, 0, 0),
        updated_at: at(2026, 12, 6, 22, 59, 0),
    };
    let pending = at(2026, 12, 2, 2, 0, 0);
    assert_eq!(s.pending_slot(), Some(pending));
    let late = |now| Schedule::is_overdue(pending, now);
    assert!(late(at(2026, 12, 6, 22, 0, 0)));
    assert!(!late(pending + chrono::Duration::seconds(5)), "in grace");
    assert!(late(pending + chrono::Duration::seconds(6)));
    assert!(!late(at(2026, 12, 1, 20, 0, 0)), "not yet due");
    let unreadable = Schedule {
        timezone: "Mars/Olympus".into(),
        ..s.clone()
    };
    assert_eq!(
        unreadable.pending_slot(),
        Some(unreadable.done_until),
        "a schedule that cannot fire shows as due since its last handled slot"
    );
    let paused = Schedule {
        enabled: false,
        ..s
    };
    assert_eq!(paused.pending_slot(), None);
}

/// The slots from iterating `next_after` from `start` to `end` (inclusive).
fn walk(t: &Timing, start: Timestamp, end: Timestamp) -> Vec<Timestamp> {
    std::iter::successors(t.next_after(start), |s| t.next_after(*s))
        .take_while(|s| *s <= end)
        .collect()
}

fn paris(cron: &str) -> Timing {
    Timing::parse(cron, "Europe/Paris").unwrap()
}

#[test]
fn when_clocks_go_back_the_repeated_hour_fires_twice_in_order() {
    // 2026-10-25 01:00Z in Paris: 03:00 CEST becomes 02:00 CET; 02:00-02:59 comes twice.
    let quarter = paris("*/15 * * * *");
    let every: Vec<Timestamp> = (0..8)
        .map(|i| at(2026, 10, 25, 0, 30, 0) + chrono::Duration::minutes(15 * i))
        .collect();
    assert_eq!(every.last(), Some(&at(2026, 10, 25, 2, 15, 0)));
    assert_eq!(
        walk(
            &quarter,
            at(2026, 10, 25, 0, 15, 0),
            at(2026, 10, 25, 2, 15, 0)
        ),
        every
    );
    let all = Missed::CatchUp { limit: 100 };
    assert_eq!(
        quarter.due(at(2026, 10, 25, 0, 15, 0), at(2026, 10, 25, 2, 15, 0), all),
        every
    );
    // Walking back over the change skips none of the second pass.
    assert_eq!(
        quarter.due(
            at(2026, 10, 25, 0, 0, 0),
            at(2026, 10, 25, 2, 0, 0),
            Missed::Skip
        ),
        vec![at(2026, 10, 25, 2, 0, 0)]
    );
    assert_eq!(
        quarter.due(
            at(2026, 10, 25, 0, 0, 0),
            at(2026, 10, 25, 1, 59, 0),
            Missed::Skip
        ),
        vec![at(2026, 10, 25, 1, 45, 0)]
    );

    let hourly = paris("0 * * * *");
    assert_eq!(
        walk(
            &hourly,
            at(2026, 10, 24, 23, 30, 0),
            at(2026, 10, 25, 2, 30, 0)
        ),
        [0, 1, 2].map(|h| at(2026, 10, 25, h, 0, 0))
    );
    // A fixed time in the repeated hour fires once, at its first pass.
    let night = paris("30 2 * * *");
    assert_eq!(
        walk(
            &night,
            at(2026, 10, 24, 12, 0, 0),
            at(2026, 10, 25, 23, 0, 0)
        ),
        vec![at(2026, 10, 25, 0, 30, 0)]
    );
    assert_eq!(
        night.due(at(2026, 10, 24, 12, 0, 0), at(2026, 10, 25, 23, 0, 0), all),
        vec![at(2026, 10, 25, 0, 30, 0)]
    );
}

#[test]
fn a_slot_after_an_instant_in_the_repeated_hour_is_after_it() {
    // 01:10Z shows 02:10 CET, the second time: its next quarter is 01:15Z, not 00:15Z.
    let quarter = paris("*/15 * * * *");
    assert_eq!(
        quarter.next_after(at(2026, 10, 25, 1, 10, 0)),
        Some(at(2026, 10, 25, 1, 15, 0))
    );
    assert_eq!(
        quarter.next_after(at(2026, 10, 25, 0, 50, 0)),
        Some(at(2026, 10, 25, 1, 0, 0))
    );
    // The fixed time already fired at its first pass: the next is the next day's.
    assert_eq!(
        paris("30 2 * * *").next_after(at(2026, 10, 25, 1, 10, 0)),
        Some(at(2026, 10, 26, 1, 30, 0))
    );
}

#[test]
fn when_clocks_go_forward_a_fixed_time_fires_at_the_gaps_end_and_others_skip_it() {
    // 2026-03-29 01:00Z in Paris: 02:00 CET becomes 03:00 CEST; 02:00-02:59 never shows.
    let night = paris("30 2 * * *");
    let gap_end = at(2026, 3, 29, 1, 0, 0);
    assert_eq!(night.next_after(at(2026, 3, 28, 12, 0, 0)), Some(gap_end));
    assert_eq!(
        night.due(
            at(2026, 3, 28, 12, 0, 0),
            at(2026, 3, 29, 12, 0, 0),
            Missed::Skip
        ),
        vec![gap_end]
    );
    assert_eq!(
        night.due(gap_end, at(2026, 3, 29, 12, 0, 0), Missed::Skip),
        Vec::<Timestamp>::new()
    );
    assert_eq!(night.next_after(gap_end), Some(at(2026, 3, 30, 0, 30, 0)));

    let quarter = paris("*/15 * * * *");
    assert_eq!(
        walk(
            &quarter,
            at(2026, 3, 29, 0, 30, 0),
            at(2026, 3, 29, 1, 15, 0)
        ),
        vec![
            at(2026, 3, 29, 0, 45, 0),
            at(2026, 3, 29, 1, 0, 0),
            at(2026, 3, 29, 1, 15, 0)
        ]
    );
    assert_eq!(
        quarter.due(
            at(2026, 3, 29, 0, 30, 0),
            at(2026, 3, 29, 0, 59, 0),
            Missed::Skip
        ),
        vec![at(2026, 3, 29, 0, 45, 0)]
    );
}

/// The slots from `start` (exclusive) to `end` (inclusive) by the rules in [`Timing`]'s
/// doc, read second by second: the reference the searches must agree with.
fn reference_slots(t: &Timing, start: Timestamp, end: Timestamp) -> Vec<Timestamp> {
    use chrono::LocalResult;
    let local = |i: Timestamp| i.with_timezone(&t.tz).naive_local();
    let (from, to) = (
        local(start) - chrono::Duration::hours(3),
        local(end) + chrono::Duration::hours(3),
    );
    let mut slots = Vec::new();
    let mut n = from;
    while n <= to {
        if t.cron.is_time_matching(&Utc.from_utc_datetime(&n)).unwrap() {
            match t.tz.from_local_datetime(&n) {
                LocalResult::Single(s) => slots.push(s.with_timezone(&Utc)),
                LocalResult::Ambiguous(a, b) => {
                    slots.push(a.with_timezone(&Utc));
                    if !t.fixed {
                        slots.push(b.with_timezone(&Utc));
                    }
                }
                LocalResult::None if t.fixed => {
                    let mut after = n;
                    while t.tz.from_local_datetime(&after).earliest().is_none() {
                        after += chrono::Duration::seconds(1);
                    }
                    if after.date() == n.date() {
                        let s = t.tz.from_local_datetime(&after).earliest().unwrap();
                        slots.push(s.with_timezone(&Utc));
                    }
                }
                LocalResult::None => {}
            }
        }
        n += chrono::Duration::seconds(1);
    }
    slots.sort();
    slots.retain(|s| *s > start && *s <= end);
    slots
}

/// The hours of 2026 at whose end `zone`'s offset changes.
fn changes_in_2026(zone: &str) -> Vec<Timestamp> {
    use chrono::Offset;
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let offset = |t: Timestamp| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    (0..365 * 24)
        .map(|h| at(2026, 1, 1, 0, 0, 0) + chrono::Duration::hours(h))
        .filter(|t| offset(*t) != offset(*t + chrono::Duration::hours(1)))
        .collect()
}

#[test]
fn next_after_and_due_agree_with_the_rules_around_clock_changes() {
    // Clocks going forward and back by an hour (Paris, New York), half an hour (Lord
    // Howe), two hours (Troll), and at midnight (Havana).
    let zones = [
        "Europe/Paris",
        "America/New_York",
        "Australia/Lord_Howe",
        "Antarctica/Troll",
        "America/Havana",
    ];
    let crons = [
        "* * * * *",
        "*/15 * * * *",
        "0 * * * *",
        "30 2 * * *",
        "0 30 1 * * *",
        "0 0 * * *",
        "*/20 * * * * *",
    ];
    for zone in zones {
        let changes = changes_in_2026(zone);
        assert_eq!(changes.len(), 2, "{zone}: {changes:?}");
        for change in changes {
            let (start, end) = (
                change - chrono::Duration::hours(5),
                change + chrono::Duration::hours(4),
            );
            for cron in crons {
                let t = Timing::parse(cron, zone).unwrap();
                agrees_with_the_rules(&t, start, end, &format!("{cron} in {zone} near {change}"));
            }
        }
    }
}

/// Iterating `next_after` from `start` to `end`, catching up with `due`, the rules read
/// second by second, and single searches from instants in between give the same slots.
fn agrees_with_the_rules(t: &Timing, start: Timestamp, end: Timestamp, what: &str) {
    let walked = walk(t, start, end);
    assert!(walked.windows(2).all(|w| w[0] < w[1]), "{what}: {walked:?}");
    assert!(
        walked.iter().all(|s| s.timestamp_subsec_nanos() == 0),
        "{what}"
    );
    let caught = t.due(start, end, Missed::CatchUp { limit: 100_000 });
    assert_eq!(walked, caught, "{what}");
    assert_eq!(walked, reference_slots(t, start, end), "{what}");
    // From any instant, even mid-second, the next slot is the first one after it and the
    // latest due is the last one up to it.
    for minute in (0..9 * 60).step_by(7) {
        let from = start
            + chrono::Duration::seconds(minute * 60 + 13)
            + chrono::Duration::milliseconds(250);
        if let Some(next) = walked.iter().find(|s| **s > from) {
            assert_eq!(t.next_after(from), Some(*next), "{what} after {from}");
        }
        let latest = walked.iter().rev().find(|s| **s <= from).copied();
        assert_eq!(
            t.due(start, from, Missed::Skip).first().copied(),
            latest,
            "{what} at {from}"
        );
    }
}

/// A manual run's key holds the schedule's name and the operator's key: too long together,
/// it is refused before anything is noted.
#[test]
fn a_manual_runs_whole_key_is_checked() {
    let creates = Scheduled::Task(ScheduledTask::new("report", "shell"));
    let now = at(2026, 1, 1, 0, 0, 0);
    assert!(creates.for_manual_run("nightly", now, Some("k")).is_ok());
    let e = creates
        .for_manual_run("nightly", now, Some(&"k".repeat(1000)))
        .unwrap_err();
    assert!(e.to_string().contains("idempotency_key"), "{e}");
}
