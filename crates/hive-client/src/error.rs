//! The one error type of hive-client.

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operation failed (bad input, not found, stale run, store failure).
    #[error(transparent)]
    Ops(#[from] hive_ops::Error),
    /// Another process registered this worker's id while it ran; the worker stopped and
    /// left the id to it.
    #[error(
        "worker id `{worker}` was registered by another process (pid {pid}) while this one \
         ran: two processes must not share a worker id; give each its own"
    )]
    WorkerIdTaken {
        /// The worker id both processes were given.
        worker: String,
        /// The other process's pid, as its registration gave it (`unknown` if it gave none).
        pid: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (see [`hive_ops::Error::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Ops(e) => e.is_transient(),
            Error::WorkerIdTaken { .. } => false,
        }
    }

    /// Whether the database as a whole cannot be used, whatever the call's data (see
    /// [`hive_store::Error::is_about_the_database`]).
    pub fn is_about_the_database(&self) -> bool {
        match self {
            Error::Ops(e) => e.is_about_the_database(),
            Error::WorkerIdTaken { .. } => false,
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
