//! The writer's transactions, and the rule that a connection whose transaction could not be
//! ended cleanly never goes back to the pool still inside it.
//!
//! `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` are sent as plain statements on a pooled
//! connection rather than through sqlx's transaction manager. sqlx counts transaction depth
//! itself, and when SQLite ends a transaction on its own (a full disk fails the COMMIT and
//! rolls back), its follow-up `ROLLBACK` fails and the count stays at one for the
//! connection's life: every later `BEGIN` is refused ("non-zero transaction depth"), and a
//! transient fault becomes permanent. Here the only state is SQLite's: after a successful
//! `COMMIT` or `ROLLBACK` the connection is idle; after anything else (a failed `ROLLBACK`,
//! or the transaction's future dropped half-way) a task of its own rolls it back before the
//! pool has it again, and closes it when even that fails, so the pool opens a fresh one —
//! unless the connection is the database (`:memory:`), which is kept, the next `begin`
//! rolling back what is left first.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::db;

/// Faults a test can inject into the next transaction's end (see
/// `SqliteStore::inject_fault`); never set otherwise.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub commit: AtomicBool,
    pub rollback: AtomicBool,
}

fn injected(flag: &AtomicBool, step: &str) -> Option<sqlx::Error> {
    flag.swap(false, Ordering::SeqCst)
        .then(|| sqlx::Error::Protocol(format!("injected fault on {step}")))
}

/// An open write transaction holding SQLite's write lock.
#[derive(Debug)]
pub(super) struct WriteTx {
    /// Taken only by `drop`.
    conn: Option<PoolConnection<Sqlite>>,
    /// `COMMIT` or `ROLLBACK` succeeded, or `BEGIN` was refused for a lock held elsewhere:
    /// the connection is idle and may be reused.
    ended: bool,
    /// The connection is the database (`:memory:`): never closed, whatever fails, since a
    /// new one would be a new, empty database.
    is_the_database: bool,
}

impl WriteTx {
    /// Takes the writer connection and the write lock. A `BEGIN` that fails for any reason
    /// but a lock held elsewhere (which leaves the connection idle) discards the connection.
    ///
    /// The transaction is owned from before `BEGIN` is sent: the connection's thread runs
    /// the statement even when this future is dropped while waiting for it (a worker's
    /// heartbeat aborted at shutdown), and a connection handed back to the pool with that
    /// transaction open made the next write fail ("cannot start a transaction within a
    /// transaction").
    ///
    /// A connection found still inside a transaction (one whose rollback failed and that
    /// could not be replaced: the in-memory database's) is rolled back and begun again.
    pub async fn begin(pool: &SqlitePool, is_the_database: bool) -> Result<WriteTx, sqlx::Error> {
        let mut tx = WriteTx {
            conn: Some(pool.acquire().await?),
            ended: false,
            is_the_database,
        };
        let mut began = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *tx).await;
        if began
            .as_ref()
            .is_err_and(|e| e.to_string().contains("within a transaction"))
        {
            tracing::debug!("the SQLite writer was left inside a transaction; rolling it back");
            sqlx::raw_sql("ROLLBACK").execute(&mut *tx).await?;
            began = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *tx).await;
        }
        match began {
            Ok(_) => Ok(tx),
            Err(e) => {
                tx.ended = db::is_busy(&e);
                Err(e)
            }
        }
    }

    /// Commits. On failure the transaction is rolled back (or the connection replaced), so
    /// nothing of it stays visible and the next write starts clean.
    pub async fn commit(mut self, faults: &Faults) -> Result<(), sqlx::Error> {
        let result = match injected(&faults.commit, "COMMIT") {
            Some(e) => Err(e),
            None => sqlx::raw_sql("COMMIT").execute(&mut *self).await.map(drop),
        };
        match result {
            Ok(()) => {
                self.ended = true;
                Ok(())
            }
            Err(e) => {
                self.rollback(faults).await;
                Err(e)
            }
        }
    }

    /// Rolls back; when that fails, the drop tries once more and tells the cases apart
    /// (SQLite may have ended the transaction itself, or the connection is broken).
    pub async fn rollback(mut self, faults: &Faults) {
        let result = match injected(&faults.rollback, "ROLLBACK") {
            Some(e) => Err(e),
            None => sqlx::raw_sql("ROLLBACK")
                .execute(&mut *self)
                .await
                .map(drop),
        };
        match result {
            Ok(()) => self.ended = true,
            // Expected after a full disk (SQLite rolled back already); the caller reports
            // the error that started it, so this is only worth a debug line.
            Err(e) => {
                tracing::debug!(error = %e, "rollback failed; replacing the SQLite writer connection");
            }
        }
    }
}

impl Drop for WriteTx {
    /// A transaction that did not end cleanly (a failed rollback, or its future dropped
    /// half-way) may still hold the write lock, and may still be running: a task of its own
    /// rolls it back, holding the connection (the pool's one writer) until then, so the
    /// next write waits for it and starts clean. Closing the connection instead would do
    /// for a file, but an in-memory database lives and dies with its one connection. The
    /// connection is closed only when the rollback fails for another reason than there
    /// being nothing to roll back (SQLite ended the transaction itself, or a `COMMIT` sent
    /// before the drop went through), or when no runtime is left to run it.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let keep = self.is_the_database;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            if !keep {
                conn.close_on_drop();
            }
            return;
        };
        runtime.spawn(async move {
            match sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("no transaction is active") => {}
                // Kept: the next `begin` rolls back what is left of the transaction.
                Err(e) if keep => {
                    tracing::warn!(error = %e, "rollback of a dropped write to the in-memory \
                        database failed; the next write rolls it back first");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "rollback of a dropped write failed; \
                        replacing the SQLite writer connection");
                    conn.close_on_drop();
                }
            }
        });
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.conn
            .as_ref()
            .expect("the connection is taken only when dropped")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_mut()
            .expect("the connection is taken only when dropped")
    }
}
