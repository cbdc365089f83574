//! The check every scenario ends with: each task completed exactly once. The database must
//! hold every task enqueued, completed, with exactly one success run; the workers' exec
//! logs must show a handler start for every success run. A task whose handler started more
//! than once (its first run taken back) is counted, not refused: that is at-least-once
//! execution, and what the fencing by run id exists for.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::db::LoadDb;

#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub tasks: u64,
    pub success_runs: u64,
    /// Tasks not completed, or completed without a success run.
    pub lost: u64,
    /// Tasks with more than one success run.
    pub doubled: u64,
    /// Handler starts in the exec logs.
    pub executions: u64,
    /// Tasks whose handler started more than once.
    pub executed_again: u64,
    /// Success runs whose handler start no exec log recorded.
    pub unrecorded: u64,
    /// Runs the reaper closed because their lease ran out.
    pub lease_expired: u64,
}

impl Tally {
    /// What is wrong, given that `expected` tasks were enqueued; empty when each completed
    /// exactly once.
    pub fn problems(&self, expected: u64) -> Vec<String> {
        let mut p = Vec::new();
        if self.tasks != expected {
            p.push(format!(
                "{} tasks enqueued, {} in the database",
                expected, self.tasks
            ));
        }
        if self.lost > 0 {
            p.push(format!("{} task(s) lost (not completed once)", self.lost));
        }
        if self.doubled > 0 {
            p.push(format!("{} task(s) completed twice or more", self.doubled));
        }
        if self.unrecorded > 0 {
            p.push(format!(
                "{} success run(s) with no handler start in the exec logs",
                self.unrecorded
            ));
        }
        if self.executions < self.tasks {
            p.push(format!(
                "{} handler starts for {} tasks",
                self.executions, self.tasks
            ));
        }
        p
    }
}

impl Tally {
    /// What a scenario without faults must not show besides [`Tally::problems`]: nothing
    /// there justifies a second run, so a handler started again, a lease that ran out or
    /// an outcome refused as stale (`stale`, the workers' count) is two workers holding
    /// one task.
    pub fn second_runs(&self, stale: u64) -> Vec<String> {
        let mut p = Vec::new();
        if self.executed_again > 0 {
            p.push(format!(
                "{} task(s) whose handler started more than once without a fault",
                self.executed_again
            ));
        }
        if self.lease_expired > 0 {
            p.push(format!(
                "{} lease(s) ran out without a fault",
                self.lease_expired
            ));
        }
        if stale > 0 {
            p.push(format!(
                "{stale} outcome(s) refused as stale without a fault"
            ));
        }
        p
    }
}

pub async fn exactly_once(db: &LoadDb, exec_logs: &[PathBuf]) -> Result<Tally> {
    let tasks: Vec<(String, String)> = sqlx::query_as("SELECT id::text, status FROM tasks")
        .fetch_all(db.pool())
        .await
        .context("reading tasks")?;
    let successes: Vec<(String, String)> =
        sqlx::query_as("SELECT task_id::text, id::text FROM runs WHERE status = 'success'")
            .fetch_all(db.pool())
            .await
            .context("reading runs")?;
    let lease_expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE status = 'timeout' AND error_message = $1",
    )
    .bind(hive_models::Run::LEASE_EXPIRED)
    .fetch_one(db.pool())
    .await
    .context("reading runs")?;

    let mut executed_runs = HashSet::new();
    let mut starts_per_task: HashMap<String, u64> = HashMap::new();
    let mut executions = 0;
    for path in exec_logs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [task, run, _number, _worker] = fields[..] else {
                bail!("{}: not an exec log line: {line:?}", path.display());
            };
            executions += 1;
            executed_runs.insert(run.to_owned());
            *starts_per_task.entry(task.to_owned()).or_default() += 1;
        }
    }

    let mut success_per_task: HashMap<&str, u64> = HashMap::new();
    for (task, _) in &successes {
        *success_per_task.entry(task.as_str()).or_default() += 1;
    }
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    Ok(Tally {
        tasks: count(tasks.len()),
        success_runs: count(successes.len()),
        lost: count(
            tasks
                .iter()
                .filter(|(id, s)| s != "completed" || !success_per_task.contains_key(id.as_str()))
                .count(),
        ),
        doubled: count(success_per_task.values().filter(|&&n| n > 1).count()),
        executions,
        executed_again: count(starts_per_task.values().filter(|&&n| n > 1).count()),
        unrecorded: count(
            successes
                .iter()
                .filter(|(_, run)| !executed_runs.contains(run))
                .count(),
        ),
        lease_expired: u64::try_from(lease_expired).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn each_way_of_not_completing_once_is_a_problem() {
        let once = Tally {
            tasks: 10,
            success_runs: 10,
            executions: 12,
            executed_again: 2,
            lease_expired: 2,
            ..Tally::default()
        };
        assert!(once.problems(10).is_empty(), "{:?}", once.problems(10));
        let cases = [
            (
                Tally { tasks: 9, ..once },
                "10 tasks enqueued, 9 in the database",
            ),
            (Tally { lost: 1, ..once }, "1 task(s) lost"),
            (Tally { doubled: 1, ..once }, "1 task(s) completed twice"),
            (
                Tally {
                    unrecorded: 3,
                    ..once
                },
                "3 success run(s) with no handler start",
            ),
            (
                Tally {
                    executions: 9,
                    ..once
                },
                "9 handler starts for 10 tasks",
            ),
        ];
        for (tally, want) in cases {
            let problems = tally.problems(10);
            assert!(problems.iter().any(|p| p.contains(want)), "{problems:?}");
        }
    }
}
