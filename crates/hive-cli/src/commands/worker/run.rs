//! `hive worker run`: the built-in worker (`shell`, `noop` and `sleep` tasks). It logs a
//! start line and one line per failed run, and with `--exec-log` records every handler
//! start in a file; Ctrl-C, SIGTERM or SIGHUP (its SSH session closed) stops it gracefully,
//! a second Ctrl-C or SIGTERM at once.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use hive_client::{TaskContext, TaskError, TaskOutput, WorkerBuilder};

use crate::signals::Interrupts;
use crate::{Context, builtin, logging, output, pipes, process_group, shell};

#[derive(Args)]
pub struct RunArgs {
    /// The worker's role, shown in the registry (`hive worker list --role`).
    #[arg(long, default_value = "worker")]
    role: String,
    /// Task types to claim (repeatable): `shell` (the default), and `noop` and `sleep`
    /// (`{"ms": N}`) for load tests.
    #[arg(long = "type")]
    types: Vec<String>,
    /// The worker's name; default `ROLE-HOST-PID-XXXX` (a random suffix, so two containers
    /// sharing a host name and PID 1 still differ). Two processes given one id act as one
    /// worker: each gives back the runs the other holds.
    #[arg(long)]
    id: Option<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// The most claims held beyond free handlers, started as handlers free up; how many
    /// follows the handlers' pace: as many as they finish in 50 ms plus an average commit,
    /// none for handlers slower than that (default 256; 0 turns it off).
    #[arg(long, value_name = "N")]
    prefetch: Option<u32>,
    /// Each claimed task's lease; heartbeats renew it (default 10: a killed worker's
    /// task is taken back within about 12 s).
    #[arg(long, default_value_t = 10)]
    lease_secs: u64,
    /// Exit 0 once no task of its types is queued (ready or waiting: for its dependencies,
    /// a start time, a retry or a paused queue) or running, here or on another worker. On
    /// exit it names the queued tasks it left and why.
    #[arg(long)]
    exit_when_idle: bool,
    /// Do not run the scheduler (every worker creates the due schedules' tasks once a
    /// second by default): for fleets where a few workers, or `hive schedule run`, do it,
    /// saving the others' queries.
    #[arg(long)]
    no_schedules: bool,
    /// Serve Prometheus metrics (`GET /metrics`) and the worker's probes (`GET /healthz`:
    /// alive, `GET /readyz`: ready; 200, or 503 naming the problem) on this address while
    /// the worker runs.
    #[arg(long, value_name = "ADDR")]
    metrics_bind: Option<std::net::SocketAddr>,
    /// Append one line per handler start to this file (created if missing): task id, run
    /// id, run number and worker id, tab-separated; for checking that each task ran.
    #[arg(long, value_name = "PATH")]
    exec_log: Option<PathBuf>,
    /// Also write each line a `shell` command prints to the worker's log (at info, with its
    /// task id and stream), as it comes; the run's log keeps it as always.
    #[arg(long)]
    log_output: bool,
    #[command(flatten)]
    intervals: Intervals,
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
    /// (their commands killed) and given back to the queue (default 10). Commands still
    /// running half-way through it, or `--timeout-grace` plus 3 s before it ends if that
    /// is later, get SIGTERM then.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    shutdown_grace: Option<Duration>,
    /// How long a run may last when its task sets no timeout; past it the command is
    /// killed and the run ends `timeout` (default: no limit).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    task_timeout: Option<Duration>,
    /// After a run's timeout or its task's cancel, how long its command has to stop after
    /// SIGTERM before it is killed (SIGKILL) (default 5); the worker waits for its handler
    /// 3 s longer, to keep what the command printed.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout_grace: Option<Duration>,
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
        worker.timeout_grace(handler_grace(self.timeout_grace()))
    }

    fn timeout_grace(&self) -> Duration {
        self.timeout_grace.unwrap_or(DEFAULT_TIMEOUT_GRACE)
    }
}

