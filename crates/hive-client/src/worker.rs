//! The worker runtime: turns an async handler into a worker that registers, heartbeats,
//! claims tasks, runs them with bounded concurrency, reports outcomes in batches, reaps
//! expired leases, and shuts down gracefully.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hive_models::{Json, Run, Task, TaskStatus, WorkerId, WorkerStatus};
use hive_ops::store::{ChangeKind, Finished, Outcome, RunOutcome, TaskFilter, WorkerRegistration};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::{Client, Error, Result};

/// What a handler gets: the claimed task and the run it executes as.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task as claimed (status `in_progress`).
    pub task: Task,
    /// The run this attempt executes as; its id is the lease token.
    pub run: Run,
    client: Client,
}

impl TaskContext {
    /// The client the worker runs on, for handlers that create follow-up tasks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Extends this run's lease now (heartbeats already do it periodically).
    pub async fn extend_lease(&self, lease: Duration) -> Result<()> {
        self.client.extend_lease(self.run.id, lease).await?;
        Ok(())
    }
}

/// A handler's success: an optional result stored on the task and run, and an output log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutput {
    /// Stored as the task's and the run's result.
    pub result: Option<Json>,
    /// Stored as the run's output log.
    pub log: Option<String>,
}

impl From<()> for TaskOutput {
    fn from(_: ()) -> Self {
        TaskOutput::default()
    }
}

impl From<Json> for TaskOutput {
    fn from(result: Json) -> Self {
        TaskOutput {
            result: Some(result),
            log: None,
        }
    }
}

impl From<Option<Json>> for TaskOutput {
    fn from(result: Option<Json>) -> Self {
        TaskOutput { result, log: None }
    }
}

/// A handler's failure. Retryable failures are retried with backoff until the task's
/// `max_retries`; permanent ones fail the task at once.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// Stored as the run's error message and the task's last error.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Stored as the run's output log.
    pub log: Option<String>,
}

impl TaskError {
    /// A retryable failure.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
            log: None,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskError {
            retryable: false,
            ..Self::new(message)
        }
    }

    /// Attaches the output produced before the failure.
    pub fn with_log(mut self, log: impl Into<String>) -> Self {
        self.log = Some(log.into());
        self
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::new(e.to_string())
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Something that runs tasks. Implemented for every
/// `Fn(TaskContext) -> impl Future<Output = Result<impl Into<TaskOutput>, TaskError>>`.
pub trait Handler: Send + Sync + 'static {
    /// Runs one task.
    fn call(&self, ctx: TaskContext) -> BoxFuture<std::result::Result<TaskOutput, TaskError>>;
}

impl<F, Fut, R> Handler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
    R: Into<TaskOutput>,
{
    fn call(&self, ctx: TaskContext) -> BoxFuture<std::result::Result<TaskOutput, TaskError>> {
        let fut = self(ctx);
        Box::pin(async move { fut.await.map(Into::into) })
    }
}

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed for good.
    pub failed: u64,
    /// Failed attempts that were requeued with backoff.
    pub retried: u64,
    /// Outcomes rejected because the task was taken back (lease expired) or cancelled.
    pub stale: u64,
    /// Tasks given back to the queue at shutdown.
    pub released: u64,
}

#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    stale: AtomicU64,
    released: AtomicU64,
}

impl Counters {
    fn report(&self) -> WorkerReport {
        WorkerReport {
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
        }
    }
}

/// Stops a running worker from another task: claiming stops at once; in-flight tasks get
/// the grace period to finish, then are released.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Asks the worker to stop.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// Configures and runs a worker; from [`Client::worker`].
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    client: Client,
    id: String,
    role: String,
    capabilities: Vec<String>,
    task_types: Vec<String>,
    concurrency: u32,
    lease: Duration,
    heartbeat_interval: Option<Duration>,
    reap_interval: Duration,
    poll_interval: Duration,
    shutdown_grace: Duration,
    exit_when_idle: bool,
    handle_signals: bool,
    shutdown: watch::Sender<bool>,
}

