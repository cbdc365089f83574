//! What both SQL backends share: their internal failure type (a driver error, mapped to a
//! portable [`Error`] only at the trait boundary where the backend knows its target, or an
//! error that already is portable), and the mapping of the driver errors they see alike.

use sqlx::error::DatabaseError;

use crate::Error;

#[derive(Debug)]
pub(crate) enum Fail {
    Sql(sqlx::Error),
    Store(Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Store(e)
    }
}

impl From<hive_models::Error> for Fail {
    fn from(e: hive_models::Error) -> Self {
        Fail::Store(Error::Invalid(e))
    }
}

pub(crate) type R<T> = std::result::Result<T, Fail>;

/// Maps a driver error onto the portable variants; an error the database itself returned
/// goes to `database`, which knows the backend's codes. `target` names the database (a path
/// or `host:port`), never credentials: sqlx's messages never carry the URL.
pub(crate) fn map_driver(
    e: sqlx::Error,
    target: &str,
    database: impl FnOnce(Box<dyn DatabaseError>) -> Error,
) -> Error {
    use sqlx::Error as E;
    match e {
        // Closed by this process (shutting down): retrying would spin until it exits.
        E::PoolClosed => Error::Closed {
            target: target.to_owned(),
        },
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::WorkerCrashed => Error::Unavailable {
            target: target.to_owned(),
            reason: e.to_string(),
        },
        E::Database(db) => database(db),
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => Error::Corrupt {
            table: "query result",
            reason: e.to_string(),
        },
        E::Migrate(m) => Error::Migration(m.to_string()),
        other => Error::Database(other.to_string()),
    }
}
