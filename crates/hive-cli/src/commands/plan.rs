//! `hive plan …`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use hive_client::PlanId;

use crate::args::{self, plan_id};
use crate::{Context, output, planfile};

mod status;

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Create a plan and its subtasks from a JSON or TOML file (`-`: standard input);
    /// prints the plan id.
    Submit {
        /// The plan file (`.json` or `.toml`; `-` reads standard input).
        file: PathBuf,
        /// A key that makes the submit safe to repeat: a second submit with the same key
        /// creates nothing and prints the first plan's id (default: the file's
        /// `idempotency_key`, if any).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Status and progress of a plan, and its subtasks: every one of a plan of up to 1,000
    /// (status, attempts, duration, worker, dependencies and the first line of its error);
    /// of a larger plan, 200 of them, failed and running first (--all for every one).
    Status(status::StatusArgs),
    /// Every subtask's status and output, and the plan's result (its final subtasks'
    /// outputs); `--json` for the whole record.
    Results {
        /// The plan's id.
        id: String,
    },
    /// List plans, newest first.
    List {
        /// Show at most this many (stderr says when more match).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, help = args::with_plan_statuses("Only plans in this status"))]
        status: Option<String>,
    },
    /// Wait until a plan is finished, then say how it ended: exit 0 if it completed, 1 if
    /// it failed or was cancelled, 124 if --timeout ran out first, 125 if it could not wait
    /// (an unknown id, a database that does not answer).
    Wait(super::wait::WaitArgs),
    /// Cancel a plan and its open subtasks (a failed plan's open subtasks: it stays failed).
    Cancel {
        /// The plan's id.
        id: String,
    },
    /// Give a failed or cancelled plan another go: its failed and cancelled subtasks are
    /// queued again with their whole retry budget (each waits for its dependencies),
    /// completed ones keep their outputs and are not run again, and the plan is in progress
    /// again.
    Retry {
        /// The plan's id.
        id: String,
    },
    /// Delete finished plans with all their subtasks and runs: those last changed longer ago
    /// than --older-than whose every subtask is finished (a failed plan whose other branch
    /// still runs stays), oldest first.
    Prune {
        /// Only plans last changed longer ago than this: 30s, 15m, 12h, 7d, 2w, or several
        /// added up (1d12h).
        #[arg(long, value_name = "AGE", value_parser = args::parse_age)]
        older_than: std::time::Duration,
        #[arg(long = "status", help = args::with_plan_statuses(
            "Only plans in this status (repeatable; default: completed, failed and cancelled, \
             the only statuses a plan can be pruned in)"
        ))]
        statuses: Vec<String>,
    },
}

/// `x`, or the error an unknown plan gets.
fn found<T>(x: Option<T>, id: PlanId) -> anyhow::Result<T> {
    x.ok_or_else(|| anyhow!("plan `{id}` not found"))
}

