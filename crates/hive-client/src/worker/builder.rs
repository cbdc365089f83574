//! Configuring a worker: [`WorkerBuilder`] (from [`Client::worker`]), its options and
//! their validation, and the [`ShutdownHandle`] that stops it from elsewhere.

use std::sync::Arc;
use std::time::Duration;

use hive_models::WorkerId;
use tokio::sync::watch;

use super::handler::Handler;
use super::health::HealthHandle;
use super::report::WorkerReport;
use super::runtime::Runtime;
use crate::{Client, Result};

/// Stops a running worker from another task, gracefully or at once. Either way it stops
/// claiming at once, commits the outcomes its handlers have reported, gives back the runs
/// it still holds (their tasks are queued again at once, no attempt counted) and
/// unregisters. Usable before the worker runs: a worker told to stop before it starts
/// stops as soon as it has registered.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: watch::Sender<bool>,
    /// When the worker was told to stop at once.
    at_once: watch::Sender<Option<tokio::time::Instant>>,
}

impl ShutdownHandle {
    fn new() -> ShutdownHandle {
        ShutdownHandle {
            stop: watch::channel(false).0,
            at_once: watch::channel(None).0,
        }
    }

    /// Asks the worker to stop: handlers running get the worker's shutdown grace to
    /// finish, then are dropped.
    pub fn shutdown(&self) {
        // Stored even while nothing listens yet (the worker not started).
        self.stop.send_replace(true);
    }

    /// Stops the worker without the grace: handlers still running are dropped now (a
    /// `hive worker run` command's process group is killed) and their runs given back, so
    /// their tasks wait neither for the grace nor for their leases to expire. What the
    /// handlers reported before is still committed. What needs the store (those commits,
    /// the give-back, unregistering) gets 2 s from this call: against a store that does
    /// not answer the worker stops anyway, and the tasks it could not give back return when
    /// their leases expire.
    pub fn shutdown_now(&self) {
        self.at_once.send_if_modified(|at| {
            let first = at.is_none();
            at.get_or_insert_with(tokio::time::Instant::now);
            first
        });
        self.shutdown();
    }

    /// Whether the worker was told to stop.
    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// When the worker was told to stop at once, once it has been.
    pub(super) fn subscribe_at_once(&self) -> watch::Receiver<Option<tokio::time::Instant>> {
        self.at_once.subscribe()
    }

    /// When the worker was told to stop at once, if it has been.
    pub(super) fn at_once_since(&self) -> Option<tokio::time::Instant> {
        *self.at_once.borrow()
    }
}

/// Configures and runs a worker; from [`Client::worker`].
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    pub(super) client: Client,
    id: String,
    pub(super) role: String,
    pub(super) capabilities: Vec<String>,
    pub(super) task_types: Vec<String>,
    pub(super) concurrency: u32,
    pub(super) prefetch: u32,
    pub(super) lease: Duration,
    heartbeat_interval: Option<Duration>,
    pub(super) reap_interval: Duration,
    pub(super) poll_interval: Duration,
    pub(super) shutdown_grace: Duration,
    pub(super) task_timeout: Option<Duration>,
    pub(super) timeout_grace: Duration,
    pub(super) exit_when_idle: bool,
    pub(super) run_schedules: bool,
    pub(super) handle_signals: bool,
    pub(super) shutdown: ShutdownHandle,
    pub(super) health: HealthHandle,
}

/// The default lease. Heartbeats (every third of it) keep a slow handler's lease alive
/// however long it runs, so the lease only bounds how long a dead worker's task waits:
/// at most a lease after its last heartbeat, plus one reaper interval until some worker
/// takes it back — 10 s + 2 s, within 15 s of a SIGKILL.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The most claims a worker holds beyond its free handlers unless told otherwise (see
/// [`WorkerBuilder::prefetch`]). How many it actually holds follows its handlers' pace.
pub const DEFAULT_PREFETCH: u32 = 256;

/// How often a worker takes back expired leases by default.
pub const DEFAULT_REAP_INTERVAL: Duration = Duration::from_secs(2);

impl Client {
    /// A worker named `id` on this client's store; configure it, then [`WorkerBuilder::run`].
    /// No two live processes may share an id (the one registering later ends the runs the
    /// id held): [`crate::unique_worker_id`] makes one per process.
    pub fn worker(&self, id: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            client: self.clone(),
            id: id.into(),
            role: "worker".into(),
            capabilities: Vec::new(),
            task_types: Vec::new(),
            concurrency: 1,
            prefetch: DEFAULT_PREFETCH,
            lease: DEFAULT_LEASE,
            heartbeat_interval: None,
            reap_interval: DEFAULT_REAP_INTERVAL,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            task_timeout: None,
            timeout_grace: Duration::from_secs(5),
            exit_when_idle: false,
            run_schedules: true,
            handle_signals: true,
            shutdown: ShutdownHandle::new(),
            health: HealthHandle::new(),
        }
    }
}

impl WorkerBuilder {
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

