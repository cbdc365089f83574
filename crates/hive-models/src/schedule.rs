//! Schedules: a cron expression in a time zone that creates a task or a plan at each of
//! its slots, and the rules that decide which slots are due.

use std::str::FromStr;

use chrono::{LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};
use serde::{Deserialize, Serialize};

use crate::{Error, Json, NewTask, Result, Timestamp};

mod scheduled;
pub use scheduled::{Scheduled, SlotWork};

/// What a schedule does with slots it missed (no scheduler ran at their time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum Missed {
    /// Only the latest missed slot creates its task or plan.
    #[default]
    Skip,
    /// Every missed slot creates its task or plan, the latest `limit` of them at most.
    CatchUp { limit: u32 },
}

impl Missed {
    /// The most missed slots a catch-up may create at once.
    pub const MAX_CATCH_UP: u32 = 1000;
}

/// What a schedule does at a slot while the previous slot's task or plan is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Create it anyway: slots' work may run side by side (a task's concurrency key can
    /// still make them wait for each other).
    #[default]
    Allow,
    /// Create nothing for the slot: a nightly workflow that overruns is not started twice.
    /// The slot counts as done; the next one looks again.
    Skip,
    /// Wait: the slot's work is created once the previous slot's has ended, late rather
    /// than never. Slots that pass meanwhile are missed slots, picked when that work ends:
    /// the latest then (or, catching up, the latest `limit`, each started once the one
    /// before has ended, in slot order).
    Queue,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

impl std::str::FromStr for Overlap {
    type Err = Error;

    fn from_str(s: &str) -> Result<Overlap> {
        match s {
            "allow" => Ok(Overlap::Allow),
            "skip" => Ok(Overlap::Skip),
            "queue" => Ok(Overlap::Queue),
            other => Err(Error::InvalidField {
                field: "overlap".into(),
                reason: format!("`{other}` is not `allow`, `skip` or `queue`"),
            }),
        }
    }
}

/// The task a schedule creates at each slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledTask {
    pub title: String,
    pub task_type: String,
    #[serde(default = "empty_object")]
    pub payload: Json,
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// The tasks' concurrency key: with a key of the schedule's own, a slot's task never
    /// runs while the previous one still does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
}

fn empty_object() -> Json {
    Json::Object(Default::default())
}

fn default_priority() -> i32 {
    1
}

impl ScheduledTask {
    pub fn new(title: impl Into<String>, task_type: impl Into<String>) -> Self {
        ScheduledTask {
            title: title.into(),
            task_type: task_type.into(),
            payload: empty_object(),
            priority: 1,
            max_retries: None,
            timeout_secs: None,
            concurrency_key: None,
        }
    }
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    /// 5 fields (minute hour day month weekday) or 6 (seconds first).
    pub cron: String,
    /// An IANA time zone name (`Europe/Paris`); slots follow its clock, DST included.
    pub timezone: String,
    /// What each slot creates: the key `task` or `plan` in JSON.
    #[serde(flatten)]
    pub creates: Scheduled,
    pub enabled: bool,
    pub missed: Missed,
    /// What a slot does while the previous slot's work is unfinished.
    #[serde(default)]
    pub overlap: Overlap,
    /// Slots at or before this are done: fired, skipped, or passed while paused.
    pub done_until: Timestamp,
    /// The latest slot started: its task or plan created (for a schedule that skips or
    /// queues overlaps, claimed just before: while it is after `done_until` its work may
    /// not exist yet, and the next step submits it again rather than start another).
    pub last_fired: Option<Timestamp>,
    /// The idempotency key of the last manual run ([`Scheduled::for_manual_run`]), noted
    /// just before its work is created: a schedule that skips or queues overlaps waits for
    /// that work too.
    #[serde(default)]
    pub last_manual: Option<String>,
    /// When `last_manual` was noted, by the store's clock: its work missing a while after
    /// is work that was never created, not work about to be.
    #[serde(default)]
    pub last_manual_at: Option<Timestamp>,
    /// When `last_fired` was claimed (a schedule that skips or queues overlaps), by the
    /// store's clock: a slot is claimed when it starts, which may be long after its time.
    #[serde(default)]
    pub last_claimed_at: Option<Timestamp>,
    /// The first slot after `done_until`: when the schedule is next due (`None` when the
    /// expression has no future slot). While a schedule that queues overlaps waits for the
    /// previous slot's work, this is in the past: the schedule stays due.
    pub next_slot: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Schedule {
    /// How late a slot may be handled before the schedule counts as overdue: a scheduler
    /// steps once a second.
    pub const OVERDUE_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

    /// The first slot not yet handled (fired, skipped, or passed while paused): when an
    /// active schedule is next due, or, in the past, since when it is overdue. Unlike
    /// `next_slot`, which a schedule whose work cannot be created puts off a minute at a
    /// time, it stays on that slot. `None` when paused or no slot is left; `done_until`
    /// for an expression or zone that no longer parses (a schedule that cannot fire).
    pub fn pending_slot(&self) -> Option<Timestamp> {
        if !self.enabled {
            return None;
        }
        match Timing::parse(&self.cron, &self.timezone) {
            Ok(timing) => timing.next_after(self.done_until),
            Err(_) => Some(self.done_until),
        }
    }

    /// Whether a pending slot is more than [`Schedule::OVERDUE_AFTER`] before `now`: no
    /// scheduler running, a queued slot waiting for the last run's work, or work that
    /// cannot be created.
    pub fn is_overdue(pending: Timestamp, now: Timestamp) -> bool {
        now - pending > Self::OVERDUE_AFTER
    }
}

/// What a caller supplies to create a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    #[serde(default = "utc")]
    pub timezone: String,
    /// What each slot creates: the key `task` or `plan` in JSON.
    #[serde(flatten)]
    pub creates: Scheduled,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub missed: Missed,
    /// What a slot does while the previous slot's work is unfinished.
    #[serde(default)]
    pub overlap: Overlap,
}

