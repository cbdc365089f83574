//! Schedules: a cron expression in a time zone that creates a task or a plan at each of
//! its slots, and the rules that decide which slots are due.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
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
        crate::task::non_blank("name", &self.name)?;
        crate::check_no_nul("name", &self.name)?;
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
#[derive(Debug, Clone)]
pub struct Timing {
    cron: Cron,
    tz: chrono_tz::Tz,
}

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
        Ok(Timing { cron: parsed, tz })
    }

    /// The first slot strictly after `after`. Slots are whole seconds.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&whole_second(after).with_timezone(&self.tz), false)
            .ok()
            .map(|t| whole_second(t.with_timezone(&Utc)))
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
        let mut at: DateTime<chrono_tz::Tz> = whole_second(now).with_timezone(&self.tz);
        let mut inclusive = true;
        while slots.len() < keep {
            let Ok(prev) = self.cron.find_previous_occurrence(&at, inclusive) else {
                break;
            };
            let slot = whole_second(prev.with_timezone(&Utc));
            if slot <= last {
                break;
            }
            slots.push(slot);
            at = prev;
            inclusive = false;
        }
        slots.reverse();
        slots
    }
}

/// `t` without its fraction of a second: slots fall on whole seconds.
fn whole_second(t: Timestamp) -> Timestamp {
    use chrono::SubsecRound;
    t.trunc_subsecs(0)
}

#[cfg(test)]
mod tests;
