//! The one owner of slots and claims: [`Slots`] (the only code that takes or gives back a
//! slot), [`Running`] (the handlers in flight and the runs they hold), and the claim loop
//! that fills free slots and starts handlers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_models::{IdMap, RunId, Task, TaskStatus};
use hive_ops::Claimed;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::completer::Done;
use super::handler::run_one;
use super::pace::Pace;
use super::runtime::Runtime;
use crate::Result;
use crate::backoff::Backoff;

/// How often at most an idle worker that exits when idle asks the store whether anything
/// is left while other workers' tasks settle: after waiting [`IDLE_RECHECK_SHARE`] times
/// as long as the last question took, between these bounds. Asking then keeps the store
/// busy a twentieth of the time at most (a Postgres question of about a millisecond is
/// asked every 20 ms, as before this rule), and a quick store (memory, a local SQLite
/// file) lets the worker go a millisecond or two after the last task settles instead of
/// 20 ms (memory's 10,000-task plans had spent a fifth of their time on it).
const IDLE_RECHECK_AT_LEAST: Duration = Duration::from_millis(1);
const IDLE_RECHECK_AT_MOST: Duration = Duration::from_millis(20);
const IDLE_RECHECK_SHARE: u32 = 20;

/// How long a worker that exits when idle waits for work it cannot start before it says
/// what it waits for: long enough that the tail of a busy queue (the last tasks running on
/// other workers, dependents about to be freed) passes without a word.
const IDLE_EXPLAIN_AFTER: Duration = Duration::from_secs(5);

/// One permit per free slot. Claims take permits; a slot comes back when its task's
/// outcome is committed, unless the completer reuses it for a task claimed in the same
/// transaction.
///
/// While handlers are quick (see [`Pace`]) the worker has up to `prefetch` slots more than
/// it runs handlers: claims beyond the free handlers wait in a small local buffer, whose
/// leases the heartbeat keeps alive like any other, and start as handlers free up. Each
/// commit then carries more outcomes. The extra slots follow the handlers' pace: as many
/// as they finish in [`super::pace::BUFFER_WAIT`] plus an average commit, so none while
/// handlers are that slow; slots no longer lent are taken back as they come home.
///
/// Shared by the claim loop and the completer; every take and give-back goes through
/// here, so the two cannot disagree on what a slot is.
#[derive(Clone)]
pub(super) struct Slots {
    free: Arc<Semaphore>,
    concurrency: usize,
    prefetch: usize,
    pace: Pace,
    extra: Arc<Mutex<Extra>>,
}

/// How many prefetch slots are lent, and how many of those taken back are still held.
/// Slots free and held always add up to `concurrency + lent + owed`.
#[derive(Debug, Default)]
struct Extra {
    lent: usize,
    /// Prefetch slots to retire as they come back (they were held when taken back).
    owed: usize,
}