impl Client {
    /// A worker named `id` on this client's store; configure it, then [`WorkerBuilder::run`].
    pub fn worker(&self, id: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            client: self.clone(),
            id: id.into(),
            role: "worker".into(),
            capabilities: Vec::new(),
            task_types: Vec::new(),
            concurrency: 1,
            lease: Duration::from_secs(30),
            heartbeat_interval: None,
            reap_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            exit_when_idle: false,
            handle_signals: true,
            shutdown: watch::channel(false).0,
        }
    }
}

impl WorkerBuilder {
    /// The worker's role, shown in the registry (default `worker`).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// Capabilities recorded in the registry.
    pub fn capabilities<I: IntoIterator<Item = S>, S: Into<String>>(mut self, caps: I) -> Self {
        self.capabilities = caps.into_iter().map(Into::into).collect();
        self
    }

    /// Only claim tasks of these types (any type when empty).
    pub fn task_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.task_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Handler calls running at once (at least 1).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Each claimed task's lease; heartbeats extend it while the worker lives.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often to heartbeat (default: a third of the lease, so two beats can be missed).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = Some(d);
        self
    }

    /// How often this worker runs the reaper.
    pub fn reap_interval(mut self, d: Duration) -> Self {
        self.reap_interval = d;
        self
    }

    /// Longest wait between claims when no wake-up arrives (the polling fallback).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long in-flight tasks may run after shutdown before they are released.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Stop once nothing of this worker's types is queued, running or waiting to retry.
    pub fn exit_when_idle(mut self, yes: bool) -> Self {
        self.exit_when_idle = yes;
        self
    }

    /// Whether Ctrl-C and SIGTERM stop the worker gracefully (default true).
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
        self
    }

    /// A handle that stops this worker when it runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until shutdown (signal, handle, or idle with `exit_when_idle`), then releases
    /// what it still holds and unregisters.
    pub async fn run<H: Handler>(self, handler: H) -> Result<WorkerReport> {
        let id = WorkerId::parse(&self.id)?;
        let runtime = Runtime::start(self, id, Arc::new(handler)).await?;
        runtime.run().await
    }
}

/// One handler's outcome, on its way to the batching completer.
struct Done {
    outcome: RunOutcome,
}

struct Runtime {
    cfg: WorkerBuilder,
    id: WorkerId,
    handler: Arc<dyn Handler>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

impl Runtime {
    async fn start(cfg: WorkerBuilder, id: WorkerId, handler: Arc<dyn Handler>) -> Result<Runtime> {
        let stop = cfg.shutdown.subscribe();
        Ok(Runtime {
            cfg,
            id,
            handler,
            counters: Arc::default(),
            wake: Arc::new(Notify::new()),
            stop,
        })
    }

