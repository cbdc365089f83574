//! What a schedule creates at each slot: one task, or a whole plan.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ScheduledTask, slot_key};
use crate::{Error, Json, NewPlan, NewTask, Result, Timestamp};

/// What a schedule creates at each of its slots. In a schedule's JSON it is the key
/// `task` (a [`ScheduledTask`]) or the key `plan` (a [`NewPlan`]) beside the schedule's
/// own fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduled {
    /// One task per slot.
    Task(ScheduledTask),
    /// One plan per slot, submitted and materialized like `hive plan submit`: a workflow
    /// that runs every night is one schedule. The template carries no idempotency key;
    /// each slot's plan gets its schedule's and slot's key (see [`slot_key`]), so a slot
    /// makes one plan however many schedulers fire it.
    Plan(NewPlan),
}

/// Read from the keys beside a schedule's own fields (or from a stored `{"plan": …}`):
/// exactly one of `task` and `plan`, refused by name when both or neither are given.
impl<'de> Deserialize<'de> for Scheduled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut keys = serde_json::Map::<String, Json>::deserialize(d)?;
        match (keys.remove("task"), keys.remove("plan")) {
            (Some(task), None) => serde_json::from_value(task)
                .map(Scheduled::Task)
                .map_err(|e| D::Error::custom(format!("`task`: {e}"))),
            (None, Some(plan)) => serde_json::from_value(plan)
                .map(Scheduled::Plan)
                .map_err(|e| D::Error::custom(format!("`plan`: {e}"))),
            (Some(_), Some(_)) => Err(D::Error::custom(
                "a schedule creates a `task` or a `plan`, not both",
            )),
            (None, None) => Err(D::Error::custom(
                "missing `task` or `plan`: what the schedule creates at each slot",
            )),
        }
    }
}

impl From<ScheduledTask> for Scheduled {
    fn from(task: ScheduledTask) -> Self {
        Scheduled::Task(task)
    }
}

impl From<NewPlan> for Scheduled {
    fn from(plan: NewPlan) -> Self {
        Scheduled::Plan(plan)
    }
}

/// A `NewTask` or a `NewPlan`, for one slot.
// One per due slot, moved straight into its submission: boxing would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SlotWork {
    Task(NewTask),
    Plan(NewPlan),
}

impl Scheduled {
    /// The task types the schedule's slots create (a plan's, each once, in order).
    pub fn task_types(&self) -> Vec<&str> {
        match self {
            Scheduled::Task(t) => vec![t.task_type.as_str()],
            Scheduled::Plan(p) => {
                let mut types: Vec<&str> = Vec::new();
                for s in &p.subtasks {
                    if !types.contains(&s.task_type.as_str()) {
                        types.push(&s.task_type);
                    }
                }
                types
            }
        }
    }

    /// The title of what each slot creates.
    pub fn title(&self) -> &str {
        match self {
            Scheduled::Task(t) => &t.title,
            Scheduled::Plan(p) => &p.title,
        }
    }

    /// Rejects a task that could not be created, or a plan that could not be submitted,
    /// that carries its own idempotency key (each slot's plan gets one of its own) or a
    /// parent task (which would outlive no retention: each slot's plan stands alone).
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        match self {
            Scheduled::Task(t) => t
                .to_new_task("validation", chrono::Utc::now())
                .validate(max_payload_bytes),
            Scheduled::Plan(p) => {
                if p.idempotency_key.is_some() {
                    return Err(Error::InvalidField {
                        field: "plan.idempotency_key".into(),
                        reason: "a scheduled plan takes its key from its schedule and slot; \
                                 leave it out"
                            .into(),
                    });
                }
                if p.parent_task_id.is_some() {
                    return Err(Error::InvalidField {
                        field: "plan.parent_task_id".into(),
                        reason: "a scheduled plan has no parent task; each slot's plan stands \
                                 alone"
                            .into(),
                    });
                }
                p.validate(max_payload_bytes)
            }
        }
    }

    /// What `schedule` creates for `slot`: a task with the slot's idempotency key, or the
    /// plan with that key and `schedule` and `slot` added to its metadata.
    pub fn for_slot(&self, schedule: &str, slot: Timestamp) -> SlotWork {
        match self {
            Scheduled::Task(t) => SlotWork::Task(t.to_new_task(schedule, slot)),
            Scheduled::Plan(p) => {
                let mut plan = p.clone();
                plan.idempotency_key = Some(slot_key(schedule, slot));
                if let Json::Object(m) = &mut plan.metadata {
                    m.insert("schedule".into(), Json::from(schedule));
                    m.insert("slot".into(), serde_json::json!(slot));
                }
                SlotWork::Plan(plan)
            }
        }
    }

    /// What `schedule` creates when run by hand at `at`, outside its slots: its task or
    /// plan keyed `schedule-manual:<length of name>:<name>:<key>` (`key` by default `at`,
    /// to the microsecond; the prefix keeps it from any slot's key, the length from
    /// another schedule's whose name holds a `:`), its metadata naming the schedule,
    /// `"manual": true` and `triggered_at` instead of a slot. A blank `key` is refused.
    pub fn for_manual_run(
        &self,
        schedule: &str,
        at: Timestamp,
        key: Option<&str>,
    ) -> Result<SlotWork> {
        if let Some(k) = key {
            crate::task::non_blank("idempotency_key", k)?;
        }
        let key = super::manual_key(schedule, at, key);
        // The whole key, before anything is noted: the schedule's name and the operator's
        // key together may be too long.
        crate::task::check_idempotency_key(&key)?;
        let mark = |metadata: &mut Json| {
            if let Json::Object(m) = metadata {
                m.remove("slot");
                m.insert("manual".into(), Json::Bool(true));
                m.insert("triggered_at".into(), serde_json::json!(at));
            }
        };
        Ok(match self.for_slot(schedule, at) {
            SlotWork::Task(mut t) => {
                t.idempotency_key = Some(key);
                mark(&mut t.metadata);
                SlotWork::Task(t)
            }
            SlotWork::Plan(mut p) => {
                p.idempotency_key = Some(key);
                mark(&mut p.metadata);
                SlotWork::Plan(p)
            }
        })
    }

    /// The JSON a store keeps: a task as its plain object (as stores held it before
    /// schedules could create plans), a plan as `{"plan": …}`.
    pub fn to_stored(&self) -> serde_json::Result<Json> {
        match self {
            Scheduled::Task(t) => serde_json::to_value(t),
            Scheduled::Plan(_) => serde_json::to_value(self),
        }
    }

    /// Reads what [`Scheduled::to_stored`] wrote.
    pub fn from_stored(stored: Json) -> serde_json::Result<Scheduled> {
        match stored {
            Json::Object(m) if m.len() == 1 && m.contains_key("plan") => {
                serde_json::from_value(Json::Object(m))
            }
            task => serde_json::from_value(task).map(Scheduled::Task),
        }
    }
}
