//! What this worker knows it holds, and the check that keeps the store's view equal to it.
//!
//! A run is held from the moment a claim returns it until its outcome is committed. Two
//! things can make the store disagree: a claim whose transaction committed but whose reply
//! never arrived (the connection died at that instant) leaves runs the store says this
//! worker holds and the worker has never heard of — heartbeats would keep their leases
//! alive for as long as the worker lives; and a run ended elsewhere (a task cancelled from
//! another process, a lease taken back) whose handler still runs here. [`Held::reconcile`]
//! gives the first back and stops the second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_models::{IdMap, IdSet, RunId, TaskId, WorkerId};
use hive_ops::Claimed;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use super::stops::Stops;
use crate::Client;

/// The runs this worker holds, and a gate that keeps the store's view and this one
/// comparable: every store call that can claim or finish runs holds it shared until this
/// record is updated; the check holds it exclusively while it reads both, so it never sees
/// a claim committed but not yet recorded, or an outcome recorded but not yet committed.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    runs: Arc<Mutex<IdMap<RunId, TaskId>>>,
    gate: Arc<RwLock<()>>,
    /// When each call holding the gate shared began, by a number of its own.
    calls: Arc<Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>>,
}

/// A claim or commit holding [`Held`]'s gate shared: its start noted until it drops.
pub(super) struct Changing {
    _gate: OwnedRwLockReadGuard<()>,
    calls: Arc<Mutex<std::collections::BTreeMap<u64, tokio::time::Instant>>>,
    call: u64,
}

impl Drop for Changing {
    fn drop(&mut self) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.call);
    }
}

/// What one check found.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reconciled {
    /// Runs the store had this worker holding unknown to it, now given back.
    pub(super) released: Vec<TaskId>,
    /// Tasks whose run ended elsewhere while their handler ran here; told to stop.
    pub(super) stopped: Vec<TaskId>,
}

impl Held {
    /// How long the check waits for in-flight claims and commits before it skips a round:
    /// a call stuck on a dead connection must not hold up the heartbeat behind it.
    const WAIT: Duration = Duration::from_secs(1);
    /// How long the check's read of the store may hold the gate.
    const READ: Duration = Duration::from_secs(2);

    fn map(&self) -> std::sync::MutexGuard<'_, IdMap<RunId, TaskId>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken around a store call that claims or finishes runs, and kept until
    /// [`Held::claimed`] / [`Held::finished`] record its result.
    pub(super) async fn changing(&self) -> Changing {
        let gate = self.gate.clone().read_owned().await;
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let call = calls.last_key_value().map_or(0, |(n, _)| n.wrapping_add(1));
        calls.insert(call, tokio::time::Instant::now());
        Changing {
            _gate: gate,
            calls: self.calls.clone(),
            call,
        }
    }

    /// Whether a call holding the gate has run longer than the check would wait: one stuck
    /// on a dead connection. Queueing for the gate behind it would hold every other claim
    /// and commit back (the gate lets no reader past a waiting writer).
    fn a_call_hangs(&self) -> bool {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.values().any(|began| began.elapsed() >= Self::WAIT)
    }

    pub(super) fn claimed(&self, claims: &[Claimed]) {
        self.map()
            .extend(claims.iter().map(|c| (c.run.id, c.task.id)));
    }

    /// Runs whose outcome is committed (or which were released): no longer held.
    pub(super) fn finished(&self, runs: impl IntoIterator<Item = RunId>) {
        let mut map = self.map();
        for r in runs {
            map.remove(&r);
        }
    }

    /// Compares the store's view of what this worker holds with its own: gives back runs
    /// it never heard of, and fires the stop signal of handlers whose run ended elsewhere.
    pub(super) async fn reconcile(
        &self,
        client: &Client,
        worker: &WorkerId,
        stops: &Stops,
    ) -> crate::Result<Reconciled> {
        if self.a_call_hangs() {
            return Ok(Reconciled::default());
        }
        let Ok(gate) = tokio::time::timeout(Self::WAIT, self.gate.write()).await else {
            return Ok(Reconciled::default());
        };
        // Every claim and commit waits while the gate is held: a read stuck on a dead
        // connection skips this round rather than stop the worker's work behind it.
        let Ok(stored) = tokio::time::timeout(Self::READ, client.running_runs(worker)).await else {
            tracing::warn!(worker = %worker, "reading the runs held took over {:?}: check skipped", Self::READ);
            return Ok(Reconciled::default());
        };
        let stored = stored?;
        let known = self.map().clone();
        drop(gate);
        let in_store: IdSet<RunId> = stored.iter().map(|r| r.id).collect();
        let unknown: Vec<RunId> = stored
            .iter()
            .filter(|r| !known.contains_key(&r.id))
            .map(|r| r.id)
            .collect();
        let mut found = Reconciled::default();
        for (run, task) in &known {
            if !in_store.contains(run) && stops.stop_run(*run) {
                found.stopped.push(*task);
            }
        }
        if !unknown.is_empty() {
            // Never handed to a handler here, so their starts leave the rate windows too.
            found.released = client.release_unstarted_runs(&unknown).await?;
            tracing::warn!(
                worker = %worker,
                released = found.released.len(),
                "gave back runs this worker was never told it claimed (a claim's reply was lost)"
            );
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    /// A claim or commit holding the gate longer than the check waits counts as hanging:
    /// the check skips its round rather than queue behind it, which would hold back every
    /// other claim and commit.
    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_checks_wait_counts_as_hanging() {
        let held = Held::default();
        assert!(!held.a_call_hangs());
        let call = held.changing().await;
        let other = held.changing().await;
        assert!(!held.a_call_hangs());
        drop(other);
        tokio::time::advance(Held::WAIT).await;
        assert!(held.a_call_hangs());
        drop(call);
        assert!(!held.a_call_hangs());
    }
}
