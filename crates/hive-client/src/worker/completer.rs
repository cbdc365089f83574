//! The batching completer: commits finished handlers' outcomes in batches and, in the same
//! transaction, claims new tasks for the slots the batch frees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_models::{RunId, TaskId, WorkerId};
use hive_ops::Claimed;
use hive_ops::store::{FinishReport, Outcome, RunOutcome};
use tokio::sync::{mpsc, watch};

use super::bounds::AnswerWithin;
use super::held::Held;
use super::report::Counters;
use super::slots::Slots;

/// How long logging the outcomes a commit refused may wait to read their tasks' errors.
const REFUSED_READ_WITHIN: Duration = Duration::from_secs(10);
use crate::Client;
use crate::backoff::{Backoff, Fatal};

/// A finished handler's outcome, on its way to the batching completer. Its slot stays taken
/// until the outcome is committed: a worker never holds more leases than it has slots
/// (`concurrency`, plus the prefetch slots its handlers' pace allows).
pub(super) struct Done {
    pub(super) outcome: RunOutcome,
}

/// What a worker claims with: its id, task types and lease.
#[derive(Clone)]
pub(super) struct ClaimSpec {
    pub(super) worker: WorkerId,
    pub(super) task_types: Vec<String>,
    pub(super) lease: Duration,
}

/// Commits finished runs in batches — whatever arrived while the previous batch was
/// committing goes in the next transaction — and in the same transaction claims as many
/// tasks as the batch frees slots (plus any idle ones). A failed commit is retried, so an
/// outcome is never dropped while the worker lives.
pub(super) struct Completer {
    pub(super) client: Client,
    pub(super) counters: Arc<Counters>,
    pub(super) slots: Slots,
    pub(super) spec: ClaimSpec,
    pub(super) stop: watch::Receiver<bool>,
    /// Stops the worker when a commit fails in a way retrying cannot fix.
    pub(super) shutdown: super::ShutdownHandle,
    pub(super) fatal: Fatal,
    pub(super) claimed: mpsc::UnboundedSender<Vec<Claimed>>,
    pub(super) held: Held,
    /// Whether the store queues write transactions for one connection, where a second
    /// commit in flight cannot overlap the first (see [`Completer::IN_FLIGHT`]).
    pub(super) queued: bool,
}

impl Completer {
    const MAX_BATCH: usize = 512;

    /// Commits in flight at once. A second starts only when a full round of outcomes (one
    /// per handler) waits behind the first, or when the first has taken longer than
    /// [`Completer::SLOW`]: then the two transactions overlap instead of the second
    /// waiting a whole commit, and a commit stuck on something (a row lock, a slow disk)
    /// does not hold back every outcome behind it. A trickle of outcomes behind a commit
    /// of usual length still waits to ride on the next one rather than splitting batches.
    /// The full-round rule is off where the store queues write transactions for one
    /// connection: on SQLite the second transaction waits for the writer anyway, and
    /// splitting the round only made each commit smaller (plan-chains, whose hundred
    /// claimable tasks went out in three commits of 33 instead of two of 50, ran 5–33%
    /// slower with it, the flat drain 6–37%).
    const IN_FLIGHT: usize = 2;

    /// A commit waits for more outcomes at most this fraction of the last commit's time
    /// (see [`linger`]), and never longer than [`Completer::LINGER_AT_MOST`].
    const LINGER_SHARE: u32 = 2;
    const LINGER_AT_MOST: Duration = Duration::from_millis(5);

    /// A commit taking longer than this is waiting on something beyond its own work.
    const SLOW: Duration = Duration::from_millis(100);

