//! `hive worker …`: list the registry (a worker whose heartbeat is stale shows as `stale`),
//! remove a worker, or run one.

use std::collections::HashSet;
use std::process::ExitCode;

use clap::Subcommand;
use hive_client::Worker;
use serde::Serialize;

use crate::{Context, output};

mod run;

#[derive(Subcommand)]
pub enum WorkerCommand {
    /// List registered workers; an active or idle worker whose heartbeat is older than the
    /// heartbeat timeout (30 s) shows as `stale`, and `hive status` does not count it.
    List {
        /// Only workers of this role.
        #[arg(long)]
        role: Option<String>,
    },
    /// Run a worker with the built-in handlers (`shell`; `noop` and `sleep` for load tests)
    /// until Ctrl-C or SIGTERM (or idle); a second Ctrl-C stops it at once.
    Run(Box<run::RunArgs>),
    /// Remove a worker from the registry; the tasks it held go back to the queue. A worker
    /// whose heartbeat is fresh is refused unless --force.
    Unregister {
        /// The worker's id.
        id: String,
        /// Remove it even though its heartbeat is fresh (its runs then end stale).
        #[arg(long)]
        force: bool,
    },
    /// Remove the workers silent for longer than --silent-for (and than the heartbeat
    /// timeout, 30 s): processes that died without unregistering. Nothing is given back:
    /// one still holding a run (its lease holding or lapsed) is kept until the reaper takes
    /// the run back, counting its attempt.
    Prune {
        /// Only workers whose last heartbeat is older than this: 30s, 15m, 12h, 7d, 2w, or
        /// several added up (1d12h).
        #[arg(long, value_name = "AGE", value_parser = crate::args::parse_age, default_value = "1d")]
        silent_for: std::time::Duration,
    },
    /// Started by `worker run` as its child: once that worker is gone, however it died, its
    /// end of this process's stdin closes, and what its commands left running is killed.
    #[command(hide = true)]
    Guard,
}

/// A worker as listed: its row and whether its heartbeat is fresh.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    worker: &'a Worker,
    alive: bool,
}

impl Listed<'_> {
    /// Its status, or `stale` for a worker that says it takes work but has gone silent.
    /// Its status (`stale` when it claims to be active but is silent), with why it is in
    /// it when that was said (`error: disk full`).
    fn status(&self) -> String {
        if self.worker.is_active() && !self.alive {
            return "stale".into();
        }
        match &self.worker.status_reason {
            Some(r) => format!(
                "{}: {}",
                self.worker.status,
                output::error_cell(Some(r), 40)
            ),
            None => self.worker.status.to_string(),
        }
    }
}

pub async fn run(ctx: &Context, cmd: WorkerCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkerCommand::List { role } => list(ctx, role.as_deref()).await?,
        WorkerCommand::Run(a) => return run::run(ctx, *a).await,
        WorkerCommand::Unregister { id, force } => unregister(ctx, &id, force).await?,
        WorkerCommand::Prune { silent_for } => prune(ctx, silent_for).await?,
        WorkerCommand::Guard => crate::orphans::guard().await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Context, role: Option<&str>) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let workers = client.list_workers(role).await?;
    // The one rule for "alive", the one `hive status` counts by.
    let alive: HashSet<_> = client
        .get_active_workers(role)
        .await?
        .into_iter()
        .map(|w| w.id)
        .collect();
    let listed: Vec<Listed<'_>> = workers
        .iter()
        .map(|worker| Listed {
            worker,
            alive: alive.contains(&worker.id),
        })
        .collect();
    if ctx.json {
        return output::json(&listed);
    }
    output::table(
        ["ID", "ROLE", "STATUS", "LAST HEARTBEAT", "CAPABILITIES"],
        listed.iter().map(|l| {
            [
                l.worker.id.to_string(),
                l.worker.role.clone(),
                l.status(),
                l.worker
                    .last_heartbeat
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string(),
                l.worker.capabilities.join(","),
            ]
        }),
    );
    Ok(())
}

async fn unregister(ctx: &Context, id: &str, force: bool) -> anyhow::Result<()> {
    let worker_id = hive_client::WorkerId::parse(id)?;
    let client = ctx.client().await?;
    if !force {
        let alive = client.get_active_workers(None).await?;
        if alive.iter().any(|w| w.id == worker_id) {
            anyhow::bail!(
                "worker `{worker_id}` is alive (its heartbeat is fresh); stop it instead, or \
                 pass --force to remove it anyway"
            );
        }
        // Silent, yet maybe cut off rather than dead: a run whose lease holds may still be
        // running there, and released it would run twice at once.
        let now = client.store().now().await?;
        let leased = client
            .running_runs(&worker_id)
            .await?
            .into_iter()
            .filter_map(|r| r.lease_expires_at)
            .filter(|until| *until > now)
            .max();
        if let Some(until) = leased {
            anyhow::bail!(
                "worker `{worker_id}` holds runs whose leases hold until {} (it may be cut \
                 off, not dead); wait for them to lapse (the reaper then takes them back), or \
                 pass --force to give them back now",
                until.format("%Y-%m-%d %H:%M:%S UTC")
            );
        }
    }
    let Some(requeued) = client.remove_worker(worker_id.as_str()).await? else {
        anyhow::bail!("worker `{worker_id}` not found");
    };
    output::report(
        ctx.json,
        &serde_json::json!({ "id": worker_id, "requeued": requeued }),
        format_args!(
            "worker {worker_id} unregistered; {} task(s) back in the queue",
            requeued.len()
        ),
    )
}

async fn prune(ctx: &Context, silent_for: std::time::Duration) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let removed = client.prune_workers(silent_for).await?;
    output::report(
        ctx.json,
        &serde_json::json!({ "removed": removed }),
        format_args!("{} silent worker(s) removed", removed.len()),
    )
}
