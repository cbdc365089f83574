//! Other processes' writes to the same SQLite file, noticed within milliseconds: SQLite
//! has no notifications across processes, but `PRAGMA data_version` on one connection
//! changes whenever any other connection commits. A watcher polls it every few
//! milliseconds (a read of the shared-memory WAL index, no disk access) and, when it moved
//! while this store committed nothing, announces [`Change::StoreChanged`]: a wake-up for
//! workers idle on the poll interval. After a second with no other process's commit it
//! looks less often (up to every [`IDLE_EVERY`]), so an idle worker costs next to no CPU;
//! the first such commit seen brings it back to [`EVERY`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::SqlitePool;

use crate::{Change, Notification, Notifier};

/// How often the watcher looks while other processes write to the file.
const EVERY: Duration = Duration::from_millis(5);
/// How often it looks once nothing changed for [`QUIET`]: the longest a task another
/// process creates waits for an idle worker to notice it.
const IDLE_EVERY: Duration = Duration::from_millis(40);
/// How long nothing must change before the watcher slows down.
const QUIET: Duration = Duration::from_secs(1);

/// The watcher's pace: [`EVERY`] while other processes commit, slowing by doubling to
/// [`IDLE_EVERY`] after [`QUIET`] without such a commit.
#[derive(Debug)]
struct Pace {
    every: Duration,
    quiet_for: Duration,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            every: EVERY,
            quiet_for: Duration::ZERO,
        }
    }

    /// The wait before the next look, after a look that saw another process's commit
    /// (`foreign`) or not.
    fn next(&mut self, foreign: bool) -> Duration {
        if foreign {
            *self = Pace::new();
        } else {
            self.quiet_for += self.every;
            if self.quiet_for >= QUIET {
                self.every = (self.every * 2).min(IDLE_EVERY);
            }
        }
        self.every
    }
}

/// The commits this store made (so its own writes are not announced twice), and whether a
/// watcher runs.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Commits of this store under way, and done.
    committing: AtomicU64,
    committed: AtomicU64,
    running: AtomicBool,
    /// Set by the store's close: no watcher runs again.
    stopped: AtomicBool,
}

impl Watch {
    /// Runs `commit`, marked as this store's own for the watcher from before it starts
    /// until after it ended.
    pub(super) async fn own<T>(&self, commit: impl std::future::Future<Output = T>) -> T {
        /// Ends the mark even when the commit's future is dropped half-way.
        struct Mark<'a>(&'a Watch);
        impl Drop for Mark<'_> {
            fn drop(&mut self) {
                self.0.committed.fetch_add(1, Ordering::SeqCst);
                self.0.committing.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.committing.fetch_add(1, Ordering::SeqCst);
        let _mark = Mark(self);
        commit.await
    }

    /// The commits done so far, or `None` while one is under way.
    fn settled(&self) -> Option<u64> {
        let done = self.committed.load(Ordering::SeqCst);
        (self.committing.load(Ordering::SeqCst) == 0).then_some(done)
    }

    /// Starts the watcher unless one runs. It stops once nobody listens, the store closes
    /// or is dropped; the next subscriber starts it again. A connection that fails is
    /// opened again under backoff: a moment's fault must not end cross-process wake-ups
    /// for the life of the process.
    pub(super) fn start(self: &Arc<Self>, reader: &SqlitePool, notifier: &Notifier) {
        if self.stopped.load(Ordering::SeqCst) || self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        // Weak: a store dropped without closing ends its watcher, whose notifier would
        // otherwise keep the store's channel (and its forwarder) alive.
        let (watch, reader, notifier) = (Arc::downgrade(self), reader.clone(), notifier.clone());
        tokio::spawn(async move {
            /// Clears `running` however the task ends (its runtime shutting down drops it).
            struct Running(Weak<Watch>);
            impl Drop for Running {
                fn drop(&mut self) {
                    if let Some(w) = self.0.upgrade() {
                        w.running.store(false, Ordering::SeqCst);
                    }
                }
            }
            let _running = Running(watch.clone());
            let mut retry = RETRY_FIRST;
            loop {
                match watch_once(&watch, &reader, &notifier).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "watching the SQLite file for other processes' \
                            commits failed; trying again in {retry:?} (workers poll meanwhile)");
                    }
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                if wanted(&watch, &notifier).is_none() {
                    return;
                }
            }
        });
    }

    /// Stops the watcher for good and waits (bounded) until its connection is closed.
    pub(super) async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(crate::CLOSE_WAIT, async {
            while self.running.load(Ordering::SeqCst) {
                tokio::time::sleep(EVERY).await;
            }
        })
        .await;
    }
}