    fn registration(&self) -> WorkerRegistration {
        WorkerRegistration {
            id: self.id.clone(),
            role: self.cfg.role.clone(),
            capabilities: self.cfg.capabilities.clone(),
            metadata: serde_json::json!({
                "pid": std::process::id(),
                "concurrency": self.cfg.concurrency,
                "task_types": self.cfg.task_types,
            }),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Registers, retrying with capped backoff while the store is unreachable.
    async fn register(&mut self) -> Result<()> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .cfg
                .client
                .register_worker_with(&self.registration())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e @ hive_ops::Error::Store(_)) => {
                    tracing::warn!(worker = %self.id, error = %e, retry_in = ?delay, "cannot register; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => return Err(Error::Ops(e)),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn run(mut self) -> Result<WorkerReport> {
        self.register().await?;
        let mut background = JoinSet::new();
        self.spawn_wakeups(&mut background).await;
        self.spawn_heartbeat(&mut background);
        self.spawn_reaper(&mut background);
        if self.cfg.handle_signals {
            let stop = self.cfg.shutdown.clone();
            background.spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Done>();
        let completer = tokio::spawn(complete_batches(
            self.cfg.client.clone(),
            done_rx,
            self.counters.clone(),
            self.wake.clone(),
        ));
        let result = self.claim_loop(done_tx).await;
        // The completer drains every outcome before exiting, so nothing finished is lost.
        let _ = completer.await;
        background.abort_all();
        if let Err(e) = self.cfg.client.unregister_worker(self.id.as_str()).await {
            tracing::warn!(worker = %self.id, error = %e, "unregister failed; the reaper will mark this worker offline");
        }
        result.map(|()| self.counters.report())
    }

    async fn spawn_wakeups(&self, set: &mut JoinSet<()>) {
        let Ok(mut rx) = self.cfg.client.store().subscribe().await else {
            return;
        };
        let wake = self.wake.clone();
        set.spawn(async move {
            loop {
                match rx.recv().await {
                    // New tasks, requeues and completions (which unblock dependents) may
                    // all make something claimable.
                    Ok(n) if matches!(n.kind, ChangeKind::TaskCreated | ChangeKind::TaskStatus) => {
                        wake.notify_one()
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => wake.notify_one(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    fn spawn_heartbeat(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        let id = self.id.clone();
        let registration = self.registration();
        let every = self
            .cfg
            .heartbeat_interval
            .unwrap_or(self.cfg.lease / 3)
            .max(Duration::from_millis(10));
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match client
                    .update_worker_heartbeat(id.as_str(), Some(WorkerStatus::Active))
                    .await
                {
                    Ok(true) => {}
                    // Someone unregistered or pruned this worker: register again.
                    Ok(false) => {
                        let _ = client.register_worker_with(&registration).await;
                    }
                    Err(e) => tracing::warn!(worker = %id, error = %e, "heartbeat failed"),
                }
            }
        });
    }

    fn spawn_reaper(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        let every = self.cfg.reap_interval.max(Duration::from_millis(10));
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match client.reap().await {
                    Ok(r) if !r.is_empty() => tracing::info!(
                        requeued = r.requeued.len(),
                        failed = r.failed.len(),
                        offline = r.offline_workers.len(),
                        "reaped"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reaper failed"),
                }
            }
        });
    }

    async fn claim_loop(&mut self, done_tx: mpsc::UnboundedSender<Done>) -> Result<()> {
        let mut running: JoinSet<()> = JoinSet::new();
        let mut held: std::collections::HashMap<tokio::task::Id, hive_models::RunId> =
            Default::default();
        let mut error_delay = Duration::from_millis(50);
        while !self.stopping() {
            while let Some(joined) = running.try_join_next_with_id() {
                held.remove(&joined_id(joined));
            }
            let free = self.cfg.concurrency.saturating_sub(running.len() as u32);
            let mut claimed = 0;
            if free > 0 {
                match self
                    .cfg
                    .client
                    .claim_tasks(&self.id, &self.cfg.task_types, free, self.cfg.lease)
                    .await
                {
                    Ok(claims) => {
                        error_delay = Duration::from_millis(50);
                        claimed = claims.len();
                        for c in claims {
                            let run_id = c.run.id;
                            let handle = running.spawn(run_one(
                                self.cfg.client.clone(),
                                self.handler.clone(),
                                c,
                                done_tx.clone(),
                            ));
                            held.insert(handle.id(), run_id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(worker = %self.id, error = %e, "claim failed; backing off");
                        tokio::time::sleep(error_delay).await;
                        error_delay = (error_delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if claimed > 0 && claimed == free as usize {
                // Full: wait for a slot.
                tokio::select! {
                    Some(j) = running.join_next_with_id() => {
                        held.remove(&joined_id(j));
                    }
                    _ = self.stop.changed() => {}
                }
                continue;
            }
            if claimed > 0 {
                continue;
            }
            if running.is_empty() && self.cfg.exit_when_idle && self.nothing_left().await? {
                break;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                Some(j) = running.join_next_with_id(), if !running.is_empty() => {
                    held.remove(&joined_id(j));
                }
                _ = self.stop.changed() => {}
            }
        }
        self.drain(running, held).await;
        Ok(())
    }

    /// After shutdown: let in-flight tasks finish within the grace period, release the rest.
    async fn drain(
        &self,
        mut running: JoinSet<()>,
        mut held: std::collections::HashMap<tokio::task::Id, hive_models::RunId>,
    ) {
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_grace;
        while !running.is_empty() {
            match tokio::time::timeout_at(deadline, running.join_next_with_id()).await {
                Ok(Some(j)) => {
                    held.remove(&joined_id(j));
                }
                Ok(None) => break,
                Err(_) => {
                    running.abort_all();
                    break;
                }
            }
        }
        let runs: Vec<_> = held.into_values().collect();
        if runs.is_empty() {
            return;
        }
        match self.cfg.client.release_runs(&runs).await {
            Ok(released) => {
                self.counters
                    .released
                    .fetch_add(released.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(worker = %self.id, error = %e, "release failed; the leases will expire")
            }
        }
    }

    /// Whether nothing of this worker's types is queued (ready, delayed or waiting on
    /// dependencies), assigned or in progress anywhere.
    async fn nothing_left(&self) -> Result<bool> {
        let types: Vec<Option<String>> = if self.cfg.task_types.is_empty() {
            vec![None]
        } else {
            self.cfg.task_types.iter().cloned().map(Some).collect()
        };
        for task_type in types {
            for status in [
                TaskStatus::Queued,
                TaskStatus::Assigned,
                TaskStatus::InProgress,
            ] {
                let filter = TaskFilter {
                    status: Some(status),
                    task_type: task_type.clone(),
                    limit: Some(1),
                    ..Default::default()
                };
                if !self.cfg.client.list_tasks(&filter).await?.is_empty() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

fn joined_id(
    j: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) -> tokio::task::Id {
    match j {
        Ok((id, ())) => id,
        Err(e) => e.id(),
    }
}

/// Runs one claimed task; a panicking handler fails its task, not the worker.
async fn run_one(
    client: Client,
    handler: Arc<dyn Handler>,
    claim: hive_ops::Claimed,
    done: mpsc::UnboundedSender<Done>,
) {
    let retry = client.config().retry;
    let run_id = claim.run.id;
    let ctx = TaskContext {
        task: claim.task,
        run: claim.run,
        client,
    };
    let fut = handler.call(ctx);
    let outcome = match tokio::spawn(fut).await {
        Ok(Ok(out)) => RunOutcome {
            run_id,
            outcome: Outcome::Success { result: out.result },
            output_log: out.log,
        },
        Ok(Err(e)) => RunOutcome {
            run_id,
            outcome: Outcome::Failure {
                error: e.message,
                retry: e.retryable.then_some(retry),
            },
            output_log: e.log,
        },
        Err(join) => {
            let message = if join.is_panic() {
                panic_message(join.into_panic())
            } else {
                "handler was cancelled".into()
            };
            RunOutcome {
                run_id,
                outcome: Outcome::Failure {
                    error: format!("handler panicked: {message}"),
                    retry: Some(retry),
                },
                output_log: None,
            }
        }
    };
    let _ = done.send(Done { outcome });
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Sends finished runs to the store in batches: whatever has arrived while the previous
/// batch was committing goes in the next transaction. A failed commit is retried, so an
/// outcome is never dropped while the worker lives.
async fn complete_batches(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<Done>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first.outcome];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(d) => batch.push(d.outcome),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        let reports = loop {
            match client.finish_runs(batch.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, batch = batch.len(), "completing runs failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        for r in reports {
            let c = match r.finished {
                Finished::Completed => &counters.completed,
                Finished::Failed => &counters.failed,
                Finished::Retrying { .. } => &counters.retried,
                Finished::Stale => &counters.stale,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
        // Retries and unblocked dependents may be claimable now.
        wake.notify_one();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
