//! The worker's lifecycle: registration, heartbeat, reaper and wake-ups in the background,
//! the run sequence around the claim loop, and the shutdown that drains in-flight tasks
//! and releases what is still held.

use std::sync::Arc;
use std::time::Duration;

use hive_models::{RunId, Task, TaskStatus, WorkerId};
use hive_ops::Claimed;
use hive_ops::store::{TaskFilter, WorkerRegistration};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use super::bounds::{AT_ONCE_STORE_WAIT, SHUTDOWN_RETRY_FOR};
use super::builder::WorkerBuilder;
use super::completer::{ClaimSpec, Completer, Done};
use super::gate::Gate;
use super::handler::Handler;
use super::health::{StoppedOnDrop, WorkerPhase};
use super::held::Held;
use super::instance::{self, Instance};
use super::pace::Pace;
use super::report::{Counters, WorkerReport};
use super::slots::{Running, Slots};
use crate::Result;
use crate::backoff::{Backoff, Fatal};

/// How long a stopping worker waits for the outcomes its handlers returned to commit,
/// through transient faults, before it gives up on them (their leases bring them back).
const LAST_COMMITS_FOR: Duration = Duration::from_secs(10);

/// How long before a stopped handler's own grace would end the shutdown's deadline
/// comes: its outcome is reported before the deadline drops whatever still runs.
const NOTICE_MARGIN: Duration = Duration::from_millis(250);

/// A started worker: its configuration, and the state its loops share.
pub(super) struct Runtime {
    pub(super) cfg: WorkerBuilder,
    pub(super) id: WorkerId,
    pub(super) handler: Arc<dyn Handler>,
    counters: Arc<Counters>,
    pub(super) wake: Arc<Notify>,
    /// Some task changed status: an idle worker waiting to exit checks again.
    pub(super) settled: Arc<Notify>,
    pub(super) stop: watch::Receiver<bool>,
    /// The free slots; see [`Slots`].
    pub(super) slots: Slots,
    /// What a claimed task waits for before its handler starts.
    pub(super) gate: Gate,
    /// The error that stops the worker, if one of its loops met one retrying cannot fix.
    pub(super) fatal: Fatal,
    /// The stop signal of every running handler, by run.
    pub(super) stops: super::stops::Stops,
    /// The runs this worker holds, checked against the store's view.
    pub(super) held: Held,
    /// This process's mark on the worker's row (see [`Instance`]).
    instance: Instance,
}