pub async fn run(ctx: &Context, cmd: PlanCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PlanCommand::Submit {
            file,
            idempotency_key,
        } => {
            let mut plan = planfile::read_for_workers(&file)?;
            if let Some(key) = idempotency_key {
                if key.trim().is_empty() {
                    bail!("--idempotency-key: must not be empty");
                }
                // Refused before connecting, as the file's own key is: a bad key creates
                // no database.
                hive_client::models::check_idempotency_key(&key)
                    .map_err(|e| anyhow::anyhow!("--idempotency-key: {e}"))?;
                plan.idempotency_key = Some(key);
            }
            let key = plan.idempotency_key.clone();
            let submitted = ctx
                .client_creating()
                .await?
                .submit_plan_reporting(plan)
                .await?;
            output::created(
                ctx.json,
                "plan",
                submitted.id,
                submitted.created(),
                key.as_deref(),
            )?;
        }
        PlanCommand::Status(a) => status::run(ctx, a).await?,
        PlanCommand::Results { id } => {
            let id = plan_id(&id)?;
            let results = found(ctx.client().await?.plan_results(id).await?, id)?;
            if ctx.json {
                output::json(&results)?;
            } else {
                output::outln!(
                    "plan {} — {}\nstatus: {}\n",
                    results.plan_id,
                    output::escape(&results.title),
                    results.status
                );
                output::table(
                    ["SUBTASK", "STATUS", "OUTPUT"],
                    results.subtasks.iter().map(|s| {
                        [
                            s.subtask_id.clone(),
                            s.status.to_string(),
                            s.output
                                .as_ref()
                                .map_or_else(|| "-".into(), |o| output::clip(&o.to_string(), 80)),
                        ]
                    }),
                );
                // A final subtask that has not completed has no output yet: its `null` is
                // not something it returned.
                let unfinished = if results.status == hive_client::PlanStatus::Completed {
                    String::new()
                } else {
                    format!(
                        "; the plan is {}, so a final subtask that has not completed shows null",
                        results.status
                    )
                };
                // Escaped as every text a task produced: serde_json leaves bidi overrides
                // and C1 controls as they are.
                let pretty = serde_json::to_string_pretty(&results.result)?;
                let lines: Vec<_> = pretty.lines().map(output::escape_log_line).collect();
                output::outln!(
                    "\nresult (outputs of the final subtasks{unfinished}):\n{}",
                    lines.join("\n")
                );
            }
        }
        PlanCommand::List { limit, status } => {
            args::check_limit(limit)?;
            let status = status.as_deref().map(args::plan_status).transpose()?;
            let plans = ctx
                .client()
                .await?
                .list_plan_headers(status, Some(limit.saturating_add(1)))
                .await?;
            let plans = output::cut(plans, limit, "plans");
            if ctx.json {
                output::json(&plans)?;
            } else {
                output::table(
                    ["ID", "STATUS", "PROGRESS", "SUBTASKS", "CREATED", "TITLE"],
                    plans.iter().map(|p| {
                        [
                            p.id.to_string(),
                            p.status.to_string(),
                            format!("{:.0}%", p.get_progress_percentage()),
                            p.total_subtasks.to_string(),
                            p.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            output::clip(&p.title, 50),
                        ]
                    }),
                );
            }
        }
        PlanCommand::Wait(a) => {
            return super::wait::run(ctx.json, async {
                let id = plan_id(&a.id)?;
                let plan = ctx.client().await?.wait_for_plan(id, a.timeout).await?;
                let finished = plan.status.is_terminal();
                let how = super::wait::how(plan.status, finished, a.timeout);
                super::wait::ended(
                    ctx.json,
                    &serde_json::to_value(&plan)?,
                    finished,
                    plan.status == hive_client::PlanStatus::Completed,
                    format_args!(
                        "plan {id} {how}: {} of {} subtasks completed, {} failed, {} cancelled",
                        plan.completed_subtasks,
                        plan.total_subtasks,
                        plan.failed_subtasks,
                        plan.cancelled_subtasks
                    ),
                )
            })
            .await;
        }
        PlanCommand::Cancel { id } => {
            let id = plan_id(&id)?;
            let client = ctx.client().await?;
            let plan = found(client.plan_progress(id).await?, id)?;
            if !client.cancel_plan(id).await? {
                anyhow::bail!("plan `{id}` is already {}", plan.status);
            }
            let after = found(client.plan_progress(id).await?, id)?;
            let said = match after.status {
                hive_client::PlanStatus::Failed => {
                    format!("plan {id} stays failed; its subtasks still open are cancelled")
                }
                _ => format!("plan {id} cancelled"),
            };
            output::report(
                ctx.json,
                &serde_json::json!({ "id": id, "status": after.status }),
                format_args!("{said}"),
            )?;
        }
        PlanCommand::Prune {
            older_than,
            statuses,
        } => {
            let statuses = statuses
                .iter()
                .map(|s| args::plan_status(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // The store's own rule, checked before connecting.
            hive_client::store::PlanPruneParams {
                older_than,
                statuses: statuses.clone(),
                limit: 1,
            }
            .check()?;
            let pruned = ctx
                .client()
                .await?
                .prune_plans(older_than, &statuses)
                .await?;
            output::report(
                ctx.json,
                &serde_json::to_value(pruned)?,
                format_args!(
                    "{} plan(s) pruned, with {} task(s)",
                    pruned.plans, pruned.tasks
                ),
            )?;
        }
        PlanCommand::Retry { id } => {
            let id = plan_id(&id)?;
            let client = ctx.client().await?;
            let requeued = client.retry_plan(id).await?;
            let status = found(client.plan_progress(id).await?, id)?.status;
            output::report(
                ctx.json,
                &serde_json::json!({ "id": id, "status": status, "requeued": requeued }),
                format_args!(
                    "plan {id} is {status} again: {} subtask{} queued again",
                    requeued.len(),
                    if requeued.len() == 1 { "" } else { "s" }
                ),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
