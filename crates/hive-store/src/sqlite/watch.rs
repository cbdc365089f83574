//! Other processes' writes to the same SQLite file, noticed within milliseconds: SQLite
//! has no notifications across processes, but `PRAGMA data_version` on one connection
//! changes whenever any other connection commits. A watcher polls it every few
//! milliseconds (a read of the shared-memory WAL index, no disk access) and, when it moved
//! while this store committed nothing, announces [`Change::StoreChanged`]: a wake-up for
//! workers idle on the poll interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::SqlitePool;

use crate::{Change, Notification, Notifier};

/// How often the watcher looks.
const EVERY: Duration = Duration::from_millis(5);

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

    /// Starts the watcher unless one runs. It stops once nobody listens (or the database
    /// goes away); the next subscriber starts it again.
    pub(super) fn start(self: &Arc<Self>, reader: &SqlitePool, notifier: &Notifier) {
        if self.stopped.load(Ordering::SeqCst) || self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (watch, reader, notifier) = (self.clone(), reader.clone(), notifier.clone());
        tokio::spawn(async move {
            watch.run(reader, notifier).await;
            watch.running.store(false, Ordering::SeqCst);
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

    async fn run(&self, reader: SqlitePool, notifier: Notifier) {
        // `data_version` is per connection: the same one is read every time. A connection
        // of its own, so a small reader pool keeps all of its connections for reads.
        let options = reader.connect_options();
        let Ok(mut conn) = sqlx::ConnectOptions::connect(&*options).await else {
            return;
        };
        // The version last read with no commit of this store around it (`None`: none such
        // yet), and the commit count after that read.
        let mut seen: Option<i64> = None;
        let mut local = self.settled();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while notifier.receivers() > 0 && !self.stopped.load(Ordering::SeqCst) {
            tick.tick().await;
            let before = self.settled();
            let Ok(version) = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                .fetch_one(&mut conn)
                .await
            else {
                return;
            };
            let after = self.settled();
            // Only a change with no commit of this store since the last read, nor during this
            // one, is another process's: this store's own are announced already (and a
            // worker committing claims on its own anyway).
            let quiet = before.is_some() && local == before && before == after;
            if quiet && seen.is_some_and(|v| v != version) {
                notifier.forward(Notification {
                    origin: uuid::Uuid::nil(),
                    change: Change::StoreChanged,
                });
            }
            seen = (before.is_some() && before == after).then_some(version);
            local = after;
        }
        // Closed, not dropped: a dropped connection closes on its own thread later, which
        // a process exiting may cut short.
        let _ = sqlx::Connection::close(conn).await;
    }
}
