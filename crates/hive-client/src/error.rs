//! The one error type of hive-client.

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operation failed (bad input, not found, stale run, store failure).
    #[error(transparent)]
    Ops(#[from] hive_ops::Error),
}

impl Error {
    /// Whether retrying the same call later may succeed (see [`hive_ops::Error::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Ops(e) => e.is_transient(),
        }
    }

    /// Whether the database as a whole cannot be used, whatever the call's data (see
    /// [`hive_store::Error::is_about_the_database`]).
    pub fn is_about_the_database(&self) -> bool {
        match self {
            Error::Ops(e) => e.is_about_the_database(),
        }
    }
}

impl From<hive_store::Error> for Error {
    fn from(e: hive_store::Error) -> Self {
        Error::Ops(e.into())
    }
}

impl From<hive_models::Error> for Error {
    fn from(e: hive_models::Error) -> Self {
        Error::Ops(e.into())
    }
}

/// Result alias for client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