/// The first wait before a failed watcher connects again, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The watch, while it is wanted: its store alive and open, and someone listening.
fn wanted(watch: &Weak<Watch>, notifier: &Notifier) -> Option<Arc<Watch>> {
    let w = watch.upgrade()?;
    (notifier.receivers() > 0 && !w.stopped.load(Ordering::SeqCst)).then_some(w)
}

/// Watches on one connection until the watch is no longer wanted (`Ok`) or the connection
/// fails.
async fn watch_once(
    watch: &Weak<Watch>,
    reader: &SqlitePool,
    notifier: &Notifier,
) -> Result<(), sqlx::Error> {
    // `data_version` is per connection: the same one is read every time. A connection of
    // its own, so a small reader pool keeps all of its connections for reads.
    let options = reader.connect_options();
    let mut conn = sqlx::ConnectOptions::connect(&*options).await?;
    let watched = watch_on(watch, &mut conn, notifier).await;
    // Closed, not dropped: a dropped connection closes on its own thread later, which a
    // process exiting may cut short.
    let _ = sqlx::Connection::close(conn).await;
    watched
}

async fn watch_on(
    watch: &Weak<Watch>,
    conn: &mut sqlx::SqliteConnection,
    notifier: &Notifier,
) -> Result<(), sqlx::Error> {
    // The version last read with no commit of this store around it (`None`: none such
    // yet), and the commit count after that read.
    let mut seen: Option<i64> = None;
    let Some(mut local) = wanted(watch, notifier).map(|w| w.settled()) else {
        return Ok(());
    };
    let mut pace = Pace::new();
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let Some(w) = wanted(watch, notifier) else {
            return Ok(());
        };
        let before = w.settled();
        let version = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut *conn)
            .await?;
        let after = w.settled();
        drop(w);
        // Only a change with no commit of this store since the last read, nor during this
        // one, is another process's: this store's own are announced already (and a worker
        // committing claims on its own anyway).
        let quiet = before.is_some() && local == before && before == after;
        let foreign = quiet && seen.is_some_and(|v| v != version);
        if foreign {
            notifier.forward(Notification {
                origin: uuid::Uuid::nil(),
                change: Change::StoreChanged,
            });
        }
        // Only another process's commit keeps the pace up: an idle worker's own heartbeats
        // and empty claims commit every second or so, and a busy worker claims on its own
        // without being told.
        seen = (before.is_some() && before == after).then_some(version);
        local = after;
        wait = pace.next(foreign);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watcher_slows_down_only_after_a_quiet_second_and_speeds_up_at_once() {
        let mut pace = Pace::new();
        let quiet_looks = (QUIET.as_millis() / EVERY.as_millis()) as usize;
        for _ in 1..quiet_looks {
            assert_eq!(pace.next(false), EVERY);
        }
        let mut slower: Vec<_> = (0..6).map(|_| pace.next(false)).collect();
        slower.dedup();
        assert_eq!(
            slower,
            [10, 20, 40].map(Duration::from_millis),
            "doubling up to the idle pace"
        );
        assert_eq!(pace.next(true), EVERY);
        assert_eq!(
            pace.next(false),
            EVERY,
            "a change restarts the quiet second"
        );
    }
}
