//! `hive worker …`

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::{Context, output, shell};

#[derive(Subcommand)]
pub enum WorkerCommand {
    /// List registered workers.
    List {
        #[arg(long)]
        role: Option<String>,
    },
    /// Run a worker with the built-in `shell` handler until Ctrl-C (or idle).
    Run {
        #[arg(long)]
        role: String,
        /// Task types to claim (repeatable); default `shell`.
        #[arg(long = "type")]
        types: Vec<String>,
        /// The worker's name; default `ROLE-HOST-PID`.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        #[arg(long, default_value_t = 30)]
        lease_secs: u64,
        /// Exit 0 once nothing is ready, running or waiting to retry.
        #[arg(long)]
        exit_when_idle: bool,
    },
}

pub async fn run(ctx: &Context, cmd: WorkerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkerCommand::List { role } => {
            let client = ctx.client().await?;
            let workers = client.list_workers(role.as_deref()).await?;
            if ctx.json {
                output::json(&workers)?;
            } else {
                output::table(
                    ["ID", "ROLE", "STATUS", "LAST HEARTBEAT", "CAPABILITIES"],
                    workers.iter().map(|w| {
                        [
                            w.id.to_string(),
                            w.role.clone(),
                            w.status.to_string(),
                            w.last_heartbeat.format("%Y-%m-%d %H:%M:%S").to_string(),
                            w.capabilities.join(","),
                        ]
                    }),
                );
            }
        }
        WorkerCommand::Run {
            role,
            types,
            id,
            concurrency,
            lease_secs,
            exit_when_idle,
        } => {
            if lease_secs == 0 {
                anyhow::bail!("--lease-secs must be at least 1");
            }
            let types = if types.is_empty() {
                vec![shell::SHELL.to_owned()]
            } else {
                types
            };
            let id = id.unwrap_or_else(|| format!("{role}-{}-{}", hostname(), std::process::id()));
            let client = ctx.client().await?;
            let report = client
                .worker(id.clone())
                .role(role)
                .capabilities(types.clone())
                .task_types(types)
                .concurrency(concurrency)
                .lease(Duration::from_secs(lease_secs))
                .exit_when_idle(exit_when_idle)
                .run(shell::handle)
                .await?;
            eprintln!(
                "worker {id} stopped: {} completed, {} failed, {} retried, {} stale, {} released",
                report.completed, report.failed, report.retried, report.stale, report.released
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}
