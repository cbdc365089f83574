//! `hive task …`

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use hive_client::store::TaskFilter;
use hive_client::{NewTask, RetryPolicy, Task, TaskId, TaskStatus};

use crate::{Context, output, shell};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task and print its id.
    Create {
        #[arg(long)]
        title: String,
        #[arg(long = "type")]
        task_type: String,
        #[arg(long, default_value = "")]
        description: String,
        /// JSON payload, e.g. '{"command": "make"}'; `@FILE` reads it from a file, `-` from
        /// standard input.
        #[arg(long)]
        payload: Option<String>,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        priority: i32,
        /// Failed runs retried at most this many times (default 3).
        #[arg(long)]
        max_retries: Option<u32>,
        /// Seconds before the first retry; each retry waits up to twice as long as the one
        /// before (default 1).
        #[arg(long = "retry-base", value_name = "SECS")]
        retry_base: Option<f64>,
        /// The longest wait between retries, in seconds (default 300).
        #[arg(long = "retry-max", value_name = "SECS")]
        retry_max: Option<f64>,
        /// Wait exactly the backoff between retries, instead of a random time up to it.
        #[arg(long)]
        no_jitter: bool,
        /// Seconds a run may last before the worker stops it (default: the worker's).
        #[arg(long = "timeout")]
        timeout_secs: Option<u32>,
        /// Seconds to wait before the task can first be claimed.
        #[arg(long = "delay", default_value_t = 0)]
        delay_secs: u64,
    },
    /// Show one task.
    Get { id: String },
    /// List tasks in queue order.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long = "type")]
        task_type: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Set a task's status (the transition table applies).
    Update { id: String, status: String },
    /// Cancel a task and the tasks depending on it.
    Cancel {
        id: String,
        /// Why: kept as the task's last error and its running run's error.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a task and its runs.
    Delete { id: String },
    /// Show a task's runs.
    Runs { id: String },
}

fn task_id(s: &str) -> anyhow::Result<TaskId> {
    s.parse()
        .map_err(|e: hive_client::models::Error| anyhow!(e))
}

fn status(s: &str) -> anyhow::Result<TaskStatus> {
    s.parse()
        .map_err(|e: hive_client::models::Error| anyhow!(e))
}

fn not_found(id: TaskId) -> anyhow::Error {
    anyhow!("task `{id}` not found")
}

pub async fn run(ctx: &Context, cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    // Input is parsed before connecting, so bad input never touches the database.
    match cmd {
        TaskCommand::Create {
            title,
            task_type,
            description,
            payload,
            priority,
            max_retries,
            retry_base,
            retry_max,
            no_jitter,
            timeout_secs,
            delay_secs,
        } => {
            let mut new = NewTask::new(title, task_type)
                .description(description)
                .priority(priority)
                .delay_secs(delay_secs);
            new.max_retries = max_retries;
            new.retry_policy = retry_policy(retry_base, retry_max, no_jitter)?;
            if let Some(t) = timeout_secs {
                new = new.timeout_secs(t);
            }
            if let Some(p) = payload {
                new = new.payload(read_payload(&p)?);
            }
            new.validate(hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES)?;
            if new.task_type == shell::SHELL {
                shell::validate_payload(&new.payload).map_err(|e| anyhow!(e))?;
            }
            let id = ctx.client_creating().await?.create_task(new).await?;
            output::created(ctx.json, id)?;
        }
        TaskCommand::Get { id } => {
            let id = task_id(&id)?;
            let client = ctx.client().await?;
            let task = client.get_task(id).await?.ok_or_else(|| not_found(id))?;
            if ctx.json {
                output::json(&task)?;
            } else {
                // A running task shows how far its run said it had got.
                let progress = match task.current_run_id.filter(|_| task.is_active()) {
                    Some(run) => client.get_run(run).await?.and_then(|r| r.progress),
                    None => None,
                };
                print_task(&task, progress.as_ref())?;
            }
        }
        TaskCommand::List {
            status: st,
            task_type,
            limit,
        } => {
            let filter = TaskFilter {
                status: st.as_deref().map(status).transpose()?,
                task_type,
                limit: Some(limit),
                ..Default::default()
            };
            let tasks = ctx.client().await?.list_tasks(&filter).await?;
            if ctx.json {
                output::json(&tasks)?;
            } else {
                output::table(
                    ["ID", "STATUS", "TYPE", "PRIORITY", "ATTEMPTS", "TITLE"],
                    tasks.iter().map(|t| {
                        [
                            t.id.to_string(),
                            t.status.to_string(),
                            t.task_type.clone(),
                            t.priority.to_string(),
                            t.attempts.to_string(),
                            output::clip(&t.title, 50),
                        ]
                    }),
                );
            }
        }
        TaskCommand::Update { id, status: st } => {
            let (id, st) = (task_id(&id)?, status(&st)?);
            if !ctx.client().await?.update_task_status(id, st, None).await? {
                return Err(not_found(id));
            }
            output::outln!("task {id} is now {st}");
        }
        TaskCommand::Cancel { id, reason } => {
            let id = task_id(&id)?;
            let client = ctx.client().await?;
            if !client.cancel_task(id, reason.as_deref()).await? {
                return Err(not_found(id));
            }
            match reason {
                Some(r) => output::outln!("task {id} cancelled: {r}"),
                None => output::outln!("task {id} cancelled"),
            }
        }
        TaskCommand::Delete { id } => {
            let id = task_id(&id)?;
            if !ctx.client().await?.delete_task(id).await? {
                return Err(not_found(id));
            }
            output::outln!("task {id} deleted");
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

/// The policy `--retry-base`, `--retry-max` and `--no-jitter` ask for; `None` when none
/// is given (the worker's policy applies).
fn retry_policy(
    base: Option<f64>,
    max: Option<f64>,
    no_jitter: bool,
) -> anyhow::Result<Option<RetryPolicy>> {
    if base.is_none() && max.is_none() && !no_jitter {
        return Ok(None);
    }
    let secs = |flag: &str, v: Option<f64>, default: Duration| match v {
        None => Ok(default),
        Some(s) => Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow!("--{flag} {s}: expected a number of seconds, 0 or more")),
    };
    let d = RetryPolicy::default();
    let mut policy = RetryPolicy::exponential(
        secs("retry-base", base, d.base)?,
        secs("retry-max", max, d.max)?,
    );
    if no_jitter {
        policy = policy.without_jitter();
    }
    policy.validate("retry_policy")?;
    Ok(Some(policy))
}

/// A `--payload` value: JSON text, `@FILE`, or `-` for standard input.
fn read_payload(arg: &str) -> anyhow::Result<serde_json::Value> {
    let (text, from) = if arg == "-" {
        let text = std::io::read_to_string(std::io::stdin())
            .context("cannot read --payload from stdin")?;
        (text, "stdin".to_owned())
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --payload file `{path}`"))?;
        (text, format!("`{path}`"))
    } else {
        (arg.to_owned(), "--payload".to_owned())
    };
    serde_json::from_str(&text).with_context(|| format!("{from} is not valid JSON"))
}
