//! Creating a slot's work, and the work of a slot a scheduler claimed but has not created,
//! before redefining or resuming its schedule passes it.

use hive_models::{Overlap, Schedule, SlotWork, Timestamp};
use hive_store::Store;

use crate::{Ops, Result};

/// How long a scheduler may stall between claiming a slot and creating its work, as
/// redefining, resuming or firing a schedule reckons it (see `create_claimed_slot`).
pub(super) const CLAIMED_SLOT_STALLS_AT_MOST: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

impl<S: Store + ?Sized> Ops<S> {
    /// Creates the work of `slots` of `s`, each keyed by its slot: created once, however
    /// many schedulers (or calls) create it.
    pub(super) async fn create_slot_work(&self, s: &Schedule, slots: &[Timestamp]) -> Result<()> {
        let mut tasks = Vec::new();
        for slot in slots {
            match s.creates.for_slot(&s.name, *slot) {
                SlotWork::Task(t) => tasks.push(t),
                // One transaction per plan: a plan is submitted whole or not at all, and
                // a step cut short leaves the later slots to the next scheduler.
                SlotWork::Plan(p) => {
                    self.submit_plan(p).await?;
                }
            }
        }
        if !tasks.is_empty() {
            self.create_tasks(tasks).await?;
        }
        Ok(())
    }

    /// Before redefining or resuming `s` passes a slot a scheduler claimed and has not
    /// advanced past (it is creating the slot's work, or stopped first): creates that work
    /// as the definition it was claimed under says (keyed, so once, whoever else creates
    /// it). Passed without it, the next slot would find no work under the claimed slot's
    /// key, read it as finished and start beside the claimed slot's work, which its
    /// scheduler may still create. Only a slot of the last [`CLAIMED_SLOT_STALLS_AT_MOST`]:
    /// one older was left by a scheduler that died (the schedule paused, or none running
    /// since), whose work, if it was created, may be long finished and pruned, and a slot
    /// that old is not started now. Best effort: a failure is logged, and the slot is
    /// passed as before.
    pub(super) async fn create_claimed_slot(&self, s: &Schedule, now: Timestamp) {
        let Some(claimed) = s.last_fired else {
            return;
        };
        // Measured from the claim: a slot may be claimed long after its time.
        let stale = now - s.last_claimed_at.unwrap_or(claimed) > CLAIMED_SLOT_STALLS_AT_MOST;
        if s.overlap == Overlap::Allow || claimed <= s.done_until || stale {
            return;
        }
        if let Err(e) = self.create_slot_work(s, &[claimed]).await {
            tracing::warn!(schedule = %s.name, slot = %claimed, error = %e,
                "the claimed slot's work could not be created; passing it");
        }
    }
}