    /// The most claims this worker may hold beyond its free handlers (default
    /// [`DEFAULT_PREFETCH`]; 0 turns it off). They wait in a local buffer, their leases
    /// kept alive by the heartbeat, and start in claim order as handlers free up, so each
    /// commit carries more outcomes. How many it holds follows the handlers' average
    /// duration: as many as they finish in 50 ms plus an average commit (a run keeps its
    /// slot until its outcome is committed), in whole rounds of the concurrency (16 for 8
    /// handlers of 20 ms and commits of 5 ms; none for handlers slower than 50 ms plus a
    /// commit, or until enough have run to tell), so a buffered task waits about 50 ms at
    /// most. A claim under a flow rule (a limited type, or a concurrency key) counts
    /// against its limit from its claim, so it goes ahead of buffered claims under none
    /// that have waited less than 200 ms.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n;
        self
    }

    hive_models::setters! {
        /// The worker's role, shown in the registry (default `worker`).
        role: impl Into<String> => into,
        /// Each claimed task's lease; heartbeats extend it while the worker lives
        /// (default 10 s, see [`DEFAULT_LEASE`]).
        lease: Duration,
        /// How often to heartbeat (default: a third of the lease, so two beats can be
        /// missed).
        heartbeat_interval: Duration => Some,
        /// How often this worker runs the reaper (default 2 s).
        reap_interval: Duration,
        /// Longest wait between claims when no wake-up arrives (the polling fallback).
        poll_interval: Duration,
        /// How long in-flight tasks may run after shutdown before they are released
        /// (default 10 s). Handlers still running [`WorkerBuilder::timeout_grace`] before it
        /// ends (and at least half-way through it) are told to stop ([`super::TaskContext::cancelled`]): one that then returns
        /// a result commits it; the others' tasks are given back, attempts not counted.
        shutdown_grace: Duration,
        /// How long a run may last when its task sets no `timeout_secs` (default: no limit).
        /// Past it the handler's cancellation signal fires ([`super::TaskContext::cancelled`]),
        /// and after [`WorkerBuilder::timeout_grace`] its future is dropped; the run ends
        /// `timeout` and the task is retried or fails per its `max_retries`.
        task_timeout: Duration => Some,
        /// How long a handler told to stop at its timeout may take to return before it is
        /// dropped (default 5 s).
        timeout_grace: Duration,
        /// Stop once nothing of this worker's types is queued, running or waiting to retry.
        /// An idle worker looks again as soon as another worker's task settles; while many
        /// do, it waits twenty times as long as its last look took (1–20 ms) between looks.
        exit_when_idle: bool,
        /// Whether this worker also runs the scheduler, creating the tasks of due
        /// schedules (default true; any number of workers may: each slot creates one task).
        run_schedules: bool,
        /// Whether Ctrl-C and SIGTERM stop the worker (default true): the first gracefully
        /// ([`ShutdownHandle::shutdown`]), a second at once
        /// ([`ShutdownHandle::shutdown_now`]).
        handle_signals: bool,
    }

    /// The heartbeat interval in effect: the one set, else a third of the lease or of the
    /// time after which a silent worker counts as offline (`OpsConfig::heartbeat_timeout`,
    /// 30 s), whichever is shorter: with a long lease, beats a third of it apart would let
    /// the reaper mark a live worker offline between two of them.
    pub(super) fn heartbeat_every(&self) -> Duration {
        let offline_after = self.client.ops().config().heartbeat_timeout;
        self.heartbeat_interval
            .unwrap_or((self.lease / 3).min(offline_after / 3))
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
        if self.task_timeout.is_some_and(|t| t.is_zero()) {
            return invalid("task_timeout", "must be longer than zero".into());
        }
        // Zero would make the claim loop ask the store again at once, in a busy loop.
        if self.poll_interval.is_zero() {
            return invalid("poll_interval", "must be longer than zero".into());
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
        let offline_after = self.client.ops().config().heartbeat_timeout;
        if beat.saturating_mul(2) > offline_after {
            return invalid(
                "heartbeat_interval",
                format!(
                    "{beat:?} is not well under the {offline_after:?} after which a silent \
                     worker counts as offline (`OpsConfig::heartbeat_timeout`): a heartbeat \
                     must come at least twice in it, or reapers mark a live worker offline"
                ),
            );
        }
        Ok(())
    }

    /// A handle that stops this worker when it runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// A handle that tells how this worker is doing once it runs: whether it is alive and
    /// whether it is ready, for an orchestrator's probes (`hive worker run --metrics-bind`
    /// serves them as `/healthz` and `/readyz`). Clones of this builder share it, as they
    /// share the [`ShutdownHandle`]: build each worker from [`Client::worker`].
    pub fn health_handle(&self) -> HealthHandle {
        self.health.clone()
    }

    /// Reports this worker's health on `health`, a handle made before the worker
    /// ([`HealthHandle::new`]) whose probes are served already.
    pub fn health(mut self, health: HealthHandle) -> Self {
        self.health = health;
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bring_a_dead_workers_task_back_within_15_seconds() {
        // Worst case: killed right after a heartbeat; the lease runs out, then the next
        // reaper pass of any live worker takes the task back.
        assert!(DEFAULT_LEASE + DEFAULT_REAP_INTERVAL <= Duration::from_secs(15));
        // A heartbeat every third of the lease: two can be missed before it expires.
        assert!((DEFAULT_LEASE / 3).saturating_mul(2) < DEFAULT_LEASE);
    }

    #[tokio::test]
    async fn a_long_lease_still_beats_well_within_the_offline_time() {
        let c = crate::Client::connect("memory:").await.unwrap();
        let long = c.worker("w").lease(Duration::from_secs(300));
        assert_eq!(long.heartbeat_every(), Duration::from_secs(10));
        assert!(long.validate().is_ok());
        let short = c.worker("w").lease(Duration::from_secs(9));
        assert_eq!(short.heartbeat_every(), Duration::from_secs(3));
        let slow = c
            .worker("w")
            .lease(Duration::from_secs(300))
            .heartbeat_interval(Duration::from_secs(20));
        let e = slow.validate().unwrap_err().to_string();
        assert!(e.contains("counts as offline"), "{e}");
    }
}
