//! `hive task list`: tasks in queue order, filtered; a column tells a ready task from a
//! blocked one, and another shows the first line of its last error.

use clap::Args;
use hive_client::models::Timestamp;
use hive_client::store::TaskFilter;
use hive_client::{Task, TaskStatus};

use crate::{Context, args, output};

#[derive(Args)]
pub struct ListArgs {
    /// Only tasks in this status.
    #[arg(long, help = args::with_statuses("Only tasks in this status"))]
    status: Option<String>,
    /// Only tasks of this type.
    #[arg(long = "type")]
    task_type: Option<String>,
    /// Only the tasks of this plan (its id).
    #[arg(long, value_name = "PLAN_ID")]
    plan: Option<String>,
    /// Only tasks ready to claim: queued, dependencies completed, run_at reached (a paused
    /// queue or a full limit may still hold them: `hive queue list`).
    #[arg(long)]
    ready: bool,
    /// Show at most this many (stderr says when more match).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub async fn run(ctx: &Context, a: ListArgs) -> anyhow::Result<()> {
    args::check_limit(a.limit)?;
    let filter = TaskFilter {
        status: a.status.as_deref().map(args::status).transpose()?,
        task_type: a.task_type,
        plan_id: a.plan.as_deref().map(args::plan_id).transpose()?,
        ready_only: a.ready,
        limit: Some(a.limit.saturating_add(1)),
        ..Default::default()
    };
    let client = ctx.client().await?;
    let tasks = output::cut(client.list_tasks(&filter).await?, a.limit, "tasks");
    if ctx.json {
        return output::json(&tasks);
    }
    // Readiness is judged on the database's clock, as claims are.
    let now = client.store().now().await?;
    output::table(
        [
            "ID", "STATUS", "READY", "TYPE", "PRIORITY", "ATTEMPTS", "TITLE", "ERROR",
        ],
        tasks.iter().map(|t| {
            [
                t.id.to_string(),
                t.status.to_string(),
                readiness(t, now),
                t.task_type.clone(),
                t.priority.to_string(),
                t.attempts.to_string(),
                output::clip(&t.title, 40),
                output::error_cell(t.last_error.as_deref(), 40),
            ]
        }),
    );
    Ok(())
}

/// For a queued task: `ready` when a worker could claim it at `now`, else what blocks it
/// (unfinished dependencies, or a `run_at` still ahead). `-` for any other status.
fn readiness(t: &Task, now: Timestamp) -> String {
    if t.status != TaskStatus::Queued {
        return "-".into();
    }
    match t.blocker_at(now) {
        None => "ready".into(),
        Some(b) => format!("blocked: {b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hive_client::{NewTask, TaskId};

    #[test]
    fn readiness_names_what_blocks_a_queued_task() {
        let now = chrono::Utc::now();
        let mut t = Task::from_new(TaskId::new(), NewTask::new("t", "x"), now);
        assert_eq!(readiness(&t, now), "ready");
        t.pending_dependencies = 2;
        assert_eq!(readiness(&t, now), "blocked: 2 deps");
        t.pending_dependencies = 1;
        assert_eq!(readiness(&t, now), "blocked: 1 dep");
        t.pending_dependencies = 0;
        t.run_at = chrono::DateTime::from_timestamp(4_102_444_800, 0);
        assert_eq!(readiness(&t, now), "blocked: until 2100-01-01 00:00:00");
        t.status = TaskStatus::Failed;
        assert_eq!(readiness(&t, now), "-");
    }
}
