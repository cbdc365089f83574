//! Hive's persistence: the [`Store`] trait and its backends.
//!
//! Every operation that must stay correct under concurrent workers — claiming tasks and
//! opening their runs, finishing runs and updating tasks, plan counters and dependents,
//! reaping expired leases — is one trait method that each backend implements as one
//! transaction. Backends:
//!
//! - [`MemoryStore`]: one mutex over plain maps; for tests and single-process use.
//! - `SqliteStore` (feature `sqlite`, default): WAL, `BEGIN IMMEDIATE` for every write.
//! - `PostgresStore` (feature `postgres`): one-statement claims with `FOR UPDATE SKIP LOCKED`,
//!   LISTEN/NOTIFY for cross-process wake-ups.
//!
//! [`connect`] picks the backend from a URL (`memory:`, `sqlite:PATH`, `postgres://…`).

mod connect;
mod error;
mod flow;
mod memory;
mod notify;
mod rules;
mod schema;
mod store;
mod types;
mod url;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "testing")]
pub mod testing;

/// The longest [`Store::close`] waits for connections and background tasks to end.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub use connect::{ConnectOptions, connect, connect_with};
pub use error::{Error, Result};
pub use memory::MemoryStore;
pub use notify::{Change, NOTE_ERROR_LIMIT, Notification, Notifier, TaskStatusChange, note_error};
pub use schema::{MIGRATIONS_TABLE, SchemaPolicy};
#[cfg(feature = "mock")]
pub use store::MockStore;
pub use store::Store;
pub use types::*;
pub use url::DatabaseUrl;

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
#[cfg(all(feature = "sqlite", feature = "testing"))]
pub use sqlite::TxFault;

/// Re-exported so callers name one crate for the models the store persists.
pub use hive_models as models;
