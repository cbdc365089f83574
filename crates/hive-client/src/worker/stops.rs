//! The stop signals of the handlers running in one worker ([`Stops`]), and the runs the
//! worker gives back because it lost the store for longer than its lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_models::{IdMap, RunId};
use tokio::sync::watch;

/// A running handler's stop signal.
type Stop = Arc<watch::Sender<bool>>;

/// Why the worker told a handler to stop, when its run is to go back to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GiveBack {
    pub reason: String,
    /// The worker is stopping and its lease still holds: a handler that returns a result
    /// all the same has done its task, and that result is committed. (A worker cut off
    /// from its store gives the run back whatever the handler returns: another worker may
    /// be running the task by now.)
    pub keeps_result: bool,
}

#[derive(Debug, Default)]
struct Running {
    stops: IdMap<RunId, Stop>,
    /// Runs told to stop because the worker lost the store, with why: their outcome is a
    /// give-back, not a failure.
    given_back: IdMap<RunId, GiveBack>,
    /// Leases longer than the worker's that handlers asked for
    /// ([`super::TaskContext::extend_lease`]): such a run stays its worker's for that long
    /// after the last heartbeat.
    leases: IdMap<RunId, Duration>,
}

/// The stop signals of the handlers running in one worker, by run: how a cancellation
/// announced by the store, a run ended elsewhere, or a worker cut off from its store
/// reaches the code running it. Keyed by run, not task: a worker may still hold a run of a
/// task that was taken back from it (its outcome not yet reported) while it runs the
/// task's next run, and stopping the old run must leave the new one alone.
#[derive(Debug, Clone, Default)]
pub(super) struct Stops(Arc<Mutex<Running>>);

impl Stops {
    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the stop signal of the handler about to run `run`.
    pub(super) fn insert(&self, run: RunId, stop: Stop) {
        self.running().stops.insert(run, stop);
    }

    /// `run`'s handler has ended (or will not start): forgets its signal. Returns why the
    /// run is to be given back, if the worker stopped it for that.
    pub(super) fn remove(&self, run: RunId) -> Option<GiveBack> {
        let mut running = self.running();
        running.stops.remove(&run);
        running.leases.remove(&run);
        running.given_back.remove(&run)
    }

    /// `run`'s lease is now at least `lease` (a handler extended it).
    pub(super) fn lengthen(&self, run: RunId, lease: Duration) {
        let mut running = self.running();
        if running.stops.contains_key(&run) {
            let kept = running.leases.entry(run).or_default();
            *kept = (*kept).max(lease);
        }
    }

    /// Fires the stop signal of the handler running `run`; whether this call fired it (a
    /// handler runs it here and had not been told yet).
    pub(super) fn stop_run(&self, run: RunId) -> bool {
        self.running()
            .stops
            .get(&run)
            .is_some_and(|s| !s.send_replace(true))
    }

    /// Stops every handler not yet told to stop whose run's lease (the worker's `lease`, or
    /// the longer one its handler asked for) is shorter than `silent`, the time since the
    /// last heartbeat stored: its run may be another worker's by now, and is to be given
    /// back for `reason`. How many it stopped.
    pub(super) fn give_back_lapsed(
        &self,
        silent: Duration,
        lease: Duration,
        reason: &str,
    ) -> usize {
        self.stop_each(reason, false, |own| {
            silent > own.map_or(lease, |l| lease.max(l))
        })
    }

    /// Stops every handler not yet told to stop, the worker shutting down (`reason`): each
    /// run is given back unless its handler returns a result (see [`GiveBack`]). How many
    /// it stopped.
    pub(super) fn stop_for_shutdown(&self, reason: &str) -> usize {
        self.stop_each(reason, true, |_| true)
    }

    /// Stops the handlers not yet told to stop whose runs `pick` chooses (given the lease
    /// their handlers asked for, if any), recording their runs as to be given back.
    fn stop_each(
        &self,
        reason: &str,
        keeps_result: bool,
        pick: impl Fn(Option<Duration>) -> bool,
    ) -> usize {
        let mut running = self.running();
        let Running {
            stops,
            given_back,
            leases,
        } = &mut *running;
        let mut stopped = 0;
        for (run, stop) in stops.iter() {
            if pick(leases.get(run).copied()) && !stop.send_replace(true) {
                given_back.insert(
                    *run,
                    GiveBack {
                        reason: reason.to_owned(),
                        keeps_result,
                    },
                );
                stopped += 1;
            }
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(stops: &Stops) -> (RunId, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let run = RunId::new();
        stops.insert(run, Arc::new(tx));
        (run, rx)
    }

    #[test]
    fn stopping_a_run_taken_back_leaves_the_next_run_of_its_task_running() {
        // The worker still holds run 1 (its outcome not yet reported) when it claims the
        // task's run 2 after the lease ran out.
        let stops = Stops::default();
        let (old, old_rx) = running(&stops);
        let (_new, new_rx) = running(&stops);
        assert!(stops.stop_run(old));
        assert!(*old_rx.borrow());
        assert!(
            !*new_rx.borrow(),
            "the new run was stopped with the old one"
        );
        // Told once: the second call fires nothing.
        assert!(!stops.stop_run(old));
    }

    #[test]
    fn runs_told_to_stop_for_another_reason_are_not_given_back() {
        let stops = Stops::default();
        let (cancelled, _) = running(&stops);
        let (cut_off, cut_off_rx) = running(&stops);
        assert!(stops.stop_run(cancelled));
        let (lease, silent) = (Duration::from_secs(10), Duration::from_secs(11));
        assert_eq!(stops.give_back_lapsed(silent, lease, "cut off"), 1);
        assert!(*cut_off_rx.borrow());
        assert_eq!(
            stops.give_back_lapsed(silent, lease, "again"),
            0,
            "told once"
        );
        assert_eq!(stops.remove(cancelled), None);
        let back = stops.remove(cut_off).unwrap();
        assert_eq!(
            (back.reason.as_str(), back.keeps_result),
            ("cut off", false)
        );
        assert_eq!(stops.remove(cut_off), None);
    }

    #[test]
    fn a_run_whose_handler_lengthened_its_lease_is_kept_while_that_lease_holds() {
        let stops = Stops::default();
        let (long, long_rx) = running(&stops);
        let (short, short_rx) = running(&stops);
        stops.lengthen(long, Duration::from_secs(3 * 3600));
        let lease = Duration::from_secs(10);
        assert_eq!(
            stops.give_back_lapsed(Duration::from_secs(60), lease, "cut off"),
            1
        );
        assert!(*short_rx.borrow() && !*long_rx.borrow());
        assert_eq!(
            stops.give_back_lapsed(Duration::from_secs(4 * 3600), lease, "cut off"),
            1,
            "past its own lease too"
        );
        assert!(*long_rx.borrow());
        assert_eq!(stops.remove(short).unwrap().reason, "cut off");
    }

    #[test]
    fn a_shutdown_stops_the_handlers_not_told_yet_and_keeps_their_results() {
        let stops = Stops::default();
        let (cancelled, _) = running(&stops);
        let (busy, busy_rx) = running(&stops);
        assert!(stops.stop_run(cancelled));
        assert_eq!(stops.stop_for_shutdown("stopping"), 1);
        assert!(*busy_rx.borrow());
        assert_eq!(stops.stop_for_shutdown("again"), 0, "told once");
        assert_eq!(stops.remove(cancelled), None);
        let back = stops.remove(busy).unwrap();
        assert_eq!(
            (back.reason.as_str(), back.keeps_result),
            ("stopping", true)
        );
    }
}