fn utc() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

impl NewSchedule {
    /// A schedule creating `creates` (a [`ScheduledTask`] or a [`crate::NewPlan`]) at each
    /// slot of `cron`, in UTC.
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        creates: impl Into<Scheduled>,
    ) -> Self {
        NewSchedule {
            name: name.into(),
            cron: cron.into(),
            timezone: utc(),
            creates: creates.into(),
            enabled: true,
            missed: Missed::Skip,
            overlap: Overlap::Allow,
        }
    }

    crate::setters! {
        /// An IANA time zone name (default `UTC`).
        timezone: impl Into<String> => into,
        missed: Missed,
        /// What a slot does while the previous slot's work is unfinished.
        overlap: Overlap,
        enabled: bool,
    }

    /// Rejects what no scheduler could follow, naming the field: a blank name, a cron
    /// expression that does not parse or names no date that exists (`0 0 31 2 *`), an
    /// unknown time zone, a task or plan that could not be created (see
    /// [`Scheduled::validate`]), a catch-up bound of 0 or over [`Missed::MAX_CATCH_UP`].
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        crate::check_scope_name("name", &self.name)?;
        let timing = Timing::parse(&self.cron, &self.timezone)?;
        if timing.next_after(Utc::now()).is_none() {
            return Err(Error::InvalidField {
                field: "cron".into(),
                reason: format!("`{}` never fires: no date matches it", self.cron),
            });
        }
        if let Missed::CatchUp { limit } = self.missed {
            if !(1..=Missed::MAX_CATCH_UP).contains(&limit) {
                return Err(Error::InvalidField {
                    field: "missed.limit".into(),
                    reason: format!("{limit} is not from 1 to {}", Missed::MAX_CATCH_UP),
                });
            }
            if self.overlap == Overlap::Skip && limit > 1 {
                return Err(Error::InvalidField {
                    field: "overlap".into(),
                    reason: "`skip` cannot go with catching up several missed slots, whose \
                             work would start together and overlap; catch up 1, skip, or \
                             `queue` them"
                        .into(),
                });
            }
        }
        self.creates.validate(max_payload_bytes)
    }
}

impl ScheduledTask {
    /// The task for one slot: its idempotency key makes a slot create one task however
    /// many schedulers fire it.
    pub fn to_new_task(&self, schedule: &str, slot: Timestamp) -> NewTask {
        let mut t = NewTask::new(self.title.clone(), self.task_type.clone())
            .payload(self.payload.clone())
            .priority(self.priority)
            .idempotency_key(slot_key(schedule, slot))
            .metadata(serde_json::json!({ "schedule": schedule, "slot": slot }));
        t.max_retries = self.max_retries;
        t.timeout_secs = self.timeout_secs;
        t.concurrency_key = self.concurrency_key.clone();
        t
    }
}

