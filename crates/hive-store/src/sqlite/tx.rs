//! The writer's transactions, and the rule that a connection whose transaction could not be
//! ended cleanly never goes back to the pool.
//!
//! `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` are sent as plain statements on a pooled
//! connection rather than through sqlx's transaction manager. sqlx counts transaction depth
//! itself, and when SQLite ends a transaction on its own (a full disk fails the COMMIT and
//! rolls back), its follow-up `ROLLBACK` fails and the count stays at one for the
//! connection's life: every later `BEGIN` is refused ("non-zero transaction depth"), and a
//! transient fault becomes permanent. Here the only state is SQLite's: after a successful
//! `COMMIT` or `ROLLBACK` the connection is idle; after anything else (a failed `ROLLBACK`,
//! or the transaction's future dropped half-way) the connection is closed, and the pool
//! opens a fresh one for the next write.

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
    conn: PoolConnection<Sqlite>,
    /// `COMMIT` or `ROLLBACK` succeeded, or `BEGIN` was refused for a lock held elsewhere:
    /// the connection is idle and may be reused.
    ended: bool,
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
    pub async fn begin(pool: &SqlitePool) -> Result<WriteTx, sqlx::Error> {
        let mut tx = WriteTx {
            conn: pool.acquire().await?,
            ended: false,
        };
        match sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *tx.conn)
            .await
        {
            Ok(_) => Ok(tx),
            Err(e) => {
                tx.ended = db::is_busy(&e);
                Err(e)
            }
        }
    }

    /// Commits. On failure the transaction is rolled back (or the connection discarded), so
    /// nothing of it stays visible and the next write starts clean.
    pub async fn commit(mut self, faults: &Faults) -> Result<(), sqlx::Error> {
        let result = match injected(&faults.commit, "COMMIT") {
            Some(e) => Err(e),
            None => sqlx::raw_sql("COMMIT")
                .execute(&mut *self.conn)
                .await
                .map(drop),
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

    /// Rolls back; when that fails, the connection is discarded instead (SQLite may have
    /// ended the transaction itself, or the connection is broken: either way its state is
    /// not worth guessing).
    pub async fn rollback(mut self, faults: &Faults) {
        let result = match injected(&faults.rollback, "ROLLBACK") {
            Some(e) => Err(e),
            None => sqlx::raw_sql("ROLLBACK")
                .execute(&mut *self.conn)
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
    /// half-way) may still hold the write lock: its connection is closed, never reused.
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}
