//! The one error type of hive-store, with portable variants: callers never see SQLSTATEs.

use hive_models::RunId;

/// What a store operation can fail with. Backends map their driver errors onto these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named row does not exist.
    #[error("{entity} `{id}` not found")]
    NotFound { entity: &'static str, id: String },
    /// The change conflicts with what is stored (a unique key: a schedule's name taken).
    /// Nothing was written, and the same call fails again until that row changes.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The call lost to concurrent ones (a deadlock, a serialization failure, a lock or
    /// statement timeout, a row that kept changing under it): nothing was written, and the
    /// same call may well succeed when tried again.
    #[error("contended: {0}")]
    Contended(String),
    /// The input breaks a model rule; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] hive_models::Error),
    /// The run is no longer its task's current run (reaped, released or cancelled and
    /// possibly re-claimed): its worker must not finish or extend the task.
    #[error("stale run `{run_id}`: it is no longer the task's current run")]
    StaleRun { run_id: RunId },
    /// The database cannot be reached. `target` names host and port, never credentials.
    #[error("database unavailable at {target}: {reason}")]
    Unavailable { target: String, reason: String },
    /// The disk or the database is full (`SQLITE_FULL`, Postgres `disk_full`). Nothing was
    /// written; the same call succeeds once room is made, so it is transient.
    #[error("storage full at {target}: {reason}")]
    StorageFull { target: String, reason: String },
    /// The database as configured cannot be used, and retrying will not change that: a
    /// missing file or directory, a read-only file asked to write, a refused login, an
    /// unknown database, a database that is not Hive's.
    #[error("cannot use the database at {target}: {reason}")]
    Misconfigured { target: String, reason: String },
    /// The store was closed ([`crate::Store::close`]) and takes no more calls: the
    /// process is shutting down, so no retry can succeed.
    #[error("the store for {target} is closed")]
    Closed { target: String },
    /// A URL this build cannot open.
    #[error("unsupported database url `{0}`: expected memory:, sqlite:PATH or postgres://…")]
    UnsupportedUrl(String),
    /// Applying the schema migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database refused the data of this one call (a constraint it checks, a value out
    /// of its range): the same call will fail again, other calls are unaffected.
    #[error("the database refused the data: {0}")]
    Rejected(String),
    /// Stored data that the models cannot represent (a corrupt row, an unknown status).
    #[error("corrupt data in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// Any other database error, with the driver's message.
    #[error("database error: {0}")]
    Database(String),
}

impl Error {
    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// Whether retrying the same call later may succeed (connection loss, a lost race or
    /// lock timeout, a full disk). A [`Error::Conflict`] is not: the row in the way stays.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Contended(_) | Error::StorageFull { .. }
        )
    }

    /// Whether the database as a whole cannot be used (misconfigured, not migrated): no
    /// call will succeed, whatever its data, until an operator acts. Other permanent errors
    /// may be about one call's data.
    pub fn is_about_the_database(&self) -> bool {
        matches!(
            self,
            Error::Misconfigured { .. }
                | Error::UnsupportedUrl(_)
                | Error::Migration(_)
                | Error::Closed { .. }
        )
    }
}

/// Result alias for store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn a_lost_race_is_retried_and_a_taken_name_is_not() {
        assert!(Error::Contended("deadlock detected".into()).is_transient());
        assert!(!Error::Conflict("a schedule named `x` exists".into()).is_transient());
    }
}
