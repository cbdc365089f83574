//! `hive plan status`: a plan's progress and its subtasks. A plan a terminal can show is
//! listed whole; of a larger one, the subtasks an operator looks for first (failed, then
//! running, then waiting, then finished), read a bounded page at a time, so the answer
//! comes as fast for 100,000 subtasks as for 100.

use clap::Args;
use hive_client::models::PlanHeader;
use hive_client::ops::{SubtaskResult, TriagedSubtask};
use hive_client::{Client, PlanId, TaskStatus};

use super::found;
use crate::args::{self, plan_id};
use crate::{Context, output};

/// A plan of more subtasks than this is shown in part unless `--all` is given.
const LISTED_WHOLE_UP_TO: u32 = 1_000;

/// Subtasks shown of a larger plan when `--limit` is not given.
const SHOWN_OF_A_LARGE_PLAN: u32 = 200;

#[derive(Args)]
pub struct StatusArgs {
    /// The plan's id.
    id: String,
    #[arg(long = "status", value_name = "STATUS", help = args::with_statuses(
        "Only subtasks in this status (repeatable), read page by page: as quick on a plan of \
         any size"
    ))]
    statuses: Vec<String>,
    /// At most this many subtasks, failed and running first (default: every subtask of a
    /// plan of up to 1,000, and 200 of a larger one).
    #[arg(long, conflicts_with = "all")]
    limit: Option<u32>,
    /// Every subtask whatever the plan's size, with durations and dependencies.
    #[arg(long, conflicts_with = "statuses")]
    all: bool,
}

pub async fn run(ctx: &Context, a: StatusArgs) -> anyhow::Result<()> {
    let id = plan_id(&a.id)?;
    let statuses = a
        .statuses
        .iter()
        .map(|s| args::status(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(limit) = a.limit {
        args::check_limit(limit)?;
    }
    let client = ctx.client().await?;
    let header = found(client.plan_header(id).await?, id)?;
    let in_part = !statuses.is_empty()
        || a.limit.is_some()
        // `--json` without a filter stays one shape whatever the plan's size.
        || (!a.all && !ctx.json && header.total_subtasks > LISTED_WHOLE_UP_TO);
    if !in_part {
        return whole(ctx, &client, id).await;
    }
    let limit = a.limit.unwrap_or(SHOWN_OF_A_LARGE_PLAN);
    let part = hive_web::PlanSubtasksJson::read(&client, header, &statuses, limit).await?;
    if ctx.json {
        return output::json(&part);
    }
    let (header, rows) = (&part.plan, &part.subtasks);
    heading(header);
    output::table(
        [
            "SUBTASK",
            "STATUS",
            "ATTEMPTS",
            "DURATION",
            "WORKER",
            "DEPS",
            "WAITS FOR",
            "UPDATED",
            "ERROR",
        ],
        rows.iter().map(row),
    );
    if part.more {
        output::hint(&format!(
            "showing {} of the plan's {} subtasks, {}; --status STATUS for only those in \
             one status, --limit N for more, --all for every subtask",
            rows.len(),
            header.total_subtasks,
            if a.statuses.is_empty() {
                "failed and running first"
            } else {
                "in the statuses asked for"
            }
        ));
    }
    Ok(())
}

/// The plan's summary and every subtask, with durations and dependencies.
async fn whole(ctx: &Context, client: &Client, id: PlanId) -> anyhow::Result<()> {
    let summary = found(client.plan_summary(id).await?, id)?;
    let results = found(client.plan_results(id).await?, id)?;
    if ctx.json {
        return output::json(&hive_web::PlanStatusJson::new(summary, results));
    }
    heading(&summary.plan.header());
    subtask_table(&results.subtasks);
    Ok(())
}

fn heading(p: &PlanHeader) {
    let key = p.idempotency_key.as_ref().map_or_else(String::new, |k| {
        format!("\nidempotency key: {}", output::escape(k))
    });
    output::outln!(
        "plan {} — {}\nstatus: {}\nprogress: {:.1}% ({} of {} completed, {} failed, {} cancelled){key}\n",
        p.id,
        output::escape(&p.title),
        p.status,
        p.get_progress_percentage(),
        p.completed_subtasks,
        p.total_subtasks,
        p.failed_subtasks,
        p.cancelled_subtasks
    );
}

/// A subtask of a plan shown in part: its task row, its dependencies by name and its
/// latest run's duration.
fn row(s: &TriagedSubtask) -> [String; 9] {
    let t = &s.task;
    [
        t.plan_subtask_id.clone().unwrap_or_default(),
        t.status.to_string(),
        t.attempts.to_string(),
        output::seconds(s.timing.duration_secs),
        output::opt(t.assigned_worker.as_ref()),
        deps_cell(&s.depends_on),
        if t.status == TaskStatus::Queued && t.pending_dependencies > 0 {
            format!("{} of {}", t.pending_dependencies, t.dependencies.len())
        } else {
            "-".into()
        },
        t.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        output::error_cell(t.current_error(), 60),
    ]
}

/// A `DEPS` cell: the subtask ids, shortened; `-` for none.
fn deps_cell(deps: &[String]) -> String {
    if deps.is_empty() {
        "-".into()
    } else {
        output::clip(&deps.join(","), 40)
    }
}

/// One row per subtask; dependencies in a `DEPS` column, errors cut to their first line.
fn subtask_table(subtasks: &[SubtaskResult]) {
    output::table(
        [
            "SUBTASK", "STATUS", "PROGRESS", "ATTEMPTS", "DURATION", "WORKER", "DEPS", "ERROR",
        ],
        subtasks.iter().map(|s| {
            [
                s.subtask_id.clone(),
                s.status.to_string(),
                output::progress_cell(s.progress.as_ref()),
                s.attempts.to_string(),
                output::seconds(s.duration_secs),
                output::opt(s.worker.as_ref()),
                deps_cell(&s.dependencies),
                output::error_cell(s.error.as_deref(), 60),
            ]
        }),
    );
}