/// The grace a command told to stop has between SIGTERM and SIGKILL, unless
/// `--timeout-grace` says otherwise.
const DEFAULT_TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// What a handler told to stop may take beyond its command's kill and the pipes' last read:
/// returning the run's log.
const HANDLER_MARGIN: Duration = Duration::from_secs(1);

/// How long the runtime waits for a handler told to stop before it drops it: the command's
/// grace before SIGKILL, the pipes' read after it ([`pipes::PIPES_GRACE`]) and a margin. With
/// only the command's grace, a command that ignores SIGTERM would be dropped with its
/// handler just as it is killed, and its run would lose what the command printed.
fn handler_grace(stop_grace: Duration) -> Duration {
    stop_grace
        .saturating_add(pipes::PIPES_GRACE)
        .saturating_add(HANDLER_MARGIN)
}

/// The worker runtime's default grace, for the start line when none is given.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(ctx: &Context, a: RunArgs) -> anyhow::Result<ExitCode> {
    if a.lease_secs == 0 {
        anyhow::bail!("--lease-secs must be at least 1");
    }
    if a.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if let Some(ms) = a.intervals.heartbeat_ms
        && ms.saturating_mul(2) > a.lease_secs.saturating_mul(1000)
    {
        anyhow::bail!(
            "--heartbeat-ms {ms} is not well under --lease-secs {}: a heartbeat must come at \
             least twice per lease, or this worker's tasks expire while it runs them and \
             start again elsewhere",
            a.lease_secs
        );
    }
    let offline_after = hive_client::OpsConfig::default().heartbeat_timeout;
    if let Some(ms) = a.intervals.heartbeat_ms
        && Duration::from_millis(ms).saturating_mul(2) > offline_after
    {
        anyhow::bail!(
            "--heartbeat-ms {ms} is not well under the {} s after which a worker without a \
             heartbeat is marked offline: at most {} ms",
            offline_after.as_secs(),
            offline_after.as_millis() / 2
        );
    }
    if a.intervals.task_timeout.is_some_and(|t| t.is_zero()) {
        anyhow::bail!("--task-timeout must be at least 1: 0 would stop every run at once");
    }
    if a.intervals.poll_ms == Some(0) {
        anyhow::bail!(
            "--poll-ms must be at least 1: 0 would ask the database again at once, in a busy loop"
        );
    }
    let types = if a.types.is_empty() {
        vec![shell::SHELL.to_owned()]
    } else {
        a.types
    };
    if let Some(t) = types.iter().find(|t| !builtin::handles(t)) {
        anyhow::bail!(
            "`hive worker run` has no handler for task type `{t}`; it runs {} tasks (write a \
             worker with the SDK for other types)",
            builtin::TYPES.join(", ")
        );
    }
    let exec_log = a.exec_log.as_deref().map(ExecLog::open).transpose()?;
    let id =
        a.id.unwrap_or_else(|| hive_client::unique_worker_id(&a.role));
    // Before waiting for the database: a bad --id or a --role too long for the default id
    // is known now.
    hive_client::models::WorkerId::parse(id.clone())
        .map_err(|e| anyhow::anyhow!("--id/--role: {e}"))?;
    // From here on Ctrl-C, SIGTERM and SIGHUP are this command's to handle.
    let mut interrupts = Interrupts::install()?;
    // The probes answer before the database does: a worker waiting for it is alive (an
    // orchestrator must not restart it for waiting) and not ready; `/metrics` follows.
    let health = hive_client::HealthHandle::new();
    let metrics = match a.metrics_bind {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-bind {addr}: {e}"))?;
            let source = hive_metrics::Source::default();
            let routes = hive_metrics::router_for(source.clone())
                .merge(hive_metrics::health_router(health.clone()));
            tokio::spawn(hive_metrics::serve_router(listener, routes));
            Some(source)
        }
        None => None,
    };
    // A worker started before its database (or during an outage) waits for it.
    // Stopped before: a graceful stop like any other, with an empty report.
    let Some(client) = ctx.client_when_up(&mut interrupts).await? else {
        tracing::info!("worker {id} stopped before its database answered");
        report_stop(ctx, &id, &hive_client::WorkerReport::default(), &[])?;
        return Ok(ExitCode::SUCCESS);
    };
    let grace = a.intervals.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE);
    let worker = client
        .worker(id.clone())
        .role(a.role.clone())
        .capabilities(types.clone())
        .task_types(types.clone())
        .concurrency(a.concurrency)
        .lease(Duration::from_secs(a.lease_secs))
        .exit_when_idle(a.exit_when_idle)
        .run_schedules(!a.no_schedules)
        .handle_signals(false);
    let worker = match a.prefetch {
        Some(n) => worker.prefetch(n),
        None => worker,
    };
    let worker = a.intervals.apply(worker).health(health);
    if let Some(source) = metrics {
        // One worker of many: its own runs, which Prometheus adds up across the fleet.
        let counting = hive_metrics::Counting::ThisProcess;
        source
            .watch(client.clone(), hive_metrics::Metrics::new()?, counting)
            .await;
    }
    // Orphans of the commands come to this process when it is PID 1 (a container without
    // an init); reaped, they do not pile up as zombies.
    tokio::spawn(process_group::reap_orphans_forever());
    // What a worker that died outright on this host left running, now and every few
    // seconds: its tasks run again elsewhere once their leases expire.
    tokio::spawn(crate::orphans::kill_orphans_forever());
    // And what this worker leaves if it dies outright, at once, by a child that outlives it.
    crate::orphans::start_guard();
    let (signalled, forced) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    tokio::spawn(stop_on_interrupts(
        interrupts,
        worker.shutdown_handle(),
        grace,
        signalled.clone(),
        forced.clone(),
    ));
    tracing::info!(
        "worker {id} starting: role {}, types {}, concurrency {}, lease {}s, shutdown grace {:?}",
        a.role,
        types.join(","),
        a.concurrency,
        a.lease_secs,
        grace
    );
    let options = shell::Options {
        stop_grace: a.intervals.timeout_grace(),
        log_output: a.log_output,
    };
    let report = worker
        .run(move |ctx| logged(ctx, exec_log.clone(), options))
        .await;
    // The last commands' escaped processes, before the sweeper thread dies with the process.
    process_group::sweep_now();
    let report = report?;
    // A worker meant to finish the queue names the tasks it leaves and why they were not its
    // to run (on a signal: why it was still waiting). Only a note: a failed read spoils
    // neither the worker's exit status nor its report.
    let left = if a.exit_when_idle {
        match client.list_queues().await {
            Ok(queues) => {
                let left = left_queued(&queues, &types, signalled.load(Ordering::SeqCst));
                none_ready_left(&client, left).await
            }
            Err(e) => {
                tracing::warn!("could not read the queues the worker left: {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    report_stop(ctx, &id, &report, &left)?;
    for l in &left {
        logging::eprint_line(&format!("note: {}", l.explain(&types)));
    }
    // Stopped at once by a second Ctrl-C: as interrupted.
    Ok(if forced.load(Ordering::SeqCst) {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a stopped worker did: a line on stderr, and with `--json` its report on stdout.
fn report_stop(
    ctx: &Context,
    id: &str,
    report: &hive_client::WorkerReport,
    left: &[Left],
) -> anyhow::Result<()> {
    logging::eprint_line(&format!(
        "worker {id} stopped: {} completed, {} failed, {} retried, {} stale, {} released",
        report.completed, report.failed, report.retried, report.stale, report.released
    ));
    if ctx.json {
        output::json(&serde_json::json!({
            "worker": id,
            "completed": report.completed,
            "failed": report.failed,
            "retried": report.retried,
            "stale": report.stale,
            "released": report.released,
            "left_queued": left,
        }))?;
    }
    Ok(())
}

/// Queued tasks an idle worker left, by type, and why it did not run them.
#[derive(Debug, serde::Serialize)]
struct Left {
    task_type: String,
    queued: u64,
    why: Why,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Why {
    /// Not one of the worker's types.
    OtherType,
    /// One of its types, paused.
    Paused,
    /// One of its types, waiting for dependencies, a start time or room under a limit.
    NotReady,
    /// One of its types, left when a signal stopped the worker (ready or not).
    Stopped,
}

/// `left` with a type the worker was stopped before running said to be not ready when none
/// of its queued tasks is (a read per such type; a failed one leaves it as it is).
async fn none_ready_left(client: &hive_client::Client, mut left: Vec<Left>) -> Vec<Left> {
    for l in left.iter_mut().filter(|l| matches!(l.why, Why::Stopped)) {
        let ready = hive_client::store::TaskFilter {
            status: Some(hive_client::TaskStatus::Queued),
            task_type: Some(l.task_type.clone()),
            ready_only: true,
            limit: Some(1),
            ..Default::default()
        };
        if client.list_tasks(&ready).await.is_ok_and(|r| r.is_empty()) {
            l.why = Why::NotReady;
        }
    }
    left
}

/// The queues with tasks left when a worker of `types` found nothing to run, or was
/// `signalled` to stop before it did.
fn left_queued(queues: &[hive_client::QueueInfo], types: &[String], signalled: bool) -> Vec<Left> {
    queues
        .iter()
        .filter(|q| q.queued > 0)
        .map(|q| Left {
            task_type: q.task_type.clone(),
            queued: q.queued,
            why: if !types.contains(&q.task_type) {
                Why::OtherType
            } else if q.paused {
                Why::Paused
            } else if signalled {
                Why::Stopped
            } else {
                Why::NotReady
            },
        })
        .collect()
}

impl Left {
    fn explain(&self, types: &[String]) -> String {
        let (n, t) = (self.queued, &self.task_type);
        let tasks = if n == 1 { "task" } else { "tasks" };
        match self.why {
            Why::OtherType if builtin::handles(t) => format!(
                "{n} queued {tasks} of type `{t}` left: this worker takes {} \
                 (`--type {t}` to take them too)",
                types.join(", ")
            ),
            Why::OtherType => format!(
                "{n} queued {tasks} of type `{t}` left: `hive worker run` runs only {} tasks; \
                 a worker for `{t}` is written with the SDK (or the tasks meant another type)",
                builtin::TYPES.join(", ")
            ),
            Why::Paused => format!(
                "{n} queued {tasks} of type `{t}` left: the queue is paused \
                 (`hive queue resume {t}`)"
            ),
            Why::NotReady => format!(
                "{n} queued {tasks} of type `{t}` left, not started: waiting for their \
                 dependencies, their start time or room under a limit (`hive task list \
                 --type {t} --status queued`, `hive limit list`)"
            ),
            Why::Stopped => format!(
                "{n} queued {tasks} of type `{t}` left: the worker was stopped before it ran \
                 them"
            ),
        }
    }
}

/// How long a worker stopping at once (a second Ctrl-C) may take to give back its tasks
/// and unregister before the process exits anyway: a database that does not answer must
/// not keep it.
const AT_ONCE_WAIT: Duration = Duration::from_secs(3);

/// The first Ctrl-C, SIGTERM or SIGHUP stops the worker gracefully (no new claims; running
/// tasks get the grace, then are given back); the second Ctrl-C or SIGTERM kills every
/// running command and stops the worker at once, giving their tasks back to the queue; a
/// third, or [`AT_ONCE_WAIT`] without the database answering, exits without waiting,
/// leaving the tasks to come back when their leases expire.
async fn stop_on_interrupts(
    mut interrupts: Interrupts,
    worker: hive_client::ShutdownHandle,
    grace: Duration,
    signalled: Arc<AtomicBool>,
    forced: Arc<AtomicBool>,
) {
    interrupts.next().await;
    signalled.store(true, Ordering::SeqCst);
    tracing::info!(
        "stopping: no new tasks; running ones have {grace:?} to finish (Ctrl-C again to stop \
         at once)"
    );
    worker.shutdown();
    interrupts.next().await;
    forced.store(true, Ordering::SeqCst);
    // The runtime drops the running handlers, which kills their commands' process groups;
    // a command killed here first would fail its run, its attempt counted.
    worker.shutdown_now();
    logging::eprint_line(
        "stopping at once: running commands killed, their tasks given back to the queue \
         (Ctrl-C again to exit without waiting for the database)",
    );
    tokio::select! {
        () = interrupts.next() => {}
        () = tokio::time::sleep(AT_ONCE_WAIT) => {}
    }
    process_group::kill_all();
    // Logged straight to stderr: the exit below does not wait for the log queue.
    logging::eprint_line(
        "exiting without waiting for the database: tasks not given back return to the \
         queue when their leases expire",
    );
    std::process::exit(130);
}

/// `--exec-log`: one line per handler start, shared by every handler of the worker.
#[derive(Debug)]
struct ExecLog {
    file: std::fs::File,
    path: PathBuf,
}

impl ExecLog {
    fn open(path: &std::path::Path) -> anyhow::Result<Arc<ExecLog>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("--exec-log {}: {e}", path.display()))?;
        Ok(Arc::new(ExecLog {
            file,
            path: path.to_owned(),
        }))
    }

    /// Appends the run's line with one `write` on a file opened for appending, so the lines
    /// of handlers running at once (or of workers sharing the file) never interleave. It is
    /// not synced: the record is of what ran, for a check after the workers stopped.
    fn record(&self, ctx: &TaskContext) -> Result<(), TaskError> {
        let line = format!(
            "{}\t{}\t{}\t{}\n",
            ctx.task.id, ctx.run.id, ctx.run.run_number, ctx.run.worker_id
        );
        (&self.file).write_all(line.as_bytes()).map_err(|e| {
            TaskError::new(format!(
                "cannot record the run in --exec-log {}: {e}",
                self.path.display()
            ))
        })
    }
}

/// Runs a task with the built-in handler of its type, after recording it in the exec log,
/// and logs each failed run at `info` with its task, attempt and the first line of its
/// error (a run told to stop, as stopped).
async fn logged(
    ctx: TaskContext,
    exec_log: Option<Arc<ExecLog>>,
    options: shell::Options,
) -> Result<TaskOutput, TaskError> {
    let task = ctx.task.id;
    let title = output::escape(&ctx.task.title).into_owned();
    let (attempt, runs_allowed) = (ctx.task.attempts, ctx.task.max_retries.saturating_add(1));
    let run = ctx.run.run_number;
    let recorded = exec_log.as_ref().map_or(Ok(()), |log| log.record(&ctx));
    let result = match recorded {
        Ok(()) => builtin::handle(ctx, options).await,
        Err(e) => Err(e),
    };
    match &result {
        // Told to stop, it did not fail: the run's record says why it ended (`timeout`, or
        // its task's cancellation), and a cancelled task counts no attempt against it.
        Err(e) if e.message == builtin::STOPPED => tracing::info!(
            "task {task} ({title}) stopped, run {run}: its timeout passed or it was cancelled"
        ),
        Err(e) => tracing::info!(
            "task {task} ({title}) failed, run {run}, attempt {attempt} of {runs_allowed}: {}",
            output::escape(&output::error_cell(Some(&e.message), 200))
        ),
        Ok(_) => {}
    }
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_handler_outlasts_its_commands_kill_and_last_read() {
        let s = Duration::from_secs;
        assert_eq!(super::handler_grace(s(5)), s(8));
        assert_eq!(super::handler_grace(Duration::MAX), Duration::MAX);
    }
}