impl Slots {
    pub(super) fn new(concurrency: u32, prefetch: u32, pace: Pace) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency: concurrency as usize,
            prefetch: prefetch as usize,
            pace,
            extra: Arc::default(),
        }
    }

    fn extra(&self) -> std::sync::MutexGuard<'_, Extra> {
        self.extra.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lends as many prefetch slots as the handlers' pace allows (at most `prefetch`),
    /// taking back those no longer allowed; called before each claim.
    pub(super) fn follow_pace(&self) {
        if self.prefetch == 0 {
            return;
        }
        let allowed = self
            .pace
            .buffer(self.concurrency as u64, self.concurrency as u64)
            .min(self.prefetch as u64) as usize;
        let mut extra = self.extra();
        if allowed > extra.lent {
            let more = allowed - extra.lent;
            // Slots still owed are simply not retired.
            let kept = extra.owed.min(more);
            extra.owed -= kept;
            self.free.add_permits(more - kept);
        } else if allowed < extra.lent {
            let fewer = extra.lent - allowed;
            let retired = self.free.forget_permits(fewer);
            extra.owed += fewer - retired;
        }
        extra.lent = allowed;
    }

    /// Records how long a commit of outcomes took: their slots were held meanwhile (see
    /// [`Pace::buffer`]).
    pub(super) fn record_commit(&self, took: Duration) {
        self.pace.record_commit(took);
    }

    /// Handler calls running at once.
    pub(super) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Slots free now.
    pub(super) fn free(&self) -> usize {
        self.free.available_permits()
    }

    /// Slots taken: runs claimed whose outcomes are not committed yet, and claims being
    /// made.
    pub(super) fn held(&self) -> usize {
        let extra = self.extra();
        (self.concurrency + extra.lent + extra.owed).saturating_sub(self.free())
    }

    /// How long `runs` held runs should take to report at the handlers' average pace, in
    /// whole rounds of the handlers; None until the pace is known.
    pub(super) fn time_to_report(&self, runs: usize) -> Option<Duration> {
        let rounds = runs.div_ceil(self.concurrency.max(1));
        let average = self.pace.average(self.concurrency as u64)?;
        Some(average.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX)))
    }

    /// Whether every slot is free: nothing runs and no outcome waits to be committed.
    pub(super) fn all_free(&self) -> bool {
        let extra = self.extra();
        extra.owed == 0 && self.free() == self.concurrency + extra.lent
    }

    /// Takes `n` slots; false when fewer are free (the completer took some meanwhile).
    pub(super) fn take(&self, n: usize) -> bool {
        match self.free.try_acquire_many(n as u32) {
            Ok(permits) => {
                // A slot outlives any one scope (it travels with a task to the completer),
                // so it is given back by count, not by dropping a guard.
                permits.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Takes every free slot; how many it took.
    pub(super) fn take_idle(&self) -> usize {
        let idle = self.free();
        if idle > 0 && self.take(idle) { idle } else { 0 }
    }

    /// Of `n` slots the caller holds and means to reuse, retires those owed (see
    /// [`Slots::follow_pace`]); how many the caller may reuse.
    pub(super) fn reuse(&self, n: usize) -> usize {
        let mut extra = self.extra();
        let retired = extra.owed.min(n);
        extra.owed -= retired;
        n - retired
    }

    /// Gives back `n` slots taken with [`Slots::take`] or [`Slots::take_idle`].
    pub(super) fn give_back(&self, n: usize) {
        let n = self.reuse(n);
        self.free.add_permits(n);
    }

    /// Waits until a slot is free, without taking it; false only if the semaphore closed.
    async fn freed(&self) -> bool {
        self.free.acquire().await.is_ok()
    }
}

/// How a claimed task left the worker's hands: its outcome reported (stale, if it was
/// cancelled before its handler started), or not started because the worker stopped
/// first, its run still held, to be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handled {
    Reported,
    Unstarted,
}

type Joined = std::result::Result<(tokio::task::Id, Handled), tokio::task::JoinError>;

/// The handlers in flight, and the run each holds (released if it must be abandoned).
#[derive(Default)]
pub(super) struct Running {
    set: JoinSet<Handled>,
    held: IdMap<tokio::task::Id, RunId>,
    /// Held runs whose handler never started (the worker stopped first): to be released.
    unstarted: Vec<RunId>,
}

impl Running {
    pub(super) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn start(&mut self, claims: Vec<Claimed>, rt: &Runtime, done: &mpsc::UnboundedSender<Done>) {
        for c in claims {
            let run_id = c.run.id;
            let limits = super::handler::Timeouts {
                default: rt.cfg.task_timeout,
                grace: rt.cfg.timeout_grace,
                stops: rt.stops.clone(),
            };
            let turn = rt.gate.turn(c.limited);
            // Boxed: the call's state (the claimed task, its run and inputs) is a few KiB,
            // which tokio would otherwise copy several times on its way into the task.
            let handle = self.set.spawn(Box::pin(run_one(
                rt.cfg.client.clone(),
                rt.handler.clone(),
                c,
                limits,
                (rt.gate.clone(), turn),
                done.clone(),
            )));
            self.held.insert(handle.id(), run_id);
        }
    }

    fn reap_finished(&mut self) {
        while let Some(j) = self.set.try_join_next_with_id() {
            self.finished(j);
        }
    }

    /// Waits for one handler to end; false when none is left. Cancel-safe: nothing is
    /// awaited after a handler is joined.
    pub(super) async fn join_one(&mut self) -> bool {
        match self.set.join_next_with_id().await {
            Some(j) => {
                self.finished(j);
                true
            }
            None => false,
        }
    }

    /// Aborts every handler still running and waits for them; the runs of those aborted
    /// stay held.
    pub(super) async fn abort(&mut self) {
        self.set.abort_all();
        while let Some(j) = self.set.join_next_with_id().await {
            self.finished_or_aborted(j);
        }
    }

    /// The runs still held whose handlers started: claimed, but no outcome sent for them
    /// (take the unstarted ones first, [`Running::take_unstarted`]).
    pub(super) fn into_held(self) -> impl Iterator<Item = RunId> {
        self.held.into_values().chain(self.unstarted)
    }

    /// The held runs whose handler never started, given to the caller to release now.
    pub(super) fn take_unstarted(&mut self) -> Vec<RunId> {
        std::mem::take(&mut self.unstarted)
    }

    /// A handler task ended having sent its outcome: its run is no longer ours to release.
    /// One whose handler never started (the worker stopped first) stays held, to release.
    fn finished(&mut self, j: Joined) {
        let id = match j {
            Ok((id, Handled::Unstarted)) => {
                self.unstarted.extend(self.held.remove(&id));
                return;
            }
            Ok((id, Handled::Reported)) => id,
            Err(e) => e.id(),
        };
        self.held.remove(&id);
    }

    /// Like [`Running::finished`], but an aborted handler sent nothing: keep its run held.
    fn finished_or_aborted(&mut self, j: Joined) {
        match j {
            Err(e) if e.is_cancelled() => {}
            other => self.finished(other),
        }
    }
}

impl Runtime {
    /// Claims when there may be work (at start, on a wake-up, on the poll tick) and starts
    /// handlers for its own claims and the completer's. The completer refills slots as it
    /// commits outcomes, so while the queue is busy this loop mostly just starts handlers.
    pub(super) async fn claim_loop(
        &mut self,
        done_tx: mpsc::UnboundedSender<Done>,
        mut claimed_rx: mpsc::UnboundedReceiver<Vec<Claimed>>,
        completer: tokio::task::JoinHandle<()>,
    ) -> Result<()> {
        let mut running = Running::default();
        let mut backoff = Backoff::new("claiming");
        let mut answer = super::bounds::AnswerWithin::new(self.cfg.lease);
        let mut answer_idle = super::bounds::AnswerWithin::new(self.cfg.lease);
        let mut look = true;
        // When an idle worker may next ask whether anything is left, and when it will
        // because tasks settled since it last asked (see [`IDLE_RECHECK_SHARE`]).
        let mut next_check: Option<Instant> = None;
        let mut recheck: Option<Instant> = None;
        // Since when an idle worker has found work left that it cannot start, and whether
        // it has said so in this spell (see [`IDLE_EXPLAIN_AFTER`]).
        let mut waiting_since: Option<Instant> = None;
        let mut explained = false;
        while !self.stopping() {
            while let Ok(claims) = claimed_rx.try_recv() {
                running.start(claims, self, &done_tx);
            }
            running.reap_finished();
            if !running.is_empty() {
                waiting_since = None;
                explained = false;
            }
            self.slots.follow_pace();
            let free = self.slots.free();
            if look && free > 0 {
                if !self.slots.take(free) {
                    continue;
                }
                let recording = self.held.changing().await;
                let claim = self.cfg.client.claim_tasks(
                    &self.id,
                    &self.cfg.task_types,
                    free as u32,
                    self.cfg.lease,
                );
                let claim = answer.call("a claim", claim);
                // What the completer claims meanwhile starts meanwhile: a claim that waits
                // long for its answer must not leave its tasks idle under live leases.
                let claimed = {
                    let mut claim = std::pin::pin!(self.bounded_by_stop(claim));
                    loop {
                        tokio::select! {
                            claimed = &mut claim => break claimed,
                            Some(claims) = claimed_rx.recv() => {
                                running.start(claims, self, &done_tx);
                            }
                        }
                    }
                };
                let Some(claimed) = claimed else {
                    drop(recording);
                    self.slots.give_back(free);
                    break;
                };
                if let Ok(claims) = &claimed {
                    self.held.claimed(claims);
                }
                drop(recording);
                match claimed {
                    Ok(claims) => {
                        backoff.succeeded(self.id.as_str());
                        self.slots.give_back(free - claims.len());
                        // A full claim may leave more behind: look again once a slot frees.
                        look = claims.len() == free;
                        running.start(claims, self, &done_tx);
                    }
                    Err(e) if e.is_transient() => {
                        self.slots.give_back(free);
                        let delay = backoff.failed(self.id.as_str(), &e);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.stop.changed() => {}
                        }
                        continue;
                    }
                    Err(e) => {
                        self.slots.give_back(free);
                        self.fatal.set(e.into());
                        self.cfg.shutdown.shutdown();
                        break;
                    }
                }
            }
            let idle =
                !look && self.cfg.exit_when_idle && running.is_empty() && self.slots.all_free();
            if idle && recheck.is_none_or(|at| at <= Instant::now()) {
                recheck = None;
                let asked = Instant::now();
                let left = answer_idle.call("an idle check", self.what_is_left());
                let Some(left) = self.bounded_by_stop(left).await else {
                    break;
                };
                let took = asked.elapsed() * IDLE_RECHECK_SHARE;
                next_check =
                    Some(Instant::now() + took.clamp(IDLE_RECHECK_AT_LEAST, IDLE_RECHECK_AT_MOST));
                match left {
                    Ok(None) => break,
                    Ok(Some(task)) => {
                        let since = *waiting_since.get_or_insert(asked);
                        if !explained && since.elapsed() >= IDLE_EXPLAIN_AFTER {
                            explained = true;
                            tracing::info!(worker = %self.id, "{}", waiting_for(&task, since.elapsed()));
                        }
                    }
                    // A blip must not end a worker; the next wake-up or tick checks again.
                    Err(e) => tracing::warn!(worker = %self.id, error = %e, "idle check failed"),
                }
            }
            tokio::select! {
                _ = self.wake.notified() => look = true,
                // A settle after a quiet spell is looked at once; more before the next
                // question is due wait for one look then (many tasks may settle at once).
                _ = self.settled.notified(), if idle && recheck.is_none() => {
                    recheck = next_check.filter(|due| *due > Instant::now());
                }
                _ = tokio::time::sleep_until(recheck.unwrap_or_else(Instant::now)),
                    if idle && recheck.is_some() => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => look = true,
                Some(claims) = claimed_rx.recv() => running.start(claims, self, &done_tx),
                true = running.join_one(), if !running.is_empty() => {}
                // Work may be waiting for a slot: wait for one.
                true = self.slots.freed(), if look && free == 0 => {}
                _ = self.stop.changed() => {}
            }
        }
        self.cfg.health.phase(super::health::WorkerPhase::Stopping);
        self.drain(running, done_tx, claimed_rx, completer).await;
        Ok(())
    }
}

