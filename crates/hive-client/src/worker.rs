//! The worker runtime: turns an async handler into a worker that registers, heartbeats,
//! claims tasks, runs them with bounded concurrency, reports outcomes in batches, reaps
//! expired leases, and shuts down gracefully.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::HashMap;

use hive_models::{Json, Run, RunId, Task, TaskStatus, WorkerId, WorkerStatus};
use hive_ops::Claimed;
use hive_ops::store::{ChangeKind, Finished, Outcome, RunOutcome, TaskFilter, WorkerRegistration};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::backoff::{Backoff, Fatal};
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

    /// The heartbeat interval in effect: the one set, else a third of the lease.
    fn heartbeat_every(&self) -> Duration {
        self.heartbeat_interval
            .unwrap_or(self.lease / 3)
            .max(Duration::from_millis(10))
    }

    /// Refuses timings that contradict each other, before anything is claimed: a lease
    /// that heartbeats cannot keep alive would let a healthy worker's tasks be taken back
    /// and run twice.
    fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: String| -> Result<()> {
            Err(hive_models::Error::InvalidField {
                field: field.into(),
                reason,
            }
            .into())
        };
        if self.lease.is_zero() {
            return invalid("lease", "must be longer than zero".into());
        }
        let beat = self.heartbeat_every();
        if beat.saturating_mul(2) > self.lease {
            return invalid(
                "heartbeat_interval",
                format!(
                    "{beat:?} is not well under the lease of {:?}: a heartbeat must come at \
                     least twice per lease, or a healthy worker's tasks expire and run twice",
                    self.lease
                ),
            );
        }
        Ok(())
    }

    /// A handle that stops this worker when it runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until shutdown (signal, handle, or idle with `exit_when_idle`), then releases
    /// what it still holds and unregisters.
    pub async fn run<H: Handler>(self, handler: H) -> Result<WorkerReport> {
        self.validate()?;
        let id = WorkerId::parse(&self.id)?;
        let runtime = Runtime::start(self, id, Arc::new(handler)).await?;
        runtime.run().await
    }
}

/// A finished handler's outcome, on its way to the batching completer. Its slot stays taken
/// until the outcome is committed: a worker never holds more than `concurrency` leases.
struct Done {
    outcome: RunOutcome,
}

/// What a worker claims with: its id, task types and lease.
#[derive(Clone)]
struct ClaimSpec {
    worker: WorkerId,
    task_types: Vec<String>,
    lease: Duration,
}

struct Runtime {
    cfg: WorkerBuilder,
    id: WorkerId,
    handler: Arc<dyn Handler>,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    /// Some task changed status: an idle worker waiting to exit checks again.
    settled: Arc<Notify>,
    stop: watch::Receiver<bool>,
    /// One permit per free slot. Claims take permits; a slot comes back when its task's
    /// outcome is committed, unless the completer reuses it for a task claimed in the same
    /// transaction.
    slots: Arc<Semaphore>,
    /// The error that stops the worker, if one of its loops met one retrying cannot fix.
    fatal: Fatal,
}

