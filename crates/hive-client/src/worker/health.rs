//! How a running worker is doing, for an orchestrator's probes: [`HealthHandle`] (from
//! [`super::WorkerBuilder::health_handle`]) and the two questions it answers, whether the
//! worker is alive and whether it is ready.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPhase {
    /// [`super::WorkerBuilder::run`] has not been called yet.
    NotStarted,
    /// Registering: waiting for the store to answer.
    Registering,
    /// Claiming and running tasks.
    Running,
    /// Told to stop: finishing or giving back what it holds.
    Stopping,
    /// Its `run` has returned.
    Stopped,
}

/// A worker's state as its probes see it; from [`HealthHandle::get`].
#[derive(Debug, Clone)]
pub struct WorkerHealth {
    /// Where the worker is in its life.
    pub phase: WorkerPhase,
    /// When the heartbeat loop last began a beat.
    pub last_attempt: Option<Instant>,
    /// When a beat (or the registration) was last stored.
    pub last_beat: Option<Instant>,
    /// Why the last beat failed, if it did.
    pub last_error: Option<String>,
    /// How often the worker beats.
    pub heartbeat_every: Duration,
    /// The worker's lease: a worker whose beats have failed for this long holds tasks
    /// other workers may already be taking back.
    pub lease: Duration,
}

/// However often a worker beats, its loop may be this late before it counts as wedged:
/// a beat is one short statement, and a slow store makes it late, not stuck.
const WEDGED_AFTER_AT_LEAST: Duration = Duration::from_secs(30);

impl WorkerHealth {
    /// How long the heartbeat loop may go without beginning a beat before the worker
    /// counts as wedged: three beats, and at least 30 s.
    pub fn wedged_after(&self) -> Duration {
        self.heartbeat_every
            .saturating_mul(3)
            .max(WEDGED_AFTER_AT_LEAST)
    }

    /// Whether the worker's process is worth keeping (a liveness probe): it has not
    /// stopped, and once running its heartbeat loop keeps beginning beats, whether or not
    /// the store answers them (restarting a worker does not bring a database back). An
    /// error names what is wrong: a loop that stopped turning is a worker wedged, say by a
    /// handler that blocks its threads.
    pub fn alive(&self, now: Instant) -> Result<(), String> {
        match self.phase {
            WorkerPhase::Stopped => Err("the worker has stopped".into()),
            WorkerPhase::NotStarted | WorkerPhase::Registering => Ok(()),
            WorkerPhase::Running | WorkerPhase::Stopping => match self.last_attempt {
                Some(at) if now.saturating_duration_since(at) > self.wedged_after() => {
                    Err(format!(
                        "wedged: no heartbeat begun for {}s (one is due every {:.1}s)",
                        now.saturating_duration_since(at).as_secs(),
                        self.heartbeat_every.as_secs_f64()
                    ))
                }
                _ => Ok(()),
            },
        }
    }

    /// Whether the worker is doing its work (a readiness probe): it runs, and the store
    /// stored its last beat within its lease. An error names what is wrong.
    pub fn ready(&self, now: Instant) -> Result<(), String> {
        match self.phase {
            WorkerPhase::NotStarted => return Err("not started".into()),
            WorkerPhase::Registering => {
                return Err(match &self.last_error {
                    Some(e) => format!("registering: {e}"),
                    None => "registering".into(),
                });
            }
            WorkerPhase::Stopping => return Err("stopping".into()),
            WorkerPhase::Stopped => return Err("stopped".into()),
            WorkerPhase::Running => {}
        }
        self.alive(now)?;
        let since = self
            .last_beat
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        if since <= self.lease {
            return Ok(());
        }
        let error = self.last_error.as_deref().unwrap_or("no answer yet");
        Err(format!(
            "no heartbeat stored for {}s, longer than the lease ({}s): {error}",
            since.as_secs(),
            self.lease.as_secs()
        ))
    }
}

/// A running worker's health, readable from anywhere (an HTTP probe, say); cheap to clone.
#[derive(Debug, Clone)]
pub struct HealthHandle(Arc<Mutex<WorkerHealth>>);

impl Default for HealthHandle {
    fn default() -> HealthHandle {
        HealthHandle::new()
    }
}

