//! Schedules in memory: rows by name, moved compare-and-set like the SQL backends.

use hive_models::{Schedule, Timestamp};

use super::state::{State, now};
use crate::{Error, Result, ScheduleAdvance};

impl State {
    pub(crate) fn insert_schedule(&mut self, s: &Schedule) -> Result<()> {
        if self.schedules.contains_key(&s.name) {
            return Err(Error::Conflict(format!(
                "a schedule named `{}` exists",
                s.name
            )));
        }
        self.schedules.insert(s.name.clone(), s.clone());
        Ok(())
    }

    pub(crate) fn advance_schedule(&mut self, a: &ScheduleAdvance) -> bool {
        let Some(s) = self.schedules.get_mut(&a.name) else {
            return false;
        };
        let passes_a_claim = s
            .last_fired
            .is_some_and(|l| l > a.from && l <= a.to && a.last_fired.is_none_or(|f| f < l));
        if s.done_until != a.from || passes_a_claim {
            return false;
        }
        s.done_until = a.to;
        s.last_fired = a.last_fired.max(s.last_fired);
        s.next_slot = a.next_slot;
        if let Some(enabled) = a.enabled {
            s.enabled = enabled;
        }
        s.updated_at = now();
        true
    }

    pub(crate) fn unfinished_by_key(&self, key: &str) -> bool {
        let unfinished = |id: &hive_models::TaskId| {
            self.tasks
                .get(id)
                .is_some_and(|(t, _)| !t.status.is_terminal())
        };
        let plan = self.plan_keys.get(key).and_then(|id| self.plans.get(id));
        self.idempotency.get(key).is_some_and(unfinished)
            || plan.is_some_and(|p| {
                !p.status.is_terminal()
                    || self
                        .plan_tasks
                        .get(&p.id)
                        .is_some_and(|ids| ids.iter().any(unfinished))
            })
    }

    pub(crate) fn keyed_work(&self, key: &str) -> Option<crate::KeyedWork> {
        let task = self.idempotency.get(key).and_then(|id| self.tasks.get(id));
        let plan = self.plan_keys.get(key).and_then(|id| self.plans.get(id));
        match (task, plan) {
            (Some((t, _)), _) => Some(crate::KeyedWork::Task {
                id: t.id,
                status: t.status,
            }),
            (None, Some(p)) => Some(crate::KeyedWork::Plan {
                id: p.id,
                status: p.status,
            }),
            (None, None) => None,
        }
    }

    pub(crate) fn claim_slot(&mut self, read: &Schedule, slot: Timestamp) -> bool {
        match self.schedules.get_mut(&read.name) {
            Some(s)
                if s.last_fired == Some(slot)
                    || (s.enabled
                        && s.done_until == read.done_until
                        && s.last_fired == read.last_fired
                        && s.last_manual == read.last_manual) =>
            {
                if s.last_fired != Some(slot) {
                    s.last_claimed_at = Some(now());
                }
                s.last_fired = Some(slot);
                s.updated_at = now();
                true
            }
            _ => false,
        }
    }

    pub(crate) fn note_manual_run(&mut self, name: &str, key: &str) -> bool {
        let Some(s) = self.schedules.get_mut(name) else {
            return false;
        };
        s.last_manual = Some(key.to_owned());
        s.last_manual_at = Some(now());
        s.updated_at = now();
        true
    }

    pub(crate) fn due_schedules(&self, now: Timestamp) -> Vec<Schedule> {
        self.schedules
            .values()
            .filter(|s| s.enabled && s.next_slot.is_some_and(|n| n <= now))
            .cloned()
            .collect()
    }

    pub(crate) fn replace_schedule(&mut self, with: &Schedule, from: Timestamp) -> bool {
        let Some(s) = self.schedules.get_mut(&with.name) else {
            return false;
        };
        if s.done_until != from {
            return false;
        }
        *s = Schedule {
            enabled: s.enabled,
            last_fired: s.last_fired,
            last_manual: s.last_manual.take(),
            last_manual_at: s.last_manual_at.take(),
            last_claimed_at: s.last_claimed_at.take(),
            created_at: s.created_at,
            updated_at: now(),
            ..with.clone()
        };
        true
    }
}