/// The idempotency key of a schedule's task for one slot.
pub fn slot_key(schedule: &str, slot: Timestamp) -> String {
    format!("schedule:{schedule}:{}", slot.to_rfc3339())
}

/// The idempotency key of a schedule's manual run: `key` (by default `at`, to the
/// microsecond) behind a prefix no slot's key has and the name's length, so that no other
/// schedule's (whose name holds a `:`) can meet it.
pub fn manual_key(schedule: &str, at: Timestamp, key: Option<&str>) -> String {
    let at_text = at.to_rfc3339();
    format!(
        "schedule-manual:{}:{schedule}:{}",
        schedule.len(),
        key.unwrap_or(&at_text)
    )
}

/// A parsed cron expression in its time zone.
///
/// Its slots are croner's daylight-saving rules made a set of instants: each local time
/// the expression matches is a slot at the instant the zone's clock shows it; a time the
/// clock shows twice (clocks going back) is two slots, or one, the first, for a
/// fixed-time job (one second, minute and hour: `30 2 * * *`); a time the clock skips
/// (clocks going forward) is no slot, or, for a fixed-time job, one when the clock resumes
/// if it then still shows the same day.
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    tz: chrono_tz::Tz,
    /// Whether the expression is a fixed-time job in croner's sense.
    fixed: bool,
}

/// Which way a search for slots goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Forward,
    Backward,
}

impl Way {
    /// Whether `x` is met before `y` going this way.
    fn before<T: PartialOrd>(self, x: T, y: T) -> bool {
        match self {
            Way::Forward => x < y,
            Way::Backward => x > y,
        }
    }

    /// `d` going this way: a step ahead.
    fn ahead(self, d: TimeDelta) -> TimeDelta {
        match self {
            Way::Forward => d,
            Way::Backward => -d,
        }
    }
}

/// How far around an instant the zone's offset is looked at to see a change coming or
/// just past: more than any daylight-saving change (2 hours at most, at Troll in
/// Antarctica).
const NEAR: TimeDelta = TimeDelta::hours(3);

fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Which field of an expression the parser refuses (`minute field \`61\`: `), found by
/// parsing each field among wildcards, so the parser's own rules decide; empty when no
/// field fails alone (an impossible combination, such as the 31st of February).
fn faulty_field(cron: &str) -> String {
    const FIVE: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let names: Vec<&str> = if fields.len() == 6 {
        std::iter::once("second").chain(FIVE).collect()
    } else {
        FIVE.to_vec()
    };
    let parser = cron_parser();
    for (i, (field, name)) in fields.iter().zip(&names).enumerate() {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if parser.parse(&alone.join(" ")).is_err() {
            return format!("{name} field `{field}`: ");
        }
    }
    String::new()
}

