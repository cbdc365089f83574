//! The batching completer: commits finished handlers' outcomes in batches and, in the same
//! transaction, claims new tasks for the slots the batch frees.

use std::sync::Arc;
use std::time::Duration;

use hive_models::WorkerId;
use hive_ops::Claimed;
use hive_ops::store::RunOutcome;
use tokio::sync::{mpsc, watch};

use super::report::Counters;
use super::slots::Slots;
use crate::Client;
use crate::backoff::{Backoff, Fatal};

/// A finished handler's outcome, on its way to the batching completer. Its slot stays taken
/// until the outcome is committed: a worker never holds more than `concurrency` leases.
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
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) fatal: Fatal,
    pub(super) claimed: mpsc::UnboundedSender<Vec<Claimed>>,
}

impl Completer {
    const MAX_BATCH: usize = 512;

    pub(super) async fn run(self, mut rx: mpsc::UnboundedReceiver<Done>) {
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
            slots += self.slots.take_idle();
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
                    self.counters.add_finished(&reports);
                    self.slots.give_back(slots - claims.len());
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
}
