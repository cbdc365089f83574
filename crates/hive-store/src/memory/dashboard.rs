//! The operator's reads over the maps: task pages (newest first, after a cursor) and the
//! queue statistics. Plain scans: memory is the reference, not the fast path.

use std::collections::BTreeMap;

use hive_models::{RunStatus, Task, TaskStatus, Timestamp};

use super::state::State;
use crate::{OldestReady, QueueStats, TaskPageParams, TypeStatusCount};

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

pub(super) fn stats(s: &State, now: Timestamp, since: Timestamp) -> QueueStats {
    let mut counts: BTreeMap<(String, TaskStatus), u64> = BTreeMap::new();
    let mut oldest: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (t, _) in s.tasks.values() {
        *counts.entry((t.task_type.clone(), t.status)).or_default() += 1;
        if t.is_ready_at(now) {
            let from = t.run_at.unwrap_or(t.created_at);
            let e = oldest.entry(t.task_type.clone()).or_insert(from);
            *e = (*e).min(from);
        }
    }
    let mut out = QueueStats {
        now,
        counts: counts
            .into_iter()
            .map(|((task_type, status), count)| TypeStatusCount {
                task_type,
                status,
                count,
            })
            .collect(),
        oldest_ready: oldest
            .into_iter()
            .map(|(task_type, since)| OldestReady { task_type, since })
            .collect(),
        finished: Vec::new(),
    };
    for run in s.runs.values() {
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
