//! The operator's reads over the maps: filtered task lists, task pages (newest first,
//! after a cursor), tasks and runs by id, and the queue statistics. Plain scans: memory is
//! the reference, not the fast path.

use std::collections::BTreeMap;

use hive_models::{Run, RunId, RunStatus, Task, TaskId, TaskStatus, Timestamp};

use super::state::State;
use crate::{OldestReady, QueueStats, TaskFilter, TaskPageParams, TypeStatusCount};

impl State {
    /// See [`crate::Store::get_tasks`].
    pub(crate) fn tasks_by_id(&self, ids: &[TaskId]) -> Vec<Task> {
        let mut found: Vec<&(Task, u64)> = ids.iter().filter_map(|id| self.tasks.get(id)).collect();
        found.sort_by_key(|(_, seq)| *seq);
        found.dedup_by_key(|(_, seq)| *seq);
        found.into_iter().map(|(t, _)| t.clone()).collect()
    }

    /// See [`crate::Store::get_runs`].
    /// The runs of `tasks`, task by task, each task's in the order they started.
    pub(crate) fn runs_of_tasks(&self, tasks: &[TaskId]) -> Vec<Run> {
        (tasks.iter())
            .filter_map(|t| self.task_runs.get(t))
            .flatten()
            .filter_map(|r| self.runs.get(r).cloned())
            .collect()
    }

    pub(crate) fn runs_by_id(&self, ids: &[RunId]) -> Vec<Run> {
        let mut runs: Vec<Run> = ids
            .iter()
            .filter_map(|id| self.runs.get(id).cloned())
            .collect();
        runs.sort_by_key(|r| (r.task_id, r.run_number));
        runs.dedup_by_key(|r| r.id);
        runs
    }
}

pub(super) fn page(s: &State, p: &TaskPageParams) -> Vec<Task> {
    let mut rows: Vec<&Task> = s
        .tasks
        .values()
        .map(|(t, _)| t)
        .filter(|t| p.matches(t))
        .collect();
    rows.sort_by_key(|t| std::cmp::Reverse(t.id));
    rows.into_iter().take(p.limit as usize).cloned().collect()
}

/// Tasks per type and status, those finished (`true`) or not.
pub(super) fn counts(s: &State, finished: bool) -> Vec<TypeStatusCount> {
    let mut counts: BTreeMap<(String, TaskStatus), u64> = BTreeMap::new();
    for (t, _) in s
        .tasks
        .values()
        .filter(|(t, _)| t.is_terminal() == finished)
    {
        *counts.entry((t.task_type.clone(), t.status)).or_default() += 1;
    }
    (counts.into_iter())
        .map(|((task_type, status), count)| TypeStatusCount {
            task_type,
            status,
            count,
        })
        .collect()
}

pub(super) fn stats(s: &State, now: Timestamp, since: Option<Timestamp>) -> QueueStats {
    let mut oldest: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (t, _) in s.tasks.values() {
        if t.is_ready_at(now) {
            let from = t.ready_since();
            let e = oldest.entry(t.task_type.clone()).or_insert(from);
            *e = (*e).min(from);
        }
    }
    let mut out = QueueStats {
        now,
        counts: counts(s, false),
        oldest_ready: oldest
            .into_iter()
            .map(|(task_type, since)| OldestReady { task_type, since })
            .collect(),
        finished: Vec::new(),
    };
    let Some(since) = since else {
        return out;
    };
    let first = crate::types::first_run_id_for(since);
    for run in s.runs.values().filter(|r| r.id.0 >= first) {
        let Some(at) = run.completed_at.filter(|at| *at >= since) else {
            continue;
        };
        match run.status {
            RunStatus::Success => out.add_finished(at, true),
            RunStatus::Failure | RunStatus::Timeout => out.add_finished(at, false),
            _ => {}
        }
    }
    out
}

/// The tasks `f` selects at `at`, as [`crate::Store::list_tasks`] lists them.
pub(super) fn list(s: &State, f: &TaskFilter, at: Timestamp) -> Vec<Task> {
    let limit = f.limit.map_or(usize::MAX, |l| l as usize);
    let matches = |t: &Task| {
        f.status.is_none_or(|st| t.status == st)
            && f.task_type.as_ref().is_none_or(|ty| &t.task_type == ty)
            && f.plan_id.is_none_or(|p| t.plan_id == Some(p))
            && (!f.ready_only || t.is_ready_at(at))
            && f.updated_not_after.is_none_or(|b| t.updated_at <= b)
            && f.depending_on.is_none_or(|d| t.dependencies.contains(&d))
    };
    if f.ready_only {
        return s
            .ready
            .walk()
            .filter_map(|(_, id)| s.task(id))
            .filter(|t| matches(t))
            .take(limit)
            .cloned()
            .collect();
    }
    let rows: Vec<&(Task, u64)> = match f.plan_id {
        Some(p) => s
            .plan_tasks
            .get(&p)
            .map(|ids| ids.iter().filter_map(|i| s.tasks.get(i)).collect())
            .unwrap_or_default(),
        None => s.tasks.values().collect(),
    };
    let rows = rows.into_iter().filter(|(t, _)| matches(t)).collect();
    let mut out = s.sorted(rows);
    out.truncate(limit);
    out
}
