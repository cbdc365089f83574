//! Spawns: subtasks a run adds to its plan, committed with its success. Which outcomes
//! spawn, and what a spawn the plan cannot take turns into, decided once for every backend;
//! the backends validate the grown plan with [`hive_models::grow`] and write it before
//! finishing the batch, in the same transaction.

use std::borrow::Cow;
use std::collections::HashMap;

use hive_models::{Growth, PlanId, PlanStatus, SubTask, TaskId, TaskStatus};

use crate::{Outcome, RunOutcome};

/// The outcomes that add subtasks, with their index in the batch.
pub fn spawning(outcomes: &[RunOutcome]) -> impl Iterator<Item = (usize, &[SubTask])> {
    outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match &o.outcome {
            Outcome::Success { spawn, .. } if !spawn.is_empty() => Some((i, spawn.as_slice())),
            _ => None,
        })
}

/// Whether plan `plan`, in `status`, takes a spawn: only while it runs. A finished plan
/// refuses it, which fails the spawner for good (see [`refuse`]) and so cancels what
/// depends on it: a join after the spawner never runs without the fan-out. A failed
/// plan's `retry` runs the spawner again, and its spawn is taken then.
pub fn open_to_spawns(plan: PlanId, status: PlanStatus) -> Result<(), hive_models::Error> {
    if status.is_terminal() {
        return Err(hive_models::Error::InvalidField {
            field: "spawn".into(),
            reason: format!(
                "plan {plan} is {} and takes no more subtasks{}",
                status.as_str(),
                if status == PlanStatus::Failed {
                    " (`hive plan retry` runs this subtask again)"
                } else {
                    ""
                }
            ),
        });
    }
    Ok(())
}

/// What `spawn`, from subtask `spawner` of plan `plan` (in `status`, holding `existing`),
/// adds: `None` when it adds nothing (a spawner run again spawning what it spawned before),
/// which any plan takes, a finished one too (a completed plan's subtask requeued and run
/// again must not fail on it); otherwise the plan must still be running
/// ([`open_to_spawns`]) and the grown plan valid ([`hive_models::grow`]).
pub fn growth(
    plan: PlanId,
    status: PlanStatus,
    existing: &[SubTask],
    spawner: &str,
    spawn: &[SubTask],
) -> Result<Option<Growth>, hive_models::Error> {
    let grown = hive_models::grow(existing, spawner, spawn.to_vec(), usize::MAX);
    if grown.as_ref().is_ok_and(|g| g.added.is_empty()) {
        return Ok(None);
    }
    open_to_spawns(plan, status)?;
    grown.map(Some)
}

/// Whether every subtask of `g` waits only for subtasks that can still complete: one that
/// failed or was cancelled (alone, `hive task cancel`, with its plan left running) never
/// will, and a subtask waiting for it would wait for good, its plan never finishing.
/// `status` gives an existing subtask's task status by subtask id.
pub fn dependencies_can_complete(
    g: &Growth,
    status: impl Fn(&str) -> Option<TaskStatus>,
) -> Result<(), hive_models::Error> {
    for s in &g.added {
        for d in hive_models::unique_dependencies(s) {
            if let Some(st) = status(d).filter(|s| s.never_completes()) {
                return Err(hive_models::Error::InvalidField {
                    field: "spawn".into(),
                    reason: format!(
                        "subtask {:?} depends on {d:?}, which is {} and will not complete",
                        s.id,
                        st.as_str()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Replaces the outcome at `index` with a permanent failure saying why its spawn was
/// refused: the same handler would spawn the same again, so a retry cannot help.
pub fn refuse(outcomes: &mut Cow<'_, [RunOutcome]>, index: usize, why: &hive_models::Error) {
    let o = &mut outcomes.to_mut()[index];
    o.outcome = Outcome::Failure {
        error: format!("cannot spawn: {why}"),
        retry: None,
    };
}

/// The spawns of the batch's live runs, as (index in the batch, spawner task, spawn).
/// Stale runs spawn nothing: their finish is refused anyway.
pub fn live_spawns<'a>(
    outcomes: &'a [RunOutcome],
    view: &impl super::View,
    run_task: &HashMap<hive_models::RunId, TaskId>,
) -> Vec<(usize, TaskId, &'a [SubTask])> {
    spawning(outcomes)
        .filter_map(|(i, spawn)| {
            let run = outcomes[i].run_id;
            let task = *run_task.get(&run)?;
            view.task(task)?.is_live(run).then_some((i, task, spawn))
        })
        .collect()
}

/// A growth laid out as rows: what an SQL backend inserts and updates.
#[derive(Debug, Default)]
pub struct Placed {
    /// New tasks in creation order, with their subtask and pending dependency count.
    pub tasks: Vec<(TaskId, SubTask, u32)>,
    /// New dependency rows: (task, depends on, position), the re-wired ones included.
    pub deps: Vec<(TaskId, TaskId, i64)>,
    /// Existing tasks that now also wait for every sink, with their grown definitions.
    pub rewired: Vec<(TaskId, SubTask)>,
    pub sinks: Vec<TaskId>,
}

/// Lays out `g`, grown from the plan's `existing` subtasks, given their tasks by subtask id,
/// each with its status (a completed dependency is not pending).
pub fn place(
    g: &Growth,
    existing: &[SubTask],
    tasks: &HashMap<String, (TaskId, TaskStatus)>,
) -> Placed {
    let mut ids: HashMap<&str, (TaskId, bool)> = tasks
        .iter()
        .map(|(k, (id, status))| (k.as_str(), (*id, *status == TaskStatus::Completed)))
        .collect();
    for s in &g.added {
        ids.insert(s.id.as_str(), (TaskId::new(), false));
    }
    let position = |i: usize| i64::try_from(i).unwrap_or(i64::MAX);
    let mut placed = Placed::default();
    for s in &g.added {
        let Some(&(tid, _)) = ids.get(s.id.as_str()) else {
            continue;
        };
        let mut pending = 0u32;
        for (pos, d) in hive_models::unique_dependencies(s).into_iter().enumerate() {
            let Some(&(dep, done)) = ids.get(d) else {
                continue;
            };
            pending += u32::from(!done);
            placed.deps.push((tid, dep, position(pos)));
        }
        placed.tasks.push((tid, s.clone(), pending));
    }
    let task_of = |id: &String| ids.get(id.as_str()).map(|x| x.0);
    placed.sinks = g.sinks.iter().filter_map(task_of).collect();
    for spec in existing.iter().filter(|s| g.rewired.contains(&s.id)) {
        let Some(dependent) = task_of(&spec.id) else {
            continue;
        };
        let base = spec.dependencies.len();
        for (k, sink) in placed.sinks.iter().enumerate() {
            placed.deps.push((dependent, *sink, position(base + k)));
        }
        let mut grown = spec.clone();
        grown.dependencies.extend(g.sinks.iter().cloned());
        placed.rewired.push((dependent, grown));
    }
    placed
}
