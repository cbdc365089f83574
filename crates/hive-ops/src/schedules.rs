//! Schedules: create (or redefine), read, pause, resume, delete, and the scheduler step
//! every worker (and `hive schedule run`) takes — creating the task or plan of each due slot
//! exactly once however many schedulers run: each slot's task or plan carries the
//! idempotency key of its schedule and slot time, and a schedule's `done_until` moves
//! compare-and-set.

use hive_models::{
    Json, NewSchedule, Overlap, Schedule, SlotWork, Timestamp, Timing, manual_key, slot_key,
};
use hive_store::{KeyedWork, ScheduleAdvance, Store};

use crate::{Error, Ops, Result};

mod claimed;

/// What one scheduler step did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FireReport {
    /// Schedules that were due.
    pub due: usize,
    /// Slots whose task or plan this step submitted (a slot another scheduler fired first
    /// creates nothing new).
    pub slots: usize,
    /// Slots of schedules that skip overlaps, passed because the previous slot's task or
    /// plan was unfinished.
    pub skipped: usize,
    /// Schedules that queue overlaps whose due slot waits for the previous slot's task or
    /// plan to end: they stay due, and the next step looks again.
    pub waiting: usize,
    /// Due schedules whose task or plan could not be created, with why (a payload over a
    /// limit lowered since it was added, say): the others fire regardless, and each of
    /// these is due again [`FAILED_RETRY_AFTER`] later, its slots still to fire.
    pub failed: Vec<(String, String)>,
}

/// What [`Ops::put_schedule`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulePut {
    /// No schedule had the name: created.
    Created,
    /// A schedule of the name had another definition: now this one, from now on.
    Redefined,
    /// A schedule of the name had this definition already: nothing written.
    Unchanged,
}

/// How long a schedule whose task or plan could not be created waits before the next try:
/// every scheduler of a fleet trying (and logging) each second would help no one.
pub const FAILED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// A schedule and what its last slot made, for listings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The task or plan of its last fired slot, with its status: did last night's run
    /// succeed. `None` before its first fire, or once that work was pruned.
    pub last_run: Option<KeyedWork>,
    /// Its first slot not yet handled ([`Schedule::pending_slot`]); `None` when paused.
    pub pending_slot: Option<Timestamp>,
    /// Whether that slot is over [`Schedule::OVERDUE_AFTER`] late by the store's clock.
    pub overdue: bool,
}

/// One slot of a schedule's history ([`Ops::schedule_history`]): when it was, and the task
/// or plan it made with that work's status (`None`: skipped, missed, paused, or pruned).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlotRun {
    pub slot: Timestamp,
    pub run: Option<KeyedWork>,
}

/// The most slots [`Ops::schedule_history`] reads at once.
pub const HISTORY_MAX: u32 = 100;

/// What [`Ops::trigger_schedule`] created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Triggered {
    Task(hive_models::TaskId),
    Plan(hive_models::PlanId),
}

/// How often a change that keeps losing to schedulers moving the same row is retried.
const RACES: usize = 10;

/// How long after noting a manual run its trigger may take to create the work (a plan of
/// many subtasks takes a second or so): until then a schedule that skips or queues
/// overlaps reads the missing work as about to exist. A trigger whose work could not be
/// created at all holds the slots back that long at most.
const MANUAL_RUN_CREATED_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

fn kept_changing(name: &str) -> Error {
    Error::Store(hive_store::Error::Contended(format!(
        "schedule `{name}` kept changing; try again"
    )))
}