    pub(super) async fn run(self, mut rx: mpsc::UnboundedReceiver<Done>) {
        let me = &self;
        let mut commits = futures::stream::FuturesUnordered::new();
        // When each commit in flight started.
        let mut started: Vec<Instant> = Vec::new();
        let mut waiting: Vec<RunOutcome> = Vec::new();
        // When the first outcome now waiting arrived, and how long the last commit took.
        let mut waiting_since = Instant::now();
        let mut last_commit = Duration::ZERO;
        let mut open = true;
        let mut stopped = false;
        loop {
            let oldest = started.iter().min().copied();
            let lingering = match oldest {
                None if !stopped => linger(
                    &self.slots,
                    self.queued,
                    waiting.len(),
                    (waiting_since, last_commit),
                    Instant::now(),
                ),
                _ => None,
            };
            let start = !waiting.is_empty()
                && !stopped
                && match oldest {
                    None => lingering.is_none(),
                    Some(oldest) => {
                        started.len() < Self::IN_FLIGHT
                            && ((!self.queued && waiting.len() >= self.slots.concurrency())
                                || oldest.elapsed() >= Self::SLOW)
                    }
                };
            if start {
                // Handlers finishing at the same moment report in this batch, not the next.
                tokio::task::yield_now().await;
                Self::gather(&mut rx, &mut waiting);
                let rest = waiting.split_off(waiting.len().min(Self::MAX_BATCH));
                let batch = std::mem::replace(&mut waiting, rest);
                let at = Instant::now();
                started.push(at);
                commits.push(async move { (at, me.commit(&batch).await) });
                continue;
            }
            if commits.is_empty() && (stopped || (!open && waiting.is_empty())) {
                return;
            }
            // Outcomes behind one commit: look again once it turns slow (never once
            // stopped, when nothing new may start and a past deadline would spin).
            let slow_at = oldest
                .filter(|_| !stopped && !waiting.is_empty() && started.len() < Self::IN_FLIGHT)
                .map(|o| o + Self::SLOW)
                .or(lingering)
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                Some((at, ok)) = futures::StreamExt::next(&mut commits), if !commits.is_empty() => {
                    if let Some(i) = started.iter().position(|s| *s == at) {
                        started.swap_remove(i);
                    }
                    last_commit = at.elapsed();
                    // The worker stops: commits in flight end, nothing new starts.
                    stopped |= !ok;
                }
                d = rx.recv(), if open => match d {
                    Some(d) => {
                        if waiting.is_empty() {
                            waiting_since = Instant::now();
                        }
                        waiting.push(d.outcome);
                        Self::gather(&mut rx, &mut waiting);
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(slow_at.unwrap_or_else(tokio::time::Instant::now)),
                    if slow_at.is_some() => {}
                else => return,
            }
        }
    }

    /// Takes every outcome already sent, up to a batch's worth waiting.
    fn gather(rx: &mut mpsc::UnboundedReceiver<Done>, waiting: &mut Vec<RunOutcome>) {
        while waiting.len() < Self::MAX_BATCH {
            match rx.try_recv() {
                Ok(d) => waiting.push(d.outcome),
                Err(_) => break,
            }
        }
    }

    /// Commits one batch and refills the slots it frees; false when a failure retrying
    /// cannot fix stopped the worker (the batch's tasks then come back when their leases
    /// expire). A batch the store refuses for good is split, so that only the outcome it
    /// refuses fails its run (see [`Completer::isolate`]).
    async fn commit(&self, batch: &[RunOutcome]) -> bool {
        // The batch's own slots (less any prefetch slots being taken back), plus idle
        // ones: reuse them for what is ready now.
        self.slots.follow_pace();
        let mut slots = self.slots.reuse(batch.len());
        if !*self.stop.borrow() {
            slots += self.slots.take_idle();
        }
        let began = Instant::now();
        let outcome = match self.commit_retrying(batch, slots).await {
            Ok((reports, claims)) => {
                tracing::debug!(
                    finished = batch.len(),
                    claimed = claims.len(),
                    commit_us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "committed a batch"
                );
                self.counters.add_finished(&reports);
                self.slots.give_back(slots - claims.len());
                // Sent even when empty: the claim loop checks for idleness after commits.
                let _ = self.claimed.send(claims);
                self.log_refused(batch, &reports).await;
                return true;
            }
            Err(e) if e.is_about_the_database() => self.stop_with(e),
            Err(e) => self.isolate(batch, e).await,
        };
        self.slots.give_back(slots);
        let _ = self.claimed.send(Vec::new());
        outcome
    }

    /// Logs each success the store turned into a failure as it committed it (an output over
    /// its size limit, a spawn the plan cannot take), with the task's error: the handler
    /// returned normally, so nothing else says why its task failed. Rare, so the errors are
    /// read back (in one read, bounded) rather than carried on every report, once the
    /// commit's slots and claims are handed on.
    async fn log_refused(&self, batch: &[RunOutcome], reports: &[FinishReport]) {
        let refused: Vec<(TaskId, RunId)> = batch
            .iter()
            .zip(reports)
            .filter(|(o, r)| {
                matches!(o.outcome, Outcome::Success { .. })
                    && matches!(r.finished, hive_ops::store::Finished::Failed)
            })
            .filter_map(|(o, r)| Some((r.task_id?, o.run_id)))
            .collect();
        if refused.is_empty() {
            return;
        }
        let (client, worker) = (&self.client, &self.spec.worker);
        {
            let ids: Vec<TaskId> = refused.iter().map(|(t, _)| *t).collect();
            let read = tokio::time::timeout(REFUSED_READ_WITHIN, client.get_tasks(&ids)).await;
            let errors: std::collections::HashMap<TaskId, String> = match read {
                Ok(Ok(tasks)) => (tasks.into_iter())
                    .map(|t| (t.id, t.last_error.unwrap_or_default()))
                    .collect(),
                Ok(Err(e)) => {
                    tracing::warn!(worker = %worker, error = %e, "the refused outcomes' errors could not be read");
                    Default::default()
                }
                Err(_) => Default::default(),
            };
            for (task, run) in refused {
                let error = errors
                    .get(&task)
                    .map_or("(its error was not read)", String::as_str);
                tracing::warn!(
                    worker = %worker,
                    task = %task,
                    run = %run,
                    "task {task} failed as its outcome was committed: {error}"
                );
            }
        }
    }

    /// Commits `outcomes` and claims up to `slots` tasks (none once shutting down),
    /// retrying transient failures under capped backoff for as long as they last: nothing
    /// is lost while, say, the disk is full. Returns the first permanent error.
    async fn commit_retrying(
        &self,
        outcomes: &[RunOutcome],
        slots: usize,
    ) -> Result<(Vec<FinishReport>, Vec<Claimed>), crate::Error> {
        let mut backoff = Backoff::new("committing finished runs");
        let mut answer = AnswerWithin::new(self.spec.lease);
        loop {
            let want = if *self.stop.borrow() { 0 } else { slots };
            let recording = self.held.changing().await;
            let began = Instant::now();
            let commit = self.client.finish_and_claim(
                outcomes,
                &self.spec.worker,
                &self.spec.task_types,
                want as u32,
                self.spec.lease,
            );
            let committed = answer.call("a commit", commit).await;
            if let Ok((_, claims)) = &committed {
                self.slots.record_commit(began.elapsed());
                self.held.finished(outcomes.iter().map(|o| o.run_id));
                self.held.claimed(claims);
            }
            drop(recording);
            match committed {
                Ok(done) => {
                    backoff.succeeded(self.spec.worker.as_str());
                    return Ok(done);
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.failed(self.spec.worker.as_str(), &e);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A batch the store refused with a permanent error: commits its outcomes one by one,
    /// and fails the run of each one the store refuses on its own, with the store's error
    /// (its task fails for good: the same outcome would be refused again). Only when even
    /// that failure cannot be recorded does the worker stop.
    async fn isolate(&self, batch: &[RunOutcome], error: crate::Error) -> bool {
        let mut first = Some(error);
        for o in batch {
            let refused = match first.take().filter(|_| batch.len() == 1) {
                Some(e) => e,
                None => match self.commit_retrying(std::slice::from_ref(o), 0).await {
                    Ok((reports, _)) => {
                        self.counters.add_finished(&reports);
                        continue;
                    }
                    Err(e) if e.is_about_the_database() => return self.stop_with(e),
                    Err(e) => e,
                },
            };
            tracing::warn!(
                worker = %self.spec.worker,
                run = %o.run_id,
                error = %refused,
                "the store refused this run's outcome; the run fails with the error"
            );
            let failed = RunOutcome {
                run_id: o.run_id,
                outcome: Outcome::Failure {
                    error: format!("the store refused this run's outcome: {refused}"),
                    retry: None,
                },
                output_log: None,
                waited: o.waited,
            };
            match self.commit_retrying(std::slice::from_ref(&failed), 0).await {
                Ok((reports, _)) => self.counters.add_finished(&reports),
                Err(e) => return self.stop_with(e),
            }
        }
        true
    }

    /// Stops the worker with an error retrying cannot fix; always false (for `commit`).
    fn stop_with(&self, e: crate::Error) -> bool {
        self.fatal.set(e);
        self.shutdown.shutdown();
        false
    }
}

/// Until when the next commit should wait for more outcomes, when none is in flight:
/// while the runs still held should all report, at the handlers' pace, within the window
/// (the last commit's time divided by [`Completer::LINGER_SHARE`]), and no longer than the
/// window after the first outcome waiting arrived (`since`). Without it, quick handlers
/// split a worker's runs into two groups that take turns: the outcomes of the tasks a
/// commit just claimed arrive only after the next commit has started with the others', so
/// every commit carries half of what it could (plan-chains on SQLite: rounds of 21 and 41
/// outcomes where 32 and 68 runs were held). Only where the store queues write
/// transactions (`queued`, SQLite): elsewhere a full round behind a commit starts a second
/// one that overlaps it, and waiting only idles the database (one Postgres worker × 8:
/// 16,028–16,248 tasks/s without the wait, 13,424–17,195 with it). None: commit now.
fn linger(
    slots: &Slots,
    queued: bool,
    waiting: usize,
    (since, last_commit): (Instant, Duration),
    now: Instant,
) -> Option<Instant> {
    if !queued || waiting == 0 || waiting >= Completer::MAX_BATCH {
        return None;
    }
    let outstanding = slots.held().saturating_sub(waiting);
    if outstanding == 0 {
        return None;
    }
    let window = (last_commit / Completer::LINGER_SHARE).min(Completer::LINGER_AT_MOST);
    let until = since + window;
    (slots.time_to_report(outstanding)? <= window && now < until).then_some(until)
}

#[cfg(test)]
mod tests {
    use super::super::pace::Pace;
    use super::*;

    /// Four handlers whose calls took `each`, all four slots taken.
    fn busy(each: Duration) -> Slots {
        let pace = Pace::default();
        for _ in 0..4 {
            pace.record(each);
        }
        let slots = Slots::new(4, 0, pace);
        assert!(slots.take(4));
        slots
    }

    #[test]
    fn a_commit_waits_for_quick_handlers_still_running_for_at_most_its_window() {
        let at = Instant::now();
        let ms = Duration::from_millis;
        // The last commit took 4 ms: the window is 2 ms.
        let last = (at, ms(4));
        let quick = busy(Duration::from_micros(10));
        assert_eq!(
            linger(&quick, true, 1, last, at),
            Some(at + ms(2)),
            "one outcome waits, three quick runs are still out"
        );
        assert_eq!(linger(&quick, true, 1, last, at + ms(1)), Some(at + ms(2)));
        assert_eq!(
            linger(&quick, true, 1, last, at + ms(2)),
            None,
            "the window has passed"
        );
        assert_eq!(
            linger(&quick, true, 4, last, at),
            None,
            "every run held has reported"
        );
        assert_eq!(
            linger(&quick, false, 1, last, at),
            None,
            "a store whose commits overlap does not wait"
        );
        assert_eq!(
            linger(&quick, true, 1, (at, Duration::ZERO), at),
            None,
            "no commit timed yet"
        );
        assert_eq!(
            linger(&busy(ms(3)), true, 1, last, at),
            None,
            "runs due later than the window"
        );
        let unknown = Slots::new(4, 0, Pace::default());
        assert!(unknown.take(4));
        assert_eq!(
            linger(&unknown, true, 1, last, at),
            None,
            "the handlers' pace is not known yet"
        );
    }
}