impl Runtime {
    pub(super) async fn start(
        cfg: WorkerBuilder,
        id: WorkerId,
        handler: Arc<dyn Handler>,
    ) -> Result<Runtime> {
        let stop = cfg.shutdown.subscribe();
        let pace = Pace::default();
        let slots = Slots::new(cfg.concurrency, cfg.prefetch, pace.clone());
        let gate = Gate::new(cfg.concurrency, stop.clone(), pace);
        Ok(Runtime {
            cfg,
            id,
            handler,
            counters: Arc::default(),
            wake: Arc::new(Notify::new()),
            settled: Arc::new(Notify::new()),
            stop,
            slots,
            gate,
            fatal: Fatal::default(),
            stops: super::stops::Stops::default(),
            held: Held::default(),
            instance: Instance::new(),
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
                "prefetch": self.cfg.prefetch,
                "task_types": self.cfg.task_types,
                instance::KEY: self.instance.mark(),
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

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Registers, retrying with capped backoff while the store's fault is transient; any
    /// other error (a read-only or removed database, say) ends the worker at once. False
    /// when told to stop first (also before the worker started): nothing to run.
    async fn register(&mut self) -> Result<bool> {
        let mut backoff = Backoff::new("registering");
        loop {
            // A subscription sees the value it starts with as read: a stop asked for before
            // `run` wakes no `changed()`, so it is looked at here.
            if self.stopping() {
                return Ok(false);
            }
            self.cfg.health.attempting();
            let registered = async {
                let client = &self.cfg.client;
                self.instance.warn_if_taken(client, &self.id).await?;
                client.register_worker_with(&self.registration()).await?;
                // Registering again on a transient fault; any other is not worth the
                // worker's start: those runs are then given back by the held-runs check.
                match self.instance.end_inherited_runs(client, &self.id).await {
                    Err(e) if !e.is_transient() => {
                        tracing::warn!(worker = %self.id, error = %e, "could not end the runs an earlier process under this id held");
                        Ok(0)
                    }
                    ended => ended,
                }
            }
            .await;
            self.cfg
                .health
                .beat(registered.as_ref().map(|_| ()).map_err(ToString::to_string));
            match registered {
                Ok(_) => return Ok(true),
                Err(e) if e.is_transient() => {
                    let delay = backoff.failed(self.id.as_str(), &e);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) async fn run(mut self) -> Result<WorkerReport> {
        let health = self.cfg.health.clone();
        health.starting(self.cfg.heartbeat_every(), self.cfg.lease);
        let _stopped = StoppedOnDrop(health.clone());
        if !self.register().await? {
            tracing::info!(worker = %self.id, "told to stop before it registered");
            return Ok(self.counters.report());
        }
        health.phase(WorkerPhase::Running);
        let mut background = JoinSet::new();
        self.spawn_wakeups(&mut background).await;
        self.spawn_heartbeat(&mut background);
        self.spawn_give_back_when_cut_off(&mut background);
        self.spawn_reaper(&mut background);
        self.spawn_reconcile(&mut background);
        if self.cfg.run_schedules {
            self.spawn_scheduler(&mut background);
        }
        if self.cfg.handle_signals {
            let stop = self.cfg.shutdown.clone();
            background.spawn(async move {
                super::signals::shutdown_signal().await;
                stop.shutdown();
                super::signals::shutdown_signal().await;
                stop.shutdown_now();
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
                held: self.held.clone(),
                queued: self.cfg.client.store().backend().queues_writes(),
            }
            .run(done_rx),
        );
        let result = self.claim_loop(done_tx, claimed_rx, completer).await;
        // Waited for, not only aborted: a heartbeat still running on another thread could
        // find the worker unregistered below and register it again.
        background.shutdown().await;
        // Once another process took the id, the row is its own: not unregistered.
        let unregistered = match self.instance.replaced() {
            true => Some(Ok(())),
            false => {
                self.at_shutdown("unregistering", || async {
                    let client = &self.cfg.client;
                    // Looked at again just before: a process that took the id since the
                    // last check (a rolling restart under a fixed id) owns the row and its
                    // runs, which unregistering would give back under it.
                    if self.instance.taken_by(client, &self.id).await?.is_some() {
                        self.instance.set_replaced();
                        return Ok(());
                    }
                    client.unregister_worker(self.id.as_str()).await.map(|_| ())
                })
                .await
            }
        };
        match unregistered {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(worker = %self.id, error = %e, "unregister failed; the reaper will mark this worker offline")
            }
            None => tracing::warn!(worker = %self.id, "unregister not done in time (no answer \
                within {SHUTDOWN_RETRY_FOR:?}, or {AT_ONCE_STORE_WAIT:?} once told to stop at \
                once); the reaper will mark this worker offline"),
        }
        if let Some(fatal) = self.fatal.take() {
            tracing::error!(worker = %self.id, error = %fatal, "the worker stopped on an error that retrying cannot fix; tasks it held were given back, or return when their leases expire");
            return Err(fatal);
        }
        result.map(|()| self.counters.report())
    }

    /// Wakes the claim loop on events that may mean claimable work (and after skipped
    /// events, which may have been such), and an idle worker waiting to exit on tasks
    /// changing elsewhere: both from hive-ops' event bus, never from the store directly.
    /// Subscribed before the claim loop starts, so no change after it is missed; a
    /// subscription that fails (no connection slot free on the server, say) is tried again
    /// with backoff, the poll interval finding work meanwhile, instead of leaving the
    /// worker without wake-ups for its whole life.
    async fn spawn_wakeups(&self, set: &mut JoinSet<()>) {
        let first = self.cfg.client.subscribe().await;
        let (client, id) = (self.cfg.client.clone(), self.id.clone());
        let wake = self.wake.clone();
        let settled = self.settled.clone();
        let stops = self.stops.clone();
        set.spawn(async move {
            let mut events = match first {
                Ok(events) => events,
                Err(e) => {
                    let mut backoff = Backoff::new("subscribing to wake-ups");
                    let mut error = e;
                    loop {
                        tokio::time::sleep(backoff.failed(id.as_str(), &error)).await;
                        match client.subscribe().await {
                            Ok(events) => {
                                backoff.succeeded(id.as_str());
                                // What changed while it had no subscription.
                                wake.notify_one();
                                break events;
                            }
                            Err(e) => error = e,
                        }
                    }
                }
            };
            let mut skipped = 0;
            while let Some(p) = events.recv().await {
                // A task cancelled while its handler runs here: tell the handler to stop.
                // Only the run the cancellation closed: by the time this is read the task
                // may have been queued again and claimed here anew. One cancelled with no
                // running run has none of this worker's to stop (a stale one still running
                // here is found by the heartbeat's check, `held.rs`).
                if let hive_ops::Event::TaskStatusChanged {
                    status: hive_models::TaskStatus::Cancelled,
                    run_id: Some(run),
                    ..
                } = p.event
                {
                    stops.stop_run(run);
                }
                if p.event.may_be_claimable() || events.skipped() > skipped {
                    skipped = events.skipped();
                    wake.notify_one();
                } else if p.event.task_id().is_some() {
                    // Work finishing elsewhere may leave nothing for an idle worker to wait
                    // for (`exit_when_idle`).
                    settled.notify_one();
                }
            }
        });
    }

    /// Runs `step` every `every` for as long as the worker runs. A failing step is tried
    /// again at the next tick (the interval stays fixed); the backoff only throttles the
    /// warnings.
    fn spawn_every<F, Fut>(
        &self,
        set: &mut JoinSet<()>,
        what: &'static str,
        every: Duration,
        step: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let id = self.id.clone();
        set.spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut backoff = Backoff::new(what);
            loop {
                tick.tick().await;
                match step().await {
                    Ok(()) => backoff.succeeded(id.as_str()),
                    Err(e) => {
                        backoff.failed(id.as_str(), &e);
                    }
                }
            }
        });
    }

    fn spawn_heartbeat(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        let id = self.id.clone();
        let registration = self.registration();
        let health = self.cfg.health.clone();
        let instance = self.instance.clone();
        let every = self.cfg.heartbeat_every();
        // A beat that gets no answer (a partition: no error comes until TCP gives up) ends
        // as a failed one, so the beats go on and the health probe sees a worker waiting
        // for its database, not a wedged one.
        // Given what is left of the lease after one beat's wait: a slow beat that still
        // lands within the lease (a busy database) counts, from when it was sent (the
        // database may have extended the leases as soon as then), so beats each slower
        // than half the lease let it lapse as the worker sees it, and it stops its handlers.
        // And well within what the liveness probe allows between beats begun: a beat held
        // up by its database is a worker waiting, not a wedged one to restart.
        let answer_within = beat_answer_within(self.cfg.lease, every, health.get().wedged_after());
        self.spawn_every(set, "heartbeat", every, move || {
            let (client, id, registration) = (client.clone(), id.clone(), registration.clone());
            let instance = instance.clone();
            let health = health.clone();
            async move {
                health.attempting();
                let beat = async {
                    let known = client.update_worker_heartbeat(id.as_str(), None).await?;
                    // Someone unregistered or pruned this worker: register again, unless
                    // another process took the id (the row, gone or not, is not this one's).
                    if !known && !instance.replaced() {
                        client.register_worker_with(&registration).await?;
                    }
                    Ok(())
                };
                let beat = match tokio::time::timeout(answer_within, beat).await {
                    Ok(beat) => beat,
                    Err(_) => Err(crate::Error::from(hive_store::Error::Unavailable {
                        target: "the database".into(),
                        reason: format!("no answer to a heartbeat within {answer_within:?}"),
                    })),
                };
                health.beat(beat.as_ref().map_err(ToString::to_string).copied());
                beat
            }
        });
    }

    /// Once the worker has stored no heartbeat for longer than its lease, other workers may
    /// be taking its tasks back (their leases lapsed): its handlers are told to stop (each
    /// once its run's own lease has lapsed, a longer one a handler asked for kept), and
    /// their runs reported as given back, committed once the store answers again (stale if
    /// the task was taken back meanwhile). Fewer handlers then run a task twice.
    fn spawn_give_back_when_cut_off(&self, set: &mut JoinSet<()>) {
        let health = self.cfg.health.clone();
        let stops = self.stops.clone();
        let id = self.id.clone();
        // A local check, so often: a lapse is acted on soon after it, not up to a beat later.
        let every = (self.cfg.heartbeat_every() / 4).max(Duration::from_millis(50));
        set.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let h = health.get();
                let Some(since) = h.last_beat.map(|at| at.elapsed()) else {
                    continue;
                };
                // Stopping too: handlers finishing within the grace are as cut off.
                let working = matches!(h.phase, WorkerPhase::Running | WorkerPhase::Stopping);
                if !working || since <= h.lease {
                    continue;
                }
                let reason = format!(
                    "given back: its worker stored no heartbeat for {}s, longer than its lease \
                     ({}s), so another worker may be running the task",
                    since.as_secs(),
                    h.lease.as_secs()
                );
                let stopped = stops.give_back_lapsed(since, h.lease, &reason);
                if stopped > 0 {
                    tracing::warn!(worker = %id, handlers = stopped, last_error = ?h.last_error,
                        "no heartbeat stored for longer than the lease: running handlers told \
                         to stop, their runs to be given back");
                }
            }
        });
    }

    /// Checks what the store says this worker holds against what it knows it holds (see
    /// [`Held`]): on Postgres, where cancellations arrive as notifications within a second,
    /// once per heartbeat; elsewhere, where another process's cancel is not announced here,
    /// once per poll interval.
    fn spawn_reconcile(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        let id = self.id.clone();
        let held = self.held.clone();
        let stops = self.stops.clone();
        let (instance, fatal, shutdown) = (
            self.instance.clone(),
            self.fatal.clone(),
            self.cfg.shutdown.clone(),
        );
        let every = if client.store().backend().announces_other_processes() {
            self.cfg.heartbeat_every()
        } else {
            self.cfg.poll_interval.min(self.cfg.heartbeat_every())
        };
        self.spawn_every(set, "checking held runs", every, move || {
            let (client, id, held, stops) = (client.clone(), id.clone(), held.clone(), stops.clone());
            let (instance, fatal, shutdown) = (instance.clone(), fatal.clone(), shutdown.clone());
            async move {
                // Before the runs: those of a process that took the id are not this one's
                // to give back.
                if let Some(pid) = instance.taken_by(&client, &id).await? {
                    instance.set_replaced();
                    fatal.set(crate::Error::WorkerIdTaken {
                        worker: id.to_string(),
                        pid,
                    });
                    // At once: the other process ended the runs this one holds, so the
                    // handlers still running would run beside those tasks' next runs.
                    shutdown.shutdown_now();
                    return Ok(());
                }
                let found = held.reconcile(&client, &id, &stops).await?;
                if !found.stopped.is_empty() {
                    tracing::info!(worker = %id, tasks = ?found.stopped, "runs ended elsewhere; their handlers were told to stop");
                }
                Ok(())
            }
        });
    }

    /// Creates the tasks of due schedules, once a second (a 6-field cron may fire every
    /// second) or every poll interval if that is shorter.
    fn spawn_scheduler(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        let every = self.cfg.poll_interval.min(Duration::from_secs(1));
        self.spawn_every(set, "running schedules", every, move || {
            let client = client.clone();
            async move {
                let fired = client.fire_due_schedules().await?;
                if fired.slots > 0 {
                    tracing::debug!(slots = fired.slots, "schedules fired");
                }
                Ok(())
            }
        });
    }

    fn spawn_reaper(&self, set: &mut JoinSet<()>) {
        let client = self.cfg.client.clone();
        self.spawn_every(set, "reaping", self.cfg.reap_interval, move || {
            let client = client.clone();
            async move {
                let r = client.reap().await?;
                if !r.is_empty() {
                    tracing::info!(
                        requeued = r.requeued.len(),
                        failed = r.failed.len(),
                        offline = r.offline_workers.len(),
                        "reaped"
                    );
                }
                Ok(())
            }
        });
    }

    /// After shutdown: let in-flight tasks finish within the grace period (none when told
    /// to stop at once), commit their outcomes, and release whatever is still held (running
    /// past the grace period, or claimed by the completer as shutdown began).
    pub(super) async fn drain(
        &self,
        mut running: Running,
        done_tx: mpsc::UnboundedSender<Done>,
        mut claimed_rx: mpsc::UnboundedReceiver<Vec<Claimed>>,
        completer: tokio::task::JoinHandle<()>,
    ) {
        let mut unstarted: Vec<RunId> = Vec::new();
        // A grace past what an instant can hold (`--shutdown-grace 1e19`) is "for good".
        let deadline = tokio::time::Instant::now()
            .checked_add(self.cfg.shutdown_grace)
            .unwrap_or_else(|| {
                tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400)
            });
        // Handlers still running this long before the deadline are told to stop, so the
        // grace their own stop allows (`timeout_grace`) ends before it, but not before half
        // the grace has passed (a `shell` command's grace is long): one that returns a
        // result commits it, the others' tasks are given back (see `Stops`).
        let began = tokio::time::Instant::now();
        let half_way = began
            .checked_add(self.cfg.shutdown_grace / 2)
            .unwrap_or(deadline);
        let notice = deadline
            .checked_sub(self.cfg.timeout_grace.saturating_add(NOTICE_MARGIN))
            .unwrap_or(began)
            .max(half_way);
        let mut noticed = false;
        let mut at_once = self.cfg.shutdown.subscribe_at_once();
        // Given back while the others run out their grace (which may be hours): claims
        // that never started are other workers' to run now.
        let mut release_early = true;
        while !running.is_empty() {
            unstarted.extend(running.take_unstarted());
            if release_early
                && !unstarted.is_empty()
                && let Err(kept) = self.release(std::mem::take(&mut unstarted), true).await
            {
                unstarted = kept;
                release_early = false;
            }
            tokio::select! {
                joined = running.join_one() => if !joined {
                    break;
                },
                Some(claims) = claimed_rx.recv() => {
                    unstarted.extend(claims.iter().map(|c| c.run.id));
                }
                () = tokio::time::sleep_until(notice), if !noticed => {
                    noticed = true;
                    let told = self.stops.stop_for_shutdown("its worker is shutting down");
                    if told > 0 {
                        tracing::info!(worker = %self.id, handlers = told, "told running \
                            handlers to stop: the shutdown grace ends in {:?}",
                            deadline.saturating_duration_since(tokio::time::Instant::now()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    running.abort().await;
                    break;
                }
                // The guard `wait_for` returns is dropped before the abort awaits.
                true = async { at_once.wait_for(Option::is_some).await.is_ok() } => {
                    running.abort().await;
                    break;
                }
            }
        }
        // Every outcome sent is committed before the completer exits: nothing finished is
        // lost, through a blip. A store that does not answer gets a bounded wait, so the
        // stop ends (its tasks come back with their leases): [`LAST_COMMITS_FOR`], or
        // [`AT_ONCE_STORE_WAIT`] once told to stop at once.
        drop(done_tx);
        let mut completer = completer;
        let committed = tokio::select! {
            _ = &mut completer => true,
            true = async { at_once.wait_for(Option::is_some).await.is_ok() } => false,
            () = tokio::time::sleep(LAST_COMMITS_FOR) => {
                completer.abort();
                tracing::warn!(worker = %self.id, "outcomes not committed within \
                    {LAST_COMMITS_FOR:?} of stopping; their tasks run again once their \
                    leases expire");
                true
            }
        };
        if !committed && self.bounded(&mut completer).await.is_none() {
            completer.abort();
            tracing::warn!(worker = %self.id, "stopping at once: outcomes not committed \
                within {AT_ONCE_STORE_WAIT:?}; their tasks run again once their leases expire");
        }
        while let Ok(claims) = claimed_rx.try_recv() {
            unstarted.extend(claims.iter().map(|c| c.run.id));
        }
        unstarted.extend(running.take_unstarted());
        let started: Vec<RunId> = running.into_held().collect();
        let (a, b) = tokio::join!(self.release(unstarted, true), self.release(started, false));
        let kept = a.err().unwrap_or_default().len() + b.err().unwrap_or_default().len();
        if kept > 0 {
            tracing::warn!(worker = %self.id, tasks = kept, "the leases of the tasks \
                not given back will expire");
        }
    }

    /// Gives `runs` back to the queue (with `unstarted`, their handlers never started, so
    /// their starts stop counting against rate limits); the runs back when that failed or
    /// took too long.
    async fn release(
        &self,
        runs: Vec<RunId>,
        unstarted: bool,
    ) -> std::result::Result<(), Vec<RunId>> {
        if runs.is_empty() {
            return Ok(());
        }
        match self
            .at_shutdown("releasing held tasks", || async {
                if unstarted {
                    self.cfg.client.release_unstarted_runs(&runs).await
                } else {
                    self.cfg.client.release_runs(&runs).await
                }
            })
            .await
        {
            Some(Ok(released)) => {
                self.held.finished(runs);
                self.counters.add_released(released.len());
                return Ok(());
            }
            Some(Err(e)) => {
                tracing::warn!(worker = %self.id, error = %e, "release failed")
            }
            None => tracing::warn!(worker = %self.id, "release not done in time (no answer \
                within {SHUTDOWN_RETRY_FOR:?}, or {AT_ONCE_STORE_WAIT:?} once told to stop at \
                once)"),
        }
        Err(runs)
    }

    /// A task of this worker's types that is queued (ready, delayed or waiting on
    /// dependencies), assigned or in progress anywhere; None when there is none.
    pub(super) async fn what_is_left(&self) -> Result<Option<Task>> {
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
                if let Some(task) = self.cfg.client.list_tasks(&filter).await?.pop() {
                    return Ok(Some(task));
                }
            }
        }
        Ok(None)
    }
}

/// How long a heartbeat waits for its answer: what is left of the lease after one beat's
/// wait (at least a beat, at least a second), yet short enough that the next beat begins
/// before `wedged_after` has passed since this one began.
fn beat_answer_within(lease: Duration, every: Duration, wedged_after: Duration) -> Duration {
    lease
        .saturating_sub(every)
        .max(every)
        .max(Duration::from_secs(1))
        .min(wedged_after.saturating_sub(every).max(every))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A beat held up by its database ends in time for the next to begin before the
    /// liveness probe's limit, however long the lease.
    #[test]
    fn a_beat_waits_for_its_answer_within_what_liveness_allows() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(beat_answer_within(s(10), ms(3333), s(30)), ms(6667));
        assert_eq!(beat_answer_within(s(60), s(10), s(30)), s(20));
        assert_eq!(beat_answer_within(s(600), s(15), s(45)), s(30));
        assert_eq!(beat_answer_within(s(1), ms(100), s(30)), s(1));
    }
}
