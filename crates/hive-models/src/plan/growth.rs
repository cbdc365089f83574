//! A running plan growing: subtasks a running subtask adds to its own plan.
//!
//! The rule: the added subtasks may depend on one another, on the spawner and on any
//! existing subtask; every existing subtask that depended on the spawner now also waits
//! for the added *sinks* (added subtasks no other added subtask depends on), so a join
//! after the spawner sees the whole fan-out finished. The grown plan must still be a valid
//! DAG: an added subtask depending on something downstream of the spawner closes a cycle
//! through that re-wiring and is rejected like any cycle.

use std::collections::HashSet;

use super::{SubTask, in_layers, validate_subtasks};
use crate::{PlanError, Result};

/// What adding subtasks to a plan changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// The added subtasks, in the order their tasks are created (see [`in_layers`]).
    pub added: Vec<SubTask>,
    /// The added subtasks no other added subtask depends on.
    pub sinks: Vec<String>,
    /// Existing subtasks that depended on the spawner, now also waiting for every sink.
    pub rewired: Vec<String>,
}

/// Whether `kept`, a subtask the plan holds, is `spawned` as spawned before: defined the
/// same, its dependencies those spawned followed by any sinks a later spawn re-wired it to
/// wait for (re-wiring only appends, and only to a subtask waiting for the spawner: one
/// spawned with no dependencies is never re-wired).
fn spawned_before(kept: &SubTask, spawned: &SubTask) -> bool {
    let rewired = kept.dependencies.len() > spawned.dependencies.len();
    kept.id == spawned.id
        && kept.dependencies.starts_with(&spawned.dependencies)
        && !(rewired && spawned.dependencies.is_empty())
        && SubTask {
            dependencies: spawned.dependencies.clone(),
            ..kept.clone()
        } == *spawned
}

/// Validates adding `added` to a plan of `existing` subtasks from subtask `spawner`, and
/// says what changes. Errors name the offending ids: duplicates of existing or added ids,
/// unknown dependencies, cycles (including through the re-wiring), invalid fields. A
/// subtask the plan holds already, defined the same, is not added again: a spawner run a
/// second time (requeued) spawns what it spawned before, which is kept as it is.
pub fn grow(
    existing: &[SubTask],
    spawner: &str,
    added: Vec<SubTask>,
    max_payload_bytes: usize,
) -> Result<Growth> {
    if !existing.iter().any(|s| s.id == spawner) {
        return Err(PlanError::InvalidSubtask {
            subtask: spawner.escape_debug().to_string(),
            reason: "is not a subtask of this plan".into(),
        }
        .into());
    }
    // What this spawn names, kept or added: none of it is re-wired to wait for the rest (a
    // spawner run again would make what it spawned before wait for what it spawns now).
    let spawned: HashSet<String> = added.iter().map(|s| s.id.clone()).collect();
    let added: Vec<SubTask> = added
        .into_iter()
        .filter(|a| !existing.iter().any(|e| spawned_before(e, a)))
        .collect();
    let depended: HashSet<&str> = added
        .iter()
        .flat_map(|s| s.dependencies.iter().map(String::as_str))
        .collect();
    let sinks: Vec<String> = added
        .iter()
        .filter(|s| !depended.contains(s.id.as_str()))
        .map(|s| s.id.clone())
        .collect();
    let rewired: Vec<&str> = existing
        .iter()
        .filter(|s| s.dependencies.iter().any(|d| d == spawner))
        .filter(|s| !spawned.contains(&s.id))
        .map(|s| s.id.as_str())
        .collect();
    let rewire: HashSet<&str> = rewired.iter().copied().collect();
    // The whole grown plan, validated as a submission would be.
    let mut grown: Vec<SubTask> = existing.to_vec();
    for s in &mut grown {
        if rewire.contains(s.id.as_str()) {
            s.dependencies.extend(sinks.iter().cloned());
        }
    }
    let rewired = rewired.into_iter().map(str::to_owned).collect();
    let first_added = grown.len();
    grown.extend(added);
    validate_subtasks(&grown, max_payload_bytes)?;
    let added = grown.split_off(first_added);
    let added = in_layers(&added)
        .into_iter()
        .map(|i| added[i].clone())
        .collect();
    Ok(Growth {
        added,
        sinks,
        rewired,
    })
}