/// A new schedule's row, due from its first slot after `now`.
fn new_row(new: NewSchedule, timing: &Timing, now: Timestamp) -> Schedule {
    Schedule {
        next_slot: timing.next_after(now),
        name: new.name,
        cron: new.cron,
        timezone: new.timezone,
        creates: new.creates,
        enabled: new.enabled,
        missed: new.missed,
        overlap: new.overlap,
        done_until: now,
        last_fired: None,
        last_manual: None,
        last_manual_at: None,
        last_claimed_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// Whether `s` already follows `new`'s definition (its pause state aside).
fn defined_as(s: &Schedule, new: &NewSchedule) -> bool {
    let same_creates = match (s.creates.to_stored(), new.creates.to_stored()) {
        (Ok(a), Ok(b)) => same_json(&a, &b),
        _ => false,
    };
    s.cron == new.cron
        && s.timezone == new.timezone
        && s.missed == new.missed
        && s.overlap == new.overlap
        && same_creates
}

/// Whether two JSON values are the same, numbers compared by value: Postgres' `jsonb`
/// gives back `1e16` as `10000000000000000`, which must not read as a new definition at
/// every start.
fn same_json(a: &Json, b: &Json) -> bool {
    fn int(n: &serde_json::Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match (int(x), int(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

impl<S: Store + ?Sized> Ops<S> {
    /// Validates and stores a schedule, due from its first slot after now (the store's
    /// clock). [`Error::Store`] with a conflict when the name is taken.
    pub async fn add_schedule(&self, new: NewSchedule) -> Result<Schedule> {
        new.validate(self.config.max_payload_bytes)?;
        let timing = Timing::parse(&new.cron, &new.timezone)?;
        let schedule = new_row(new, &timing, self.store.now().await?);
        self.store.insert_schedule(&schedule).await?;
        Ok(schedule)
    }

    /// Creates the schedule, or gives the schedule of its name this definition (cron, time
    /// zone, what it creates, missed-slot and overlap rules): what an app that declares its
    /// schedules in code calls at every start. A redefined schedule keeps whether it is
    /// paused (an operator's pause outlives a deploy, also one committed while this call
    /// runs) and its last fire, and continues from now: slots before the change that had
    /// not fired yet, of either definition, are not missed slots. `new.enabled` counts only
    /// when the schedule is created. The same definition writes nothing. Safe to race with
    /// schedulers and with other calls; [`Error::Store`] with `Contended` (transient) if
    /// they kept moving the row through ten tries.
    pub async fn put_schedule(&self, new: NewSchedule) -> Result<(Schedule, SchedulePut)> {
        new.validate(self.config.max_payload_bytes)?;
        let timing = Timing::parse(&new.cron, &new.timezone)?;
        for _ in 0..RACES {
            let now = self.store.now().await?;
            let Some(s) = self.store.get_schedule(&new.name).await? else {
                let schedule = new_row(new.clone(), &timing, now);
                match self.store.insert_schedule(&schedule).await {
                    Ok(()) => return Ok((schedule, SchedulePut::Created)),
                    // Created meanwhile by another call: compare with it.
                    Err(hive_store::Error::Conflict(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if defined_as(&s, &new) {
                return Ok((s, SchedulePut::Unchanged));
            }
            // `done_until` must move for a scheduler still firing the old definition to
            // lose its compare-and-set rather than store the old expression's next slot.
            let from_now = now.max(s.done_until + chrono::Duration::microseconds(1));
            let redefined = Schedule {
                cron: new.cron.clone(),
                timezone: new.timezone.clone(),
                creates: new.creates.clone(),
                missed: new.missed,
                overlap: new.overlap,
                done_until: from_now,
                next_slot: timing.next_after(from_now),
                updated_at: now,
                ..s.clone()
            };
            self.create_claimed_slot(&s, now).await;
            if self
                .store
                .replace_schedule(&redefined, s.done_until)
                .await?
            {
                // As stored: its pause state, and the store's time of the change.
                let stored = self.store.get_schedule(&new.name).await?;
                return Ok((stored.unwrap_or(redefined), SchedulePut::Redefined));
            }
        }
        Err(kept_changing(&new.name))
    }

    /// Runs a schedule by hand now, outside its slots (to try a nightly workflow, or to
    /// make up for a slot by hand), paused or not: creates its task or submits its plan,
    /// marked `"manual": true` in its metadata. `key` makes a retried request create
    /// nothing new: the work's idempotency key is `schedule-manual:<length of
    /// name>:<name>:<key>` (by default `<key>` is now, to the microsecond).
    /// It is not a fire (the slots are unaffected), and it starts even beside a slot's
    /// unfinished work; but its key is noted first (`Schedule::last_manual`), and while its
    /// work is unfinished (or, for a minute at most, not created yet) a schedule that skips
    /// or queues overlaps skips or holds its slots. [`Error::NotFound`] for an unknown schedule; the template's own errors as a
    /// slot would meet them.
    pub async fn trigger_schedule(&self, name: &str, key: Option<&str>) -> Result<Triggered> {
        let s = self
            .store
            .get_schedule(name)
            .await?
            .ok_or_else(|| Error::not_found("schedule", name))?;
        let now = self.store.now().await?;
        let work = s.creates.for_manual_run(name, now, key)?;
        // Noted first, like a slot's claim: a scheduler that read the schedule before this
        // loses its claim, and one that reads it after waits for (or skips beside) the
        // work about to exist.
        self.store
            .note_manual_run(name, &manual_key(name, now, key))
            .await?;
        Ok(match work {
            SlotWork::Task(t) => Triggered::Task(self.create_task(t).await?),
            SlotWork::Plan(p) => Triggered::Plan(self.submit_plan(p).await?),
        })
    }

    /// Every schedule, by name, with its last slot's task or plan and that work's status.
    pub async fn list_schedule_views(&self) -> Result<Vec<ScheduleView>> {
        self.views(self.store.list_schedules().await?).await
    }

    /// One schedule as [`Ops::list_schedule_views`] shows it.
    pub async fn get_schedule_view(&self, name: &str) -> Result<Option<ScheduleView>> {
        let found = self.store.get_schedule(name).await?;
        Ok(self.views(found.into_iter().collect()).await?.pop())
    }

    /// The schedules with their last runs, read in one round trip, and whether each is
    /// overdue by the store's clock.
    async fn views(&self, schedules: Vec<Schedule>) -> Result<Vec<ScheduleView>> {
        let last_key = |s: &Schedule| s.last_fired.map(|slot| slot_key(&s.name, slot));
        let keys: Vec<String> = schedules.iter().filter_map(last_key).collect();
        let mut runs = if keys.is_empty() {
            Default::default()
        } else {
            self.store.keyed_work(&keys).await?
        };
        let now = self.store.now().await?;
        Ok(schedules
            .into_iter()
            .map(|schedule| {
                let pending_slot = schedule.pending_slot();
                ScheduleView {
                    last_run: last_key(&schedule).and_then(|k| runs.remove(&k)),
                    overdue: pending_slot.is_some_and(|p| Schedule::is_overdue(p, now)),
                    pending_slot,
                    schedule,
                }
            })
            .collect())
    }

    /// The schedule's last `limit` slots (0 counts as 1, at most [`HISTORY_MAX`]) up to
    /// the last one a scheduler handled, newest first, each with what it made: the runs
    /// of a nightly workflow, night by night, the nights it skipped, missed or spent
    /// paused included. Slots of its current expression since it was created, and its
    /// last fire's slot even if a redefinition changed the expression since; manual runs
    /// are not slots. Empty before a first fire; `None` for an unknown schedule.
    pub async fn schedule_history(&self, name: &str, limit: u32) -> Result<Option<Vec<SlotRun>>> {
        let Some(s) = self.store.get_schedule(name).await? else {
            return Ok(None);
        };
        let Some(last) = s.last_fired else {
            return Ok(Some(Vec::new()));
        };
        let timing = Timing::parse(&s.cron, &s.timezone)?;
        let limit = limit.clamp(1, HISTORY_MAX);
        let keep = hive_models::Missed::CatchUp { limit };
        // A second back: a slot in the second it was created may have fired.
        let since = s.created_at - chrono::Duration::seconds(1);
        let slots = with_last_fire(
            timing.due(since, s.done_until.max(last), keep),
            last,
            limit as usize,
        );
        let keys: Vec<String> = slots.iter().map(|slot| slot_key(name, *slot)).collect();
        let mut runs = self.store.keyed_work(&keys).await?;
        let history = slots
            .into_iter()
            .zip(keys)
            .rev()
            .map(|(slot, key)| SlotRun {
                slot,
                run: runs.remove(&key),
            })
            .collect();
        Ok(Some(history))
    }

    pub async fn get_schedule(&self, name: &str) -> Result<Option<Schedule>> {
        Ok(self.store.get_schedule(name).await?)
    }

    /// Every schedule, by name, with its last and next fire times.
    pub async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        Ok(self.store.list_schedules().await?)
    }

    /// Deletes a schedule; the tasks it created stay. False for an unknown name.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.store.delete_schedule(name).await?)
    }

    /// Stops a schedule from firing; false for an unknown name.
    pub async fn pause_schedule(&self, name: &str) -> Result<bool> {
        self.set_enabled(name, false).await
    }

    /// Starts a paused schedule again from now: slots that passed while it was paused are
    /// not missed slots, and create nothing. False for an unknown name.
    pub async fn resume_schedule(&self, name: &str) -> Result<bool> {
        self.set_enabled(name, true).await
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool> {
        // Retried on a lost race with a scheduler moving the same row.
        for _ in 0..RACES {
            let Some(s) = self.store.get_schedule(name).await? else {
                return Ok(false);
            };
            if s.enabled == enabled {
                return Ok(true);
            }
            let (to, next_slot) = if enabled {
                let now = self.store.now().await?;
                self.create_claimed_slot(&s, now).await;
                let timing = Timing::parse(&s.cron, &s.timezone)?;
                (
                    now.max(s.done_until),
                    timing.next_after(now.max(s.done_until)),
                )
            } else {
                (s.done_until, s.next_slot)
            };
            let advance = ScheduleAdvance {
                name: s.name.clone(),
                from: s.done_until,
                to,
                // Resuming passes a slot claimed before the pause whose starter never advanced
                // (its work created above): slots are not fired while paused.
                last_fired: s.last_fired,
                next_slot,
                enabled: Some(enabled),
            };
            if self.store.advance_schedule(&advance).await? {
                return Ok(true);
            }
        }
        Err(kept_changing(name))
    }

    /// One scheduler step: for each enabled schedule whose next slot has come (the
    /// store's clock), submits the task or plan of each due slot (the latest only, or the
    /// latest `limit` when catching up), then moves the schedule past them compare-and-set.
    /// Safe to run from any number of processes at once: a slot's task or plan has its
    /// schedule's and slot's idempotency key, so it is created once. A schedule that skips
    /// overlaps passes a slot whose previous slot's work is unfinished; one that queues
    /// them waits (the schedule stays due), then starts its due slots one a step, oldest
    /// first, each once the one before has ended. A schedule whose task
    /// or plan cannot be created is reported in [`FireReport::failed`] and the step goes
    /// on with the others: after a transient error (a lost race, a timeout) it is tried
    /// again at the next step, after any other [`FAILED_RETRY_AFTER`] later (or at the
    /// next step too, if putting it off failed). Only an
    /// error about the whole database, or failing to read the due schedules, ends the
    /// step.
    pub async fn fire_due_schedules(&self) -> Result<FireReport> {
        let now = self.store.now().await?;
        let mut report = FireReport::default();
        for s in self.store.due_schedules(now).await? {
            report.due += 1;
            match self.fire(&s, now).await {
                Ok(fired) => {
                    report.slots += fired.slots;
                    report.skipped += fired.skipped;
                    report.waiting += usize::from(fired.waiting);
                }
                Err(e) if e.is_about_the_database() => return Err(e),
                Err(e) if e.is_transient() => {
                    tracing::warn!(schedule = %s.name, error = %e,
                        "a due schedule could not create its task or plan; trying again at the next step");
                    report.failed.push((s.name.clone(), e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(schedule = %s.name, error = %e, retry_after = ?FAILED_RETRY_AFTER,
                        "a due schedule could not create its task or plan; its slots stay due");
                    let mut why = e.to_string();
                    match self.put_off(&s, now).await {
                        Ok(()) => {}
                        Err(e) if e.is_about_the_database() => return Err(e),
                        Err(e) => {
                            tracing::warn!(schedule = %s.name, error = %e,
                                "a failing schedule's next look could not be put off; trying again at the next step");
                            why = format!("{why}; its retry could not be put off: {e}");
                        }
                    }
                    report.failed.push((s.name.clone(), why));
                }
            }
        }
        Ok(report)
    }

    /// Puts off the next look at a schedule whose work could not be created by
    /// [`FAILED_RETRY_AFTER`]: its progress (`done_until`) kept, so its slots stay to fire.
    /// Lost to another scheduler, it was put off or fired already.
    async fn put_off(&self, s: &Schedule, now: Timestamp) -> Result<()> {
        let retry = ScheduleAdvance {
            name: s.name.clone(),
            from: s.done_until,
            to: s.done_until,
            last_fired: None,
            next_slot: Some(now + FAILED_RETRY_AFTER),
            enabled: None,
        };
        self.store.advance_schedule(&retry).await?;
        Ok(())
    }

    /// Fires one due schedule: how many slots created their work, how many were skipped
    /// because the previous slot's work was unfinished, and whether a queued slot waits
    /// for it.
    async fn fire(&self, s: &Schedule, now: Timestamp) -> Result<Fired> {
        let timing = Timing::parse(&s.cron, &s.timezone)?;
        let mut slots = timing.due(s.done_until, now, s.missed);
        let mut fired = Fired::default();
        let mut to = now;
        if s.overlap != Overlap::Allow && !slots.is_empty() {
            match s.last_fired {
                // Claimed, not yet advanced past: its starter is creating its work, or
                // stopped before it could. Submitted again it creates nothing new; waiting
                // for it would wait for itself, and reading its work, missing still, as
                // finished would start a later slot beside it. One claimed longer ago than
                // a starter stalls (its work kept failing: a template the database
                // refuses, an outage) is left to the missed-slot rule, as for any slot
                // not started: a fix days later starts today's run, not the first day's.
                Some(claimed)
                    if claimed > s.done_until
                        && now - s.last_claimed_at.unwrap_or(claimed)
                            <= claimed::CLAIMED_SLOT_STALLS_AT_MOST =>
                {
                    slots = vec![claimed];
                    to = claimed;
                }
                _ => {
                    let first = slots[0];
                    if let Some(previous) = self.unfinished_before(s, now).await? {
                        if s.overlap == Overlap::Queue {
                            // Nothing written: the schedule stays due, the next step looks
                            // again.
                            tracing::debug!(schedule = %s.name, previous = ?previous,
                                slot = %first, "slot waits: the previous run's work is unfinished");
                            fired.waiting = true;
                            return Ok(fired);
                        }
                        tracing::info!(schedule = %s.name, previous = ?previous,
                            "slot skipped: the previous run's work is unfinished");
                        fired.skipped = slots.len();
                        slots.clear();
                    }
                }
            }
            if s.overlap == Overlap::Queue && slots.len() > 1 {
                // One at a time: the oldest now, each later one once the one before has
                // ended.
                slots.truncate(1);
                to = slots[0];
            }
            // Claimed before the work exists, compare-and-set on the last slot and manual
            // run this step checked: a scheduler whose clock picked another slot cannot
            // start it beside this one, nor one that missed a manual run noted since; and
            // the next step checks this slot even if this step's advance loses or never
            // happens.
            if let Some(&newest) = slots.last()
                && !self.store.claim_slot(s, newest).await?
            {
                return Ok(fired);
            }
        }
        self.create_slot_work(s, &slots).await?;
        let advance = ScheduleAdvance {
            name: s.name.clone(),
            from: s.done_until,
            to,
            last_fired: slots.last().copied(),
            next_slot: timing.next_after(to),
            enabled: None,
        };
        // Lost to another scheduler: it submitted the same slots (created once by key), or
        // skipped them; a slot started by a schedule that skips or queues overlaps is
        // claimed above.
        self.store.advance_schedule(&advance).await?;
        fired.slots = slots.len();
        Ok(fired)
    }

    /// The keys of the last runs (its last started slot's, its last manual run's) when
    /// work holding one is unfinished, in one read: what a schedule that skips or queues
    /// overlaps must not start a slot beside. A manual run noted within
    /// [`MANUAL_RUN_CREATED_WITHIN`] whose work does not exist yet counts as unfinished: its
    /// trigger notes it, then creates the work.
    async fn unfinished_before(&self, s: &Schedule, now: Timestamp) -> Result<Option<Vec<String>>> {
        let last_slot = s.last_fired.map(|l| slot_key(&s.name, l));
        let keys: Vec<String> = last_slot.into_iter().chain(s.last_manual.clone()).collect();
        if keys.is_empty() {
            return Ok(None);
        }
        if self.store.unfinished_by_key(&keys).await? {
            return Ok(Some(keys));
        }
        if let (Some(manual), Some(noted)) = (&s.last_manual, s.last_manual_at)
            && now - noted <= MANUAL_RUN_CREATED_WITHIN
            && !(self.store.keyed_work(std::slice::from_ref(manual)).await?).contains_key(manual)
        {
            return Ok(Some(vec![manual.clone()]));
        }
        Ok(None)
    }
}

/// What firing one schedule did.
#[derive(Debug, Default)]
struct Fired {
    slots: usize,
    skipped: usize,
    waiting: bool,
}

/// The latest `limit` of `slots` (oldest first) with the last fire's slot `last` among
/// them: added in order, in place of the oldest other slot when there is no room.
fn with_last_fire(mut slots: Vec<Timestamp>, last: Timestamp, limit: usize) -> Vec<Timestamp> {
    if !slots.contains(&last) {
        slots.push(last);
        slots.sort();
    }
    while slots.len() > limit.max(1) {
        let oldest_other = usize::from(slots.first() == Some(&last));
        slots.remove(oldest_other);
    }
    slots
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use hive_models::{Missed, ScheduledTask};
    use hive_store::MockStore;
    use serde_json::json;

    use super::*;

    fn at(h: u32, mi: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, h, mi, 0).unwrap()
    }

    #[test]
    fn the_last_fires_slot_stays_in_a_full_history() {
        let due: Vec<Timestamp> = (1..=3).map(|h| at(h, 0)).collect();
        // Resumed after a pause, or skipping overlaps: the last fire is older than the
        // latest `limit` slots, and takes the oldest other's place.
        assert_eq!(
            with_last_fire(due.clone(), at(0, 0), 3),
            vec![at(0, 0), at(2, 0), at(3, 0)]
        );
        assert_eq!(
            with_last_fire(due.clone(), at(2, 30), 3),
            vec![at(2, 0), at(2, 30), at(3, 0)]
        );
        assert_eq!(with_last_fire(due.clone(), at(0, 0), 1), vec![at(0, 0)]);
        assert_eq!(
            with_last_fire(due.clone(), at(0, 0), 0),
            vec![at(0, 0)],
            "0 counts as 1"
        );
        assert_eq!(with_last_fire(due.clone(), at(2, 0), 3), due, "already in");
        assert_eq!(
            with_last_fire(due[..1].to_vec(), at(0, 0), 3),
            vec![at(0, 0), at(1, 0)],
            "room left"
        );
    }

    /// A stored schedule whose expression no longer parses: its work cannot be created.
    fn unfireable(name: &str) -> Schedule {
        Schedule {
            name: name.into(),
            cron: "not a cron".into(),
            timezone: "UTC".into(),
            creates: ScheduledTask::new("n", "report").into(),
            enabled: true,
            missed: Missed::Skip,
            overlap: Overlap::Allow,
            done_until: at(0, 0),
            last_fired: None,
            last_manual: None,
            last_manual_at: None,
            last_claimed_at: None,
            next_slot: Some(at(1, 0)),
            created_at: at(0, 0),
            updated_at: at(0, 0),
        }
    }

    #[tokio::test]
    async fn a_failed_put_off_does_not_stop_the_step() {
        let mut m = MockStore::new();
        m.expect_now().returning(|| Ok(at(2, 0)));
        m.expect_due_schedules()
            .returning(|_| Ok(vec![unfireable("a"), unfireable("b")]));
        m.expect_advance_schedule().times(2).returning(|advance| {
            if advance.name == "a" {
                Err(hive_store::Error::Unavailable {
                    target: "db.example:5432".into(),
                    reason: "connection reset".into(),
                })
            } else {
                Ok(true)
            }
        });
        let store: Arc<dyn Store> = Arc::new(m);
        let report = Ops::new(store).fire_due_schedules().await.unwrap();
        assert_eq!(report.due, 2, "{report:?}");
        let names: Vec<&str> = report.failed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"], "{report:?}");
        assert!(
            report.failed[0].1.contains("could not be put off")
                && report.failed[0].1.contains("connection reset"),
            "{report:?}"
        );
        assert!(!report.failed[1].1.contains("put off"), "{report:?}");
    }

    #[test]
    fn json_numbers_are_compared_by_value() {
        let float: serde_json::Value = serde_json::from_str("1e16").unwrap();
        assert!(same_json(
            &json!({"n": [float, 0.5, "x"]}),
            &json!({"n": [10_000_000_000_000_000u64, 0.5, "x"]})
        ));
        assert!(!same_json(&json!({"n": 1}), &json!({"n": 2})));
        assert!(!same_json(&json!({"n": 1}), &json!({"n": 1, "m": 1})));
        assert!(!same_json(&json!([1, 2]), &json!([2, 1])));
        assert!(!same_json(
            &json!(9_007_199_254_740_993u64),
            &json!(9_007_199_254_740_992u64)
        ));
        assert!(!same_json(&json!("1"), &json!(1)));
    }
}