impl Runtime {
    async fn start(cfg: WorkerBuilder, id: WorkerId, handler: Arc<dyn Handler>) -> Result<Runtime> {
        let stop = cfg.shutdown.subscribe();
        let slots = Arc::new(Semaphore::new(cfg.concurrency as usize));
        Ok(Runtime {
            cfg,
            id,
            handler,
            counters: Arc::default(),
            wake: Arc::new(Notify::new()),
            settled: Arc::new(Notify::new()),
            stop,
            slots,
            fatal: Fatal::default(),
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

    fn claim_spec(&self) -> ClaimSpec {
        ClaimSpec {
            worker: self.id.clone(),
            task_types: self.cfg.task_types.clone(),
            lease: self.cfg.lease,
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Registers, retrying with capped backoff while the store's fault is transient; any
    /// other error (a read-only or removed database, say) ends the worker at once.
    async fn register(&mut self) -> Result<()> {
        let mut backoff = Backoff::new("registering");
        loop {
            match self
                .cfg
                .client
                .register_worker_with(&self.registration())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() => {
                    let delay = backoff.failed(self.id.as_str(), &e);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => return Err(Error::Ops(e)),
                    }
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
        let (claimed_tx, claimed_rx) = mpsc::unbounded_channel::<Vec<Claimed>>();
        let completer = tokio::spawn(
            Completer {
                client: self.cfg.client.clone(),
                counters: self.counters.clone(),
                slots: self.slots.clone(),
                spec: self.claim_spec(),
                stop: self.stop.clone(),
                shutdown: self.cfg.shutdown.clone(),
                fatal: self.fatal.clone(),
                claimed: claimed_tx,
            }
            .run(done_rx),
        );
        let result = self.claim_loop(done_tx, claimed_rx, completer).await;
        background.abort_all();
        if let Err(e) = self.cfg.client.unregister_worker(self.id.as_str()).await {
            tracing::warn!(worker = %self.id, error = %e, "unregister failed; the reaper will mark this worker offline");
        }
        if let Some(fatal) = self.fatal.take() {
            tracing::error!(worker = %self.id, error = %fatal, "the worker stopped on an error that retrying cannot fix; tasks it held return when their leases expire");
            return Err(fatal);
        }
        result.map(|()| self.counters.report())
    }

    async fn spawn_wakeups(&self, set: &mut JoinSet<()>) {
        let Ok(mut rx) = self.cfg.client.store().subscribe().await else {
            return;
        };
        let wake = self.wake.clone();
        let settled = self.settled.clone();
        set.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(n) if n.may_be_claimable() => wake.notify_one(),
                    // Work finishing elsewhere may leave nothing for an idle worker to wait
                    // for (`exit_when_idle`).
                    Ok(n) if n.kind == ChangeKind::TaskStatus => settled.notify_one(),
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
        let every = self.cfg.heartbeat_every();
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The interval stays fixed; the backoff only throttles the warnings.
            let mut backoff = Backoff::new("heartbeat");
            loop {
                tick.tick().await;
                match client
                    .update_worker_heartbeat(id.as_str(), Some(WorkerStatus::Active))
                    .await
                {
                    Ok(true) => backoff.succeeded(id.as_str()),
                    // Someone unregistered or pruned this worker: register again.
                    Ok(false) => {
                        let _ = client.register_worker_with(&registration).await;
                    }
                    Err(e) => {
                        backoff.failed(id.as_str(), &e);
                    }
                }
            }
        });
    }

    fn spawn_reaper(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        let id = self.id.clone();
        let every = self.cfg.reap_interval.max(Duration::from_millis(10));
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut backoff = Backoff::new("reaping");
            loop {
                tick.tick().await;
                match client.reap().await {
                    Ok(r) => {
                        backoff.succeeded(id.as_str());
                        if !r.is_empty() {
                            tracing::info!(
                                requeued = r.requeued.len(),
                                failed = r.failed.len(),
                                offline = r.offline_workers.len(),
                                "reaped"
                            );
                        }
                    }
                    Err(e) => {
                        backoff.failed(id.as_str(), &e);
                    }
                }
            }
        });
    }

    /// Claims when there may be work (at start, on a wake-up, on the poll tick) and starts
    /// handlers for its own claims and the completer's. The completer refills slots as it
    /// commits outcomes, so while the queue is busy this loop mostly just starts handlers.
    async fn claim_loop(
        &mut self,
        done_tx: mpsc::UnboundedSender<Done>,
        mut claimed_rx: mpsc::UnboundedReceiver<Vec<Claimed>>,
        completer: tokio::task::JoinHandle<()>,
    ) -> Result<()> {
        let mut running = Running::default();
        let mut backoff = Backoff::new("claiming");
        let mut look = true;
        let concurrency = self.cfg.concurrency as usize;
        while !self.stopping() {
            while let Ok(claims) = claimed_rx.try_recv() {
                running.start(claims, self, &done_tx);
            }
            running.reap_finished();
            let free = self.slots.available_permits();
            if look && free > 0 {
                let Ok(permits) = self.slots.try_acquire_many(free as u32) else {
                    continue;
                };
                permits.forget();
                match self
                    .cfg
                    .client
                    .claim_tasks(&self.id, &self.cfg.task_types, free as u32, self.cfg.lease)
                    .await
                {
                    Ok(claims) => {
                        backoff.succeeded(self.id.as_str());
                        self.slots.add_permits(free - claims.len());
                        // A full claim may leave more behind: look again once a slot frees.
                        look = claims.len() == free;
                        running.start(claims, self, &done_tx);
                    }
                    Err(e) if e.is_transient() => {
                        self.slots.add_permits(free);
                        let delay = backoff.failed(self.id.as_str(), &e);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.stop.changed() => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        self.slots.add_permits(free);
                        self.fatal.set(e.into());
                        let _ = self.cfg.shutdown.send(true);
                        break;
                    }
                }
            }
            let idle = !look
                && self.cfg.exit_when_idle
                && running.is_empty()
                && self.slots.available_permits() == concurrency;
            if idle {
                match self.nothing_left().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    // A blip must not end a worker; the next wake-up or tick checks again.
                    Err(e) => tracing::warn!(worker = %self.id, error = %e, "idle check failed"),
                }
            }
            tokio::select! {
                _ = self.wake.notified() => look = true,
                // Debounced: many tasks may settle at once.
                _ = self.settled.notified(), if idle => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(self.cfg.poll_interval) => look = true,
                Some(claims) = claimed_rx.recv() => running.start(claims, self, &done_tx),
                Some(j) = running.set.join_next_with_id(), if !running.is_empty() => running.finished(j),
                // Work may be waiting for a slot: wait for one.
                Ok(p) = self.slots.acquire(), if look && free == 0 => drop(p),
                _ = self.stop.changed() => {}
            }
        }
        self.drain(running, done_tx, claimed_rx, completer).await;
        Ok(())
    }

    /// After shutdown: let in-flight tasks finish within the grace period, commit their
    /// outcomes, and release whatever is still held (running past the grace period, or
    /// claimed by the completer as shutdown began).
    async fn drain(
        &self,
        mut running: Running,
        done_tx: mpsc::UnboundedSender<Done>,
        mut claimed_rx: mpsc::UnboundedReceiver<Vec<Claimed>>,
        completer: tokio::task::JoinHandle<()>,
    ) {
        let mut unstarted: Vec<RunId> = Vec::new();
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_grace;
        while !running.is_empty() {
            tokio::select! {
                j = running.set.join_next_with_id() => match j {
                    Some(j) => running.finished(j),
                    None => break,
                },
                Some(claims) = claimed_rx.recv() => {
                    unstarted.extend(claims.iter().map(|c| c.run.id));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    running.set.abort_all();
                    while let Some(j) = running.set.join_next_with_id().await {
                        running.finished_or_aborted(j);
                    }
                    break;
                }
            }
        }
        // Every outcome sent is committed before the completer exits: nothing finished is lost.
        drop(done_tx);
        let _ = completer.await;
        while let Ok(claims) = claimed_rx.try_recv() {
            unstarted.extend(claims.iter().map(|c| c.run.id));
        }
        let runs: Vec<RunId> = running.held.into_values().chain(unstarted).collect();
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
            // One read per status, so a task can move between reads. Held statuses are read
            // first: a task a reaper or retry puts back in the queue after its status was
            // read is still seen by the last read (read queued first, and the last worker
            // could exit while a reaped task waits with nobody to run it). The other way,
            // a task claimed between the reads is missed, but a live worker then holds it.
            for status in [
                TaskStatus::InProgress,
                TaskStatus::Assigned,
                TaskStatus::Queued,
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

/// The handlers in flight, and the run each holds (released if it must be abandoned).
#[derive(Default)]
struct Running {
    set: JoinSet<()>,
    held: HashMap<tokio::task::Id, RunId>,
}

impl Running {
    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn start(&mut self, claims: Vec<Claimed>, rt: &Runtime, done: &mpsc::UnboundedSender<Done>) {
        for c in claims {
            let run_id = c.run.id;
            let handle = self.set.spawn(run_one(
                rt.cfg.client.clone(),
                rt.handler.clone(),
                c,
                done.clone(),
            ));
            self.held.insert(handle.id(), run_id);
        }
    }

    fn reap_finished(&mut self) {
        while let Some(j) = self.set.try_join_next_with_id() {
            self.finished(j);
        }
    }

    /// A handler task ended having sent its outcome: its run is no longer ours to release.
    fn finished(&mut self, j: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match j {
            Ok((id, ())) => id,
            Err(e) => e.id(),
        };
        self.held.remove(&id);
    }

    /// Like [`Running::finished`], but an aborted handler sent nothing: keep its run held.
    fn finished_or_aborted(
        &mut self,
        j: std::result::Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) {
        match j {
            Err(e) if e.is_cancelled() => {}
            other => self.finished(other),
        }
    }
}

/// Runs one claimed task; a panicking handler fails its task, not the worker.
async fn run_one(
    client: Client,
    handler: Arc<dyn Handler>,
    claim: Claimed,
    done: mpsc::UnboundedSender<Done>,
) {
    use futures::FutureExt;
    let retry = client.config().retry;
    let run_id = claim.run.id;
    let ctx = TaskContext {
        task: claim.task,
        run: claim.run,
        client,
    };
    let fut = std::panic::AssertUnwindSafe(handler.call(ctx)).catch_unwind();
    let outcome = match fut.await {
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
        Err(panic) => RunOutcome {
            run_id,
            outcome: Outcome::Failure {
                error: format!("handler panicked: {}", panic_message(panic)),
                retry: Some(retry),
            },
            output_log: None,
        },
    };
    let _ = done.send(Done { outcome });
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Commits finished runs in batches — whatever arrived while the previous batch was
/// committing goes in the next transaction — and in the same transaction claims as many
/// tasks as the batch frees slots (plus any idle ones). A failed commit is retried, so an
/// outcome is never dropped while the worker lives.
struct Completer {
    client: Client,
    counters: Arc<Counters>,
    slots: Arc<Semaphore>,
    spec: ClaimSpec,
    stop: watch::Receiver<bool>,
    /// Stops the worker when a commit fails in a way retrying cannot fix.
    shutdown: watch::Sender<bool>,
    fatal: Fatal,
    claimed: mpsc::UnboundedSender<Vec<Claimed>>,
}

impl Completer {
    const MAX_BATCH: usize = 512;

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Done>) {
        let mut batch: Vec<RunOutcome> = Vec::new();

        while let Some(first) = rx.recv().await {
            // Handlers finishing at the same moment report in this batch, not the next.
            tokio::task::yield_now().await;
            batch.clear();
            batch.push(first.outcome);
            while batch.len() < Self::MAX_BATCH {
                match rx.try_recv() {
                    Ok(d) => batch.push(d.outcome),
                    Err(_) => break,
                }
            }
            if !self.commit(&batch).await {
                return;
            }
        }
    }

    /// Commits one batch, retrying transient failures until it succeeds; false when a
    /// failure retrying cannot fix stopped the worker (the batch's tasks then come back when
    /// their leases expire).
    async fn commit(&self, batch: &[RunOutcome]) -> bool {
        // The batch's own slots, plus idle ones: reuse them for what is ready now.
        let mut slots = batch.len();
        if !*self.stop.borrow() {
            let idle = self.slots.available_permits();
            if idle > 0
                && let Ok(p) = self.slots.try_acquire_many(idle as u32)
            {
                p.forget();
                slots += idle;
            }
        }
        let mut backoff = Backoff::new("committing finished runs");
        loop {
            // No new work once shutting down; the outcomes must still be committed.
            let want = if *self.stop.borrow() { 0 } else { slots };
            match self
                .client
                .finish_and_claim(
                    batch,
                    &self.spec.worker,
                    &self.spec.task_types,
                    want as u32,
                    self.spec.lease,
                )
                .await
            {
                Ok((reports, claims)) => {
                    tracing::debug!(
                        finished = batch.len(),
                        claimed = claims.len(),
                        "committed a batch"
                    );
                    self.count(&reports);
                    self.slots.add_permits(slots - claims.len());
                    // Sent even when empty: the claim loop checks for idleness after commits.
                    let _ = self.claimed.send(claims);
                    backoff.succeeded(self.spec.worker.as_str());
                    return true;
                }
                Err(e) if e.is_transient() => {
                    // Kept and committed when the store can take them: nothing is lost
                    // while, say, the disk is full.
                    let delay = backoff.failed(self.spec.worker.as_str(), &e);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    self.fatal.set(e.into());
                    let _ = self.shutdown.send(true);
                    return false;
                }
            }
        }
    }

    fn count(&self, reports: &[hive_ops::store::FinishReport]) {
        for r in reports {
            let c = match r.finished {
                Finished::Completed => &self.counters.completed,
                Finished::Failed => &self.counters.failed,
                Finished::Retrying { .. } => &self.counters.retried,
                Finished::Stale => &self.counters.stale,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
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
