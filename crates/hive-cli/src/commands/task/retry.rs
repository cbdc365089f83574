//! `hive task retry` (one task, or every task in a status, in bounded pages) and `hive task
//! prune` (finished tasks outside plans older than an age).

use std::time::Duration;

use clap::Args;
use hive_client::TaskStatus;
use hive_client::store::{PruneParams, TaskFilter};
use serde_json::json;

use crate::{Context, args, output};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "status"])))]
pub struct RetryArgs {
    /// The task to put back in the queue.
    #[arg(conflicts_with_all = ["status", "task_type", "plan", "limit"])]
    id: Option<String>,
    /// Retry every task in this status.
    #[arg(long, help = args::with_statuses(
        "Retry every task in this status (failed, cancelled, completed …; not queued or held \
         by a worker)"
    ))]
    status: Option<String>,
    /// With --status: only tasks of this type.
    #[arg(long = "type", requires = "status")]
    task_type: Option<String>,
    /// With --status: only the tasks of this plan (its id).
    #[arg(long, value_name = "PLAN_ID", requires = "status")]
    plan: Option<String>,
    /// With --status: retry at most this many (default: every match).
    #[arg(long, requires = "status")]
    limit: Option<u32>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Only tasks last changed longer ago than this: 30s, 15m, 12h, 7d, 2w, or several
    /// added up (1d12h).
    #[arg(long, value_name = "AGE", value_parser = args::parse_age)]
    older_than: Duration,
    /// Only tasks in this status (repeatable; default: completed, failed and cancelled).
    #[arg(long = "status", help = args::with_statuses(
        "Only tasks in this status (repeatable; default: completed, failed and cancelled; \
         only these finished statuses can be pruned)"
    ))]
    statuses: Vec<String>,
}

pub async fn retry(ctx: &Context, a: RetryArgs) -> anyhow::Result<()> {
    if let Some(id) = a.id {
        let id = args::task_id(&id)?;
        if !ctx.client().await?.retry_task(id).await? {
            return Err(args::task_not_found(id));
        }
        return output::report(
            ctx.json,
            &json!({ "id": id, "status": TaskStatus::Queued }),
            format_args!("task {id} queued again"),
        );
    }
    let filter = TaskFilter {
        status: a.status.as_deref().map(args::status).transpose()?,
        task_type: a.task_type,
        plan_id: a.plan.as_deref().map(args::plan_id).transpose()?,
        limit: a.limit,
        ..Default::default()
    };
    if let Some(limit) = a.limit {
        args::check_limit(limit)?;
    }
    hive_client::ops::check_retry_filter(&filter)?;
    let report = ctx.client().await?.retry_tasks(&filter).await?;
    let skipped = match report.skipped {
        0 => String::new(),
        n => format!("; {n} skipped (changed meanwhile)"),
    };
    let refused = match report.refused {
        0 => String::new(),
        n => format!(
            "; {n} refused (waiting for a dependency that will not complete: `hive task retry \
             ID` names it)"
        ),
    };
    let in_plans = match report.in_finished_plans {
        0 => String::new(),
        n => format!(
            "; {n} left to their plans (subtasks of failed or cancelled plans: \
             `hive plan retry PLAN_ID` runs them with what depends on them)"
        ),
    };
    output::report(
        ctx.json,
        &serde_json::to_value(report)?,
        format_args!(
            "{} task(s) queued again{skipped}{refused}{in_plans}",
            report.retried
        ),
    )
}

pub async fn prune(ctx: &Context, a: PruneArgs) -> anyhow::Result<()> {
    let statuses = if a.statuses.is_empty() {
        vec![
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
    } else {
        a.statuses
            .iter()
            .map(|s| args::status(s))
            .collect::<anyhow::Result<_>>()?
    };
    // The store's own rule, checked before connecting.
    PruneParams {
        older_than: a.older_than,
        statuses: statuses.clone(),
        limit: 1,
    }
    .check()?;
    let pruned = ctx
        .client()
        .await?
        .prune_tasks(a.older_than, &statuses)
        .await?;
    output::report(
        ctx.json,
        &json!({ "pruned": pruned }),
        format_args!("{pruned} task(s) pruned"),
    )
}
