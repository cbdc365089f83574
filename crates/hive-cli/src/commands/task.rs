//! `hive task …`

use std::process::ExitCode;

use clap::Subcommand;
use hive_client::{Task, TaskStatus};
use serde_json::json;

use crate::args::{self, status, task_id, task_not_found as not_found};
use crate::{Context, output};

mod create;
mod list;
mod logs;
mod retry;

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task and print its id.
    Create(create::CreateArgs),
    /// Show one task.
    Get {
        /// The task's id.
        id: String,
    },
    /// List tasks in queue order (highest priority first, then oldest), with whether each
    /// queued task is ready or blocked, and the first line of its last error.
    List(list::ListArgs),
    /// Set a task's status (the transition table applies).
    Update {
        /// The task's id.
        id: String,
        #[arg(help = args::with_statuses("The new status"))]
        status: String,
    },
    /// Cancel a task and the tasks depending on it.
    Cancel {
        /// The task's id.
        id: String,
        /// Why: kept as the task's last error and its running run's error.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Wait until a task is finished (through its retries), then say how it ended: exit 0
    /// if it completed, 1 if it failed or was cancelled, 124 if --timeout ran out first, 125
    /// if it could not wait (an unknown id, a database that does not answer).
    Wait(super::wait::WaitArgs),
    /// Delete a task and its runs.
    Delete {
        /// The task's id.
        id: String,
    },
    /// Show a task's runs, then each run's output log.
    Runs {
        /// The task's id.
        id: String,
    },
    /// Put a task back in the queue for one more run: one task by id, or every task in a
    /// status (`--status failed`, optionally of one type or plan), read in pages.
    Retry(retry::RetryArgs),
    /// Delete finished tasks outside plans (and their runs) last changed longer ago than an
    /// age; a plan's subtasks go with their plan (`hive plan prune`).
    Prune(retry::PruneArgs),
}

pub async fn run(ctx: &Context, cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    // Input is parsed before connecting, so bad input never touches the database.
    match cmd {
        TaskCommand::Create(a) => create::run(ctx, a).await?,
        TaskCommand::List(a) => list::run(ctx, a).await?,
        TaskCommand::Retry(a) => retry::retry(ctx, a).await?,
        TaskCommand::Prune(a) => retry::prune(ctx, a).await?,
        TaskCommand::Get { id } => {
            let id = task_id(&id)?;
            let client = ctx.client().await?;
            let task = client.get_task(id).await?.ok_or_else(|| not_found(id))?;
            // A running task shows how far its run said it had got.
            let progress = match task.current_run_id.filter(|_| task.is_active()) {
                Some(run) => client.get_run(run).await?.and_then(|r| r.progress),
                None => None,
            };
            if ctx.json {
                let mut value = serde_json::to_value(&task)?;
                if let Some(fields) = value.as_object_mut() {
                    fields.insert("progress".into(), serde_json::to_value(&progress)?);
                }
                output::json(&value)?;
            } else {
                print_task(&task, progress.as_ref())?;
            }
        }
        TaskCommand::Update { id, status: st } => {
            let (id, st) = (task_id(&id)?, status(&st)?);
            if !ctx.client().await?.update_task_status(id, st, None).await? {
                return Err(not_found(id));
            }
            output::report(
                ctx.json,
                &json!({ "id": id, "status": st }),
                format_args!("task {id} is now {st}"),
            )?;
        }
        TaskCommand::Cancel { id, reason } => {
            let id = task_id(&id)?;
            let client = ctx.client().await?;
            if !client.cancel_task(id, reason.as_deref()).await? {
                return Err(not_found(id));
            }
            let said = match &reason {
                Some(r) => format!("task {id} cancelled: {r}"),
                None => format!("task {id} cancelled"),
            };
            output::report(
                ctx.json,
                &json!({ "id": id, "status": hive_client::TaskStatus::Cancelled, "reason": reason }),
                format_args!("{said}"),
            )?;
        }
        TaskCommand::Wait(a) => {
            return super::wait::run(ctx.json, async {
                let id = task_id(&a.id)?;
                let task = ctx.client().await?.wait_for_task(id, a.timeout).await?;
                let finished = task.is_terminal();
                let how = super::wait::how(task.status, finished, a.timeout);
                let error = task
                    .last_error
                    .as_deref()
                    .filter(|_| finished && task.status != TaskStatus::Completed)
                    .map(|e| format!(": {}", output::escape(&output::error_cell(Some(e), 200))))
                    .unwrap_or_default();
                super::wait::ended(
                    ctx.json,
                    &serde_json::to_value(&task)?,
                    finished,
                    task.status == TaskStatus::Completed,
                    format_args!(
                        "task {id} {how} after {} attempt{}{error}",
                        task.attempts,
                        if task.attempts == 1 { "" } else { "s" }
                    ),
                )
            })
            .await;
        }
        TaskCommand::Delete { id } => {
            let id = task_id(&id)?;
            if !ctx.client().await?.delete_task(id).await? {
                return Err(not_found(id));
            }
            output::report(
                ctx.json,
                &json!({ "id": id, "deleted": true }),
                format_args!("task {id} deleted"),
            )?;
        }
        TaskCommand::Runs { id } => {
            let id = task_id(&id)?;
            let client = ctx.client().await?;
            client.get_task(id).await?.ok_or_else(|| not_found(id))?;
            let runs = client.list_runs(id).await?;
            if ctx.json {
                output::json(&runs)?;
            } else {
                output::table(
                    [
                        "RUN", "#", "WORKER", "STATUS", "PROGRESS", "STARTED", "DURATION", "ERROR",
                    ],
                    runs.iter().map(|r| {
                        [
                            r.id.to_string(),
                            r.run_number.to_string(),
                            r.worker_id.to_string(),
                            r.status.to_string(),
                            output::progress_cell(r.progress.as_ref()),
                            r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            output::seconds(
                                r.duration().map(|d| d.num_milliseconds() as f64 / 1000.0),
                            ),
                            output::error_cell(r.error_message.as_deref(), 40),
                        ]
                    }),
                );
                logs::print(&runs);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_task(t: &Task, progress: Option<&hive_client::Progress>) -> anyhow::Result<()> {
    let rows: [(&str, String); 15] = [
        ("id", t.id.to_string()),
        ("title", t.title.clone()),
        ("type", t.task_type.clone()),
        ("status", t.status.to_string()),
        ("progress", output::progress_cell(progress)),
        ("priority", t.priority.to_string()),
        (
            "attempts",
            format!("{} (max retries {})", t.attempts, t.max_retries),
        ),
        ("worker", output::opt(t.assigned_worker.as_ref())),
        ("plan", output::opt(t.plan_id)),
        ("run at", output::opt(t.run_at)),
        ("created", t.created_at.to_string()),
        ("updated", t.updated_at.to_string()),
        ("payload", serde_json::to_string(&t.payload)?),
        ("result", output::opt(t.result.as_ref())),
        ("last error", output::opt(t.last_error.as_ref())),
    ];
    output::table(
        ["FIELD", "VALUE"],
        rows.into_iter().map(|(k, v)| [k.to_owned(), v]),
    );
    Ok(())
}