/// What an idle worker that exits when idle is waiting for, found as `task`.
fn waiting_for(task: &Task, idle: Duration) -> String {
    let (id, t) = (task.id, &task.task_type);
    let what = match (task.status, task.blocker_at(chrono::Utc::now())) {
        (TaskStatus::Queued, Some(blocker)) => {
            format!("queued task {id} of type `{t}`, not ready: {blocker}")
        }
        (TaskStatus::Queued, None) => format!(
            "queued task {id} of type `{t}`, ready but held: its queue is paused or a limit \
             holds it"
        ),
        (_, _) => match &task.assigned_worker {
            Some(w) => format!("task {id} of type `{t}`, running on worker {w}"),
            None => format!("task {id} of type `{t}`, {}", task.status),
        },
    };
    format!(
        "idle for {}s, still waiting for {what}; a worker that exits when idle waits for \
         every queued or running task of its types",
        idle.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(pace: &Pace, calls: usize) {
        for _ in 0..calls {
            pace.record(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_idle_worker_names_what_it_waits_for() {
        let now = chrono::Utc::now();
        let mut t = Task::from_new(
            hive_models::TaskId::new(),
            hive_models::NewTask::new("t", "mail"),
            now,
        );
        let idle = Duration::from_secs(5);
        let said = |t: &Task| waiting_for(t, idle);
        t.pending_dependencies = 2;
        assert!(
            said(&t).starts_with(&format!(
                "idle for 5s, still waiting for queued task {} of type `mail`, not ready: 2 deps;",
                t.id
            )),
            "{}",
            said(&t)
        );
        t.pending_dependencies = 0;
        assert!(said(&t).contains("ready but held: its queue is paused or a limit holds it"));
        t.status = TaskStatus::InProgress;
        t.assigned_worker = Some("w2".parse().unwrap());
        assert!(said(&t).contains("of type `mail`, running on worker w2;"));
    }

    #[test]
    fn prefetch_slots_are_lent_while_quick_and_retired_as_they_come_back() {
        let pace = Pace::default();
        let slots = Slots::new(2, 3, pace.clone());
        slots.follow_pace();
        assert_eq!(slots.free(), 2, "unknown handlers: no prefetch");
        quick(&pace, 2);
        slots.follow_pace();
        assert_eq!(slots.free(), 5);
        assert!(slots.all_free());
        // Four held, then handlers turn slow: the one free prefetch slot goes at once,
        // the other two as held slots come back.
        assert!(slots.take(4));
        for _ in 0..8 {
            pace.record(Duration::from_secs(1));
        }
        slots.follow_pace();
        assert_eq!(slots.free(), 0);
        assert!(!slots.all_free());
        assert_eq!(slots.reuse(1), 0, "a reused slot pays what is owed first");
        slots.give_back(3);
        assert_eq!(slots.free(), 2);
        assert!(slots.all_free());
        // Quick again: all three lent back.
        quick(&pace, 40);
        slots.follow_pace();
        assert_eq!(slots.free(), 5);
    }

    #[test]
    fn the_slots_lent_follow_the_pace_up_and_down() {
        let pace = Pace::default();
        let slots = Slots::new(2, 10, pace.clone());
        let settle = |ms: u64| {
            for _ in 0..64 {
                pace.record(Duration::from_millis(ms));
            }
            slots.follow_pace();
        };
        settle(25);
        assert_eq!(slots.free(), 2 + 4, "2 handlers × (50 ms ÷ 25 ms)");
        settle(1);
        assert_eq!(slots.free(), 2 + 10, "capped at the prefetch");
        // Eleven held, then a slower pace allows 4: the one free slot goes at once, six
        // more as held slots come back, and the rest are reused.
        assert!(slots.take(11));
        settle(25);
        assert_eq!(slots.free(), 0);
        slots.give_back(11);
        assert_eq!(slots.free(), 6);
        assert!(slots.all_free());
        settle(200);
        assert_eq!(slots.free(), 2, "handlers slower than the wait: no buffer");
        assert!(slots.all_free());
    }

    #[test]
    fn turning_quick_while_slots_are_owed_cancels_the_debt() {
        let pace = Pace::default();
        let slots = Slots::new(1, 2, pace.clone());
        quick(&pace, 1);
        slots.follow_pace();
        assert!(slots.take(3));
        pace.record(Duration::from_secs(10));
        slots.follow_pace();
        quick(&pace, 30);
        slots.follow_pace();
        slots.give_back(3);
        assert_eq!(slots.free(), 3);
        assert!(slots.all_free());
    }
}
