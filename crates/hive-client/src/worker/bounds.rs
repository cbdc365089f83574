//! Bounds on the store calls a worker makes as it stops: a database that does not answer
//! (a silent partition holds a call until TCP gives up) must not keep it from stopping.

use std::time::Duration;

use super::runtime::Runtime;
use crate::backoff::Backoff;

/// How long the store calls of a shutdown at once may take, all told (see
/// [`super::ShutdownHandle::shutdown_now`]).
pub(super) const AT_ONCE_STORE_WAIT: Duration = Duration::from_secs(2);

/// How long a graceful shutdown retries its last store calls through transient faults
/// (see [`Runtime::at_shutdown`]).
pub(super) const SHUTDOWN_RETRY_FOR: Duration = Duration::from_secs(5);

/// How long a claim or a commit waits for the database before it is given up as a
/// transient fault: a connection cut silently gives no error until TCP gives up (about 15
/// minutes), and would hold the worker's claims or commits that long. Three leases, at
/// least 10 s, doubled each time it runs out so that a statement legitimately that slow (a
/// finish freeing a huge fan-out) gets its time on the next try. A claim that committed all
/// the same is given back by the held-runs check; a commit tried again finds its runs
/// finished (stale) or finishes them.
#[derive(Debug)]
pub(super) struct AnswerWithin {
    first: Duration,
    limit: Duration,
}

impl AnswerWithin {
    pub(super) fn new(lease: Duration) -> AnswerWithin {
        let first = lease.saturating_mul(3).max(Duration::from_secs(10));
        AnswerWithin {
            first,
            limit: first,
        }
    }

    /// `call`, or a transient `Unavailable` once the limit passes without an answer.
    pub(super) async fn call<T, E: From<hive_store::Error>>(
        &mut self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(answer) => {
                self.limit = self.first;
                answer
            }
            Err(_) => {
                let waited = self.limit;
                let cap = self.first.max(Duration::from_secs(3600));
                self.limit = self.limit.saturating_mul(2).min(cap);
                Err(hive_store::Error::Unavailable {
                    target: "the database".into(),
                    reason: format!("no answer to {what} within {waited:?}"),
                }
                .into())
            }
        }
    }
}

impl Runtime {
    /// A store call of the shutdown: once told to stop at once (before the call or during
    /// it), done within [`AT_ONCE_STORE_WAIT`] of being told or not at all (None), so a
    /// store that does not answer cannot keep the worker.
    pub(super) async fn bounded<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        let mut at_once = self.cfg.shutdown.subscribe_at_once();
        let mut call = std::pin::pin!(call);
        // The watch's guard is copied out of and dropped before anything else awaits.
        let told = tokio::select! {
            done = &mut call => return Some(done),
            told = at_once.wait_for(Option::is_some) => told.ok().and_then(|at| *at),
        };
        match told {
            Some(at) => tokio::time::timeout_at(at + AT_ONCE_STORE_WAIT, call)
                .await
                .ok(),
            None => Some(call.await),
        }
    }

    /// A call of the claim loop, given up [`AT_ONCE_STORE_WAIT`] after the worker is told
    /// to stop (it claims no more then anyway), and at once stopping at once: a claim stuck
    /// on a connection that no longer answers (a silent partition, which the driver only
    /// notices when TCP gives up) must not keep the worker from its drain. A claim that
    /// committed all the same is given back when the worker unregisters, or its leases run
    /// out.
    pub(super) async fn bounded_by_stop<T>(
        &self,
        call: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let mut stop = self.stop.clone();
        let mut call = std::pin::pin!(call);
        let told = tokio::select! {
            done = &mut call => return Some(done),
            told = stop.wait_for(|stopping| *stopping) => told.is_ok(),
        };
        if !told {
            return self.bounded(call).await;
        }
        tokio::time::timeout(AT_ONCE_STORE_WAIT, self.bounded(call))
            .await
            .ok()
            .flatten()
    }

    /// A last store call of a shutdown (giving back held tasks, unregistering), retried
    /// under backoff while its fault is transient, for up to [`SHUTDOWN_RETRY_FOR`] in all
    /// (a call that hangs included): a database that blips as the worker stops would
    /// otherwise leave its tasks waiting out their leases and the worker listed until a
    /// reaper marks it offline. Told to stop at once, it is not retried and is
    /// [`Self::bounded`]. `None`: not done in time.
    pub(super) async fn at_shutdown<T, Fut>(
        &self,
        what: &'static str,
        call: impl Fn() -> Fut,
    ) -> Option<hive_ops::Result<T>>
    where
        Fut: std::future::Future<Output = hive_ops::Result<T>>,
    {
        let until = tokio::time::Instant::now() + SHUTDOWN_RETRY_FOR;
        let mut backoff = Backoff::new(what);
        let mut at_once = self.cfg.shutdown.subscribe_at_once();
        loop {
            let attempt = tokio::time::timeout_at(until, self.bounded(call()));
            match attempt.await.ok().flatten()? {
                Err(e) if e.is_transient() && self.cfg.shutdown.at_once_since().is_none() => {
                    let retry_at =
                        tokio::time::Instant::now() + backoff.failed(self.id.as_str(), &e);
                    if retry_at > until {
                        return Some(Err(e));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(retry_at) => {}
                        _ = at_once.wait_for(Option::is_some) => return Some(Err(e)),
                    }
                }
                done => return Some(done),
            }
        }
    }
}
