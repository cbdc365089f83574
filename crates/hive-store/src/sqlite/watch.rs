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
    local_commits: AtomicU64,
    running: AtomicBool,
}

impl Watch {
    /// Marks a commit of this store in progress (called before and after each).
    pub(super) fn committing(&self) {
        self.local_commits.fetch_add(1, Ordering::SeqCst);
    }

    /// Starts the watcher unless one runs. It stops once nobody listens (or the database
    /// goes away); the next subscriber starts it again.
    pub(super) fn start(self: &Arc<Self>, reader: &SqlitePool, notifier: &Notifier) {
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (watch, reader, notifier) = (self.clone(), reader.clone(), notifier.clone());
        tokio::spawn(async move {
            watch.run(reader, notifier).await;
            watch.running.store(false, Ordering::SeqCst);
        });
    }

    async fn run(&self, reader: SqlitePool, notifier: Notifier) {
        // `data_version` is per connection: the same one is read every time. A connection
        // of its own, so a small reader pool keeps all of its connections for reads.
        let options = reader.connect_options();
        let Ok(mut conn) = sqlx::ConnectOptions::connect(&*options).await else {
            return;
        };
        let mut seen: Option<i64> = None;
        let mut local = self.local_commits.load(Ordering::SeqCst);
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while notifier.receivers() > 0 {
            tick.tick().await;
            let Ok(version) = sqlx::query_scalar::<_, i64>("PRAGMA data_version")
                .fetch_one(&mut conn)
                .await
            else {
                return;
            };
            let now_local = self.local_commits.load(Ordering::SeqCst);
            // A change while this store also committed may be its own: its own commits are
            // announced already, and a busy worker claims on its own anyway.
            if seen.is_some_and(|v| v != version) && now_local == local {
                notifier.forward(Notification {
                    origin: uuid::Uuid::nil(),
                    change: Change::StoreChanged,
                });
            }
            seen = Some(version);
            local = now_local;
        }
    }
}