impl Timing {
    /// Parses 5 fields (minute hour day month weekday) or 6 (seconds first) and an IANA
    /// time zone name.
    pub fn parse(cron: &str, timezone: &str) -> Result<Timing> {
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(Error::InvalidField {
                field: "cron".into(),
                reason: format!(
                    "`{cron}` has {fields} fields; expected 5 (minute hour day month weekday) or 6 (seconds first)"
                ),
            });
        }
        let parsed = cron_parser().parse(cron).map_err(|e| Error::InvalidField {
            field: "cron".into(),
            reason: format!("`{cron}`: {}{e}", faulty_field(cron)),
        })?;
        let tz = chrono_tz::Tz::from_str(timezone).map_err(|_| Error::InvalidField {
            field: "timezone".into(),
            reason: format!("`{timezone}` is not a known time zone (e.g. `UTC`, `Europe/Paris`)"),
        })?;
        let fixed = parsed.determine_job_type() == JobType::FixedTime;
        Ok(Timing {
            cron: parsed,
            tz,
            fixed,
        })
    }

    /// The first slot strictly after `after`. Slots are whole seconds.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let from = whole_second(after).checked_add_signed(TimeDelta::seconds(1))?;
        self.nearest(from, Way::Forward)
    }

    /// The slots due at `now` since `last` (exclusive) under `missed`, oldest first: the
    /// latest only when skipping, the latest `limit` when catching up. Walks back from
    /// `now`, so a schedule missed for years costs no more than its kept slots.
    pub fn due(&self, last: Timestamp, now: Timestamp, missed: Missed) -> Vec<Timestamp> {
        let keep = match missed {
            Missed::Skip => 1,
            Missed::CatchUp { limit } => limit.max(1) as usize,
        };
        let mut slots = Vec::new();
        let mut from = Some(whole_second(now));
        while let Some(at) = from.filter(|_| slots.len() < keep) {
            match self.nearest(at, Way::Backward) {
                Some(slot) if slot > last => {
                    slots.push(slot);
                    from = slot.checked_sub_signed(TimeDelta::seconds(1));
                }
                _ => break,
            }
        }
        slots.reverse();
        slots
    }

    /// The first slot at or beyond `from` (a whole second) going `way`.
    ///
    /// Local times and instants come in the same order except across a change of the
    /// zone's offset (clocks going back show local times again). So near a change the
    /// search goes one stretch of constant offset at a time, where a local time the
    /// expression matches is one instant; away from one, it reads the matching local times
    /// in order.
    fn nearest(&self, from: Timestamp, way: Way) -> Option<Timestamp> {
        let mut at = from;
        loop {
            // A stretch's first instant, where a skipped fixed time fires, comes first.
            if way == Way::Forward
                && let Some(slot) = self.gap_end_at(at)
            {
                return Some(slot);
            }
            let Some(change) = self.change_near(at, way) else {
                return self.scan(at, way);
            };
            // The stretch from `at` to just before `change` shows the local time `offset` on.
            let offset = self.offset(at);
            let stretch_end = change.naive_utc().checked_add_signed(offset)?;
            let matched = self
                .matching_local(self.local(at), way, true)
                .filter(|m| way.before(*m, stretch_end));
            at = match matched {
                Some(m) => {
                    let slot = m.checked_sub_signed(offset)?.and_utc();
                    if self.is_slot(m, slot) {
                        return Some(slot);
                    }
                    slot.checked_add_signed(way.ahead(TimeDelta::seconds(1)))?
                }
                None if way == Way::Backward => {
                    // The stretch's first instant, where a skipped fixed time fires.
                    let first = change.checked_add_signed(TimeDelta::seconds(1))?;
                    if let Some(slot) = self.gap_end_at(first) {
                        return Some(slot);
                    }
                    change
                }
                None => change,
            };
        }
    }

    /// The first slot at or beyond `from` going `way` with no change of offset within
    /// [`NEAR`] that way: the first matching local time's nearest slot that is not behind
    /// `from`. A change behind `from` makes a local time's other slot fall behind it.
    fn scan(&self, from: Timestamp, way: Way) -> Option<Timestamp> {
        let mut at = self.local(from);
        let mut inclusive = true;
        loop {
            let matched = self.matching_local(at, way, inclusive)?;
            let nearest = self
                .slots_at(matched)
                .into_iter()
                .flatten()
                .filter(|slot| !way.before(*slot, from))
                .reduce(|x, y| if way.before(x, y) { x } else { y });
            if nearest.is_some() {
                return nearest;
            }
            // Local times the clock skips hold no other slot: go on from the gap's edge.
            (at, inclusive) = match self.tz.from_local_datetime(&matched) {
                LocalResult::None => self
                    .gap_edge(matched, way)
                    .map_or((matched, false), |edge| (edge, true)),
                _ => (matched, false),
            };
        }
    }

    /// The zone's offset from UTC at `at`.
    fn offset(&self, at: Timestamp) -> TimeDelta {
        let offset = self.tz.offset_from_utc_datetime(&at.naive_utc());
        TimeDelta::seconds(i64::from(offset.fix().local_minus_utc()))
    }

    /// The first instant beyond `at` going `way` whose offset differs from `at`'s, if one
    /// is within [`NEAR`].
    fn change_near(&self, at: Timestamp, way: Way) -> Option<Timestamp> {
        let offset = self.offset(at);
        let away = |seconds| at.checked_add_signed(way.ahead(TimeDelta::seconds(seconds)));
        away(first_crossing(|seconds| {
            Some(self.offset(away(seconds)?) != offset)
        })?)
    }

    /// Whether `slot`, an instant the clock shows as the matching `local`, is a slot: not
    /// when it is the second showing of a fixed time.
    fn is_slot(&self, local: NaiveDateTime, slot: Timestamp) -> bool {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Ambiguous(first, _) if self.fixed => first.with_timezone(&Utc) == slot,
            _ => true,
        }
    }

    /// `at` when it is the first instant after clocks went forward and a fixed time of
    /// the skipped local times, on the day the clock then shows, fires there.
    fn gap_end_at(&self, at: Timestamp) -> Option<Timestamp> {
        if !self.fixed {
            return None;
        }
        let before = self.offset(at.checked_sub_signed(TimeDelta::seconds(1))?);
        if before >= self.offset(at) {
            return None;
        }
        let resumed = self.local(at);
        let skipped_from = at.naive_utc().checked_add_signed(before)?;
        let matched = self.matching_local(skipped_from, Way::Forward, true)?;
        (matched < resumed && matched.date() == resumed.date()).then_some(at)
    }

    /// The zone's clock at `at`.
    fn local(&self, at: Timestamp) -> NaiveDateTime {
        at.with_timezone(&self.tz).naive_local()
    }

    /// The first local time at or beyond `at` (`inclusive`) going `way` that the expression
    /// matches. Croner reads it in UTC, a zone whose clock never changes, so that it only
    /// matches the fields; the zone's rules are [`Timing::slots_at`]'s.
    fn matching_local(
        &self,
        at: NaiveDateTime,
        way: Way,
        inclusive: bool,
    ) -> Option<NaiveDateTime> {
        let at = Utc.from_utc_datetime(&at);
        let found = match way {
            Way::Forward => self.cron.find_next_occurrence(&at, inclusive),
            Way::Backward => self.cron.find_previous_occurrence(&at, inclusive),
        };
        found.ok().map(|t| t.naive_utc())
    }

    /// The slots of a local time the expression matches, earliest first.
    fn slots_at(&self, local: NaiveDateTime) -> [Option<Timestamp>; 2] {
        let utc = |t: chrono::DateTime<chrono_tz::Tz>| t.with_timezone(&Utc);
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => [Some(utc(t)), None],
            LocalResult::Ambiguous(first, _) if self.fixed => [Some(utc(first)), None],
            LocalResult::Ambiguous(first, second) => [Some(utc(first)), Some(utc(second))],
            LocalResult::None if self.fixed => [self.gap_end_same_day(local), None],
            LocalResult::None => [None, None],
        }
    }

    /// The first instant after the skipped local time `local`, if the clock then still
    /// shows `local`'s day.
    fn gap_end_same_day(&self, local: NaiveDateTime) -> Option<Timestamp> {
        let end = self.gap_edge(local, Way::Forward)?;
        let at = self.tz.from_local_datetime(&end).earliest()?;
        (end.date() == local.date()).then(|| at.with_timezone(&Utc))
    }

    /// The first local time beyond the skipped local time `local` going `way` that the
    /// clock shows, if within [`NEAR`].
    fn gap_edge(&self, local: NaiveDateTime, way: Way) -> Option<NaiveDateTime> {
        let away = |seconds| local.checked_add_signed(way.ahead(TimeDelta::seconds(seconds)));
        away(first_crossing(|seconds| {
            let shown = self.tz.from_local_datetime(&away(seconds)?);
            Some(!matches!(shown, LocalResult::None))
        })?)
    }
}

/// The fewest seconds, up to [`NEAR`], at which `crossed` holds, found by halving:
/// `crossed` is false at 0 and, once true, stays true within [`NEAR`] (a change of offset
/// or the end of a gap, both months apart). `None` if it does not hold at [`NEAR`].
fn first_crossing(crossed: impl Fn(i64) -> Option<bool>) -> Option<i64> {
    let (mut low, mut high) = (0, NEAR.num_seconds());
    if !crossed(high)? {
        return None;
    }
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if crossed(mid)? {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high)
}

/// `t` without its fraction of a second: slots fall on whole seconds.
fn whole_second(t: Timestamp) -> Timestamp {
    use chrono::SubsecRound;
    t.trunc_subsecs(0)
}

#[cfg(test)]
mod tests;