impl HealthHandle {
    /// A handle for a worker not started yet (alive, not ready), to serve probes from
    /// before the worker can be built (its database not up yet); give it to the worker
    /// with [`crate::WorkerBuilder::health`].
    pub fn new() -> HealthHandle {
        HealthHandle(Arc::new(Mutex::new(WorkerHealth {
            phase: WorkerPhase::NotStarted,
            last_attempt: None,
            last_beat: None,
            last_error: None,
            heartbeat_every: Duration::ZERO,
            lease: Duration::ZERO,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WorkerHealth> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's health as it stands.
    pub fn get(&self) -> WorkerHealth {
        self.state().clone()
    }

    /// [`WorkerHealth::alive`], now.
    pub fn alive(&self) -> Result<(), String> {
        self.get().alive(Instant::now())
    }

    /// [`WorkerHealth::ready`], now.
    pub fn ready(&self) -> Result<(), String> {
        self.get().ready(Instant::now())
    }

    pub(super) fn starting(&self, heartbeat_every: Duration, lease: Duration) {
        let mut s = self.state();
        s.phase = WorkerPhase::Registering;
        s.heartbeat_every = heartbeat_every;
        s.lease = lease;
    }

    pub(super) fn phase(&self, phase: WorkerPhase) {
        self.state().phase = phase;
    }

    /// A beat (or the registration) is about to be sent.
    pub(super) fn attempting(&self) {
        self.state().last_attempt = Some(Instant::now());
    }

    /// What became of the beat (or registration) last attempted. A stored beat counts from
    /// when it was sent: the database extends the leases from its own clock as the beat
    /// arrives, not when the answer does, so a slow answer must not make them look longer.
    pub(super) fn beat(&self, outcome: Result<(), String>) {
        let mut s = self.state();
        match outcome {
            Ok(()) => {
                s.last_beat = Some(s.last_attempt.unwrap_or_else(Instant::now));
                s.last_error = None;
            }
            Err(e) => s.last_error = Some(e),
        }
    }
}

/// Sets the worker's phase to [`WorkerPhase::Stopped`] when its run ends, however it ends.
pub(super) struct StoppedOnDrop(pub(super) HealthHandle);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.phase(WorkerPhase::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(beat: Duration) -> (HealthHandle, Instant) {
        let h = HealthHandle::new();
        h.starting(beat, Duration::from_secs(10));
        h.attempting();
        h.beat(Ok(()));
        h.phase(WorkerPhase::Running);
        (h, Instant::now())
    }

    #[test]
    fn a_running_worker_is_ready_until_its_beats_fail_for_a_lease() {
        let (h, at) = running(Duration::from_secs(3));
        assert_eq!(h.get().ready(at), Ok(()));
        h.attempting();
        h.beat(Err("database unavailable".into()));
        let s = h.get();
        assert_eq!(
            s.ready(at + Duration::from_secs(9)),
            Ok(()),
            "within the lease"
        );
        assert_eq!(
            s.ready(at + Duration::from_secs(11)),
            Err(
                "no heartbeat stored for 11s, longer than the lease (10s): database unavailable"
                    .into()
            )
        );
        assert_eq!(
            s.alive(at + Duration::from_secs(11)),
            Ok(()),
            "a store that does not answer is no reason to restart"
        );
    }

    #[test]
    fn a_worker_whose_beats_stop_beginning_is_wedged() {
        let (h, at) = running(Duration::from_secs(20));
        let s = h.get();
        assert_eq!(s.alive(at + Duration::from_secs(59)), Ok(()));
        assert_eq!(
            s.alive(at + Duration::from_secs(61)),
            Err("wedged: no heartbeat begun for 61s (one is due every 20.0s)".into())
        );
        assert!(s.ready(at + Duration::from_secs(61)).is_err());
    }

    #[test]
    fn starting_and_stopping_are_alive_but_not_ready() {
        let h = HealthHandle::new();
        let now = Instant::now();
        assert_eq!(h.get().alive(now), Ok(()));
        assert_eq!(h.get().ready(now), Err("not started".into()));
        h.starting(Duration::from_secs(3), Duration::from_secs(10));
        h.beat(Err("connection refused".into()));
        assert_eq!(
            h.get().ready(now),
            Err("registering: connection refused".into())
        );
        h.phase(WorkerPhase::Stopping);
        assert_eq!(h.get().ready(now), Err("stopping".into()));
        drop(StoppedOnDrop(h.clone()));
        assert_eq!(h.get().alive(now), Err("the worker has stopped".into()));
    }
}
