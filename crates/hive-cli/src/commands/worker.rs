//! `hive worker …`

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use hive_client::WorkerBuilder;

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
        /// Each claimed task's lease; heartbeats renew it (default 10: a killed worker's
        /// task is taken back within about 12 s).
        #[arg(long, default_value_t = 10)]
        lease_secs: u64,
        /// Exit 0 once nothing is ready, running or waiting to retry.
        #[arg(long)]
        exit_when_idle: bool,
        /// Serve Prometheus metrics (`GET /metrics`) on this address while the worker runs.
        #[arg(long, value_name = "ADDR")]
        metrics_bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        intervals: Intervals,
    },
}

/// The worker's background intervals; each defaults to the runtime's default.
#[derive(clap::Args)]
pub struct Intervals {
    /// How often to heartbeat, extending held leases (default: a third of the lease).
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// How often to take back expired leases (default 2000).
    #[arg(long, value_name = "MS")]
    reap_interval_ms: Option<u64>,
    /// Longest wait between claims when no wake-up arrives (default 1000).
    #[arg(long, value_name = "MS")]
    poll_ms: Option<u64>,
    /// After Ctrl-C or SIGTERM, how long running tasks may finish before they are stopped
    /// (their commands killed) and given back to the queue (default 10).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    shutdown_grace: Option<Duration>,
    /// How long a run may last when its task sets no timeout; past it the command is
    /// killed and the run ends `timeout` (default: no limit).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    task_timeout: Option<Duration>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("`{s}` is not a number of seconds"))
}

impl Intervals {
    fn apply(&self, mut worker: WorkerBuilder) -> WorkerBuilder {
        if let Some(ms) = self.heartbeat_ms {
            worker = worker.heartbeat_interval(Duration::from_millis(ms));
        }
        if let Some(ms) = self.reap_interval_ms {
            worker = worker.reap_interval(Duration::from_millis(ms));
        }
        if let Some(ms) = self.poll_ms {
            worker = worker.poll_interval(Duration::from_millis(ms));
        }
        if let Some(grace) = self.shutdown_grace {
            worker = worker.shutdown_grace(grace);
        }
        if let Some(limit) = self.task_timeout {
            worker = worker.task_timeout(limit);
        }
        worker
    }
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
                            // Why it is in that status, when it was said (`error: disk full`).
                            match &w.status_reason {
                                Some(r) => {
                                    format!("{}: {}", w.status, output::error_cell(Some(r), 40))
                                }
                                None => w.status.to_string(),
                            },
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
            metrics_bind,
            intervals,
        } => {
            if lease_secs == 0 {
                anyhow::bail!("--lease-secs must be at least 1");
            }
            if let Some(ms) = intervals.heartbeat_ms
                && ms.saturating_mul(2) > lease_secs.saturating_mul(1000)
            {
                anyhow::bail!(
                    "--heartbeat-ms {ms} is not well under --lease-secs {lease_secs}: a heartbeat \
                     must come at least twice per lease, or this worker's tasks expire while it \
                     runs them and start again elsewhere"
                );
            }
            let types = if types.is_empty() {
                vec![shell::SHELL.to_owned()]
            } else {
                types
            };
            if let Some(t) = types.iter().find(|t| t.as_str() != shell::SHELL) {
                anyhow::bail!(
                    "`hive worker run` has no handler for task type `{t}`; it runs `{}` tasks \
                     (write a worker with the SDK for other types)",
                    shell::SHELL
                );
            }
            let id = id.unwrap_or_else(|| format!("{role}-{}-{}", hostname(), std::process::id()));
            // A worker started before its database (or during an outage) waits for it.
            // A worker serves a database that exists: it creates neither the file nor the
            // schema, so a wrong path fails at once instead of waiting on an empty database.
            let options = hive_client::ConnectOptions {
                schema: hive_client::store::SchemaPolicy::Existing,
                ..Default::default()
            };
            let client = hive_client::ConnectRetry::default()
                .connect_with(&ctx.database_url, &options, Default::default())
                .await?;
            if let Some(addr) = metrics_bind {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("--metrics-bind {addr}: {e}"))?;
                let metrics = hive_metrics::Metrics::new()?;
                metrics.watch(client.clone()).await?;
                tokio::spawn(hive_metrics::serve(listener, client.clone(), metrics));
            }
            let worker = client
                .worker(id.clone())
                .role(role)
                .capabilities(types.clone())
                .task_types(types)
                .concurrency(concurrency)
                .lease(Duration::from_secs(lease_secs))
                .exit_when_idle(exit_when_idle);
            let report = intervals.apply(worker).run(shell::handle).await?;
            crate::logging::eprint_line(&format!(
                "worker {id} stopped: {} completed, {} failed, {} retried, {} stale, {} released",
                report.completed, report.failed, report.retried, report.stale, report.released
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}
