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
    /// The blocking client could not start its runtime.
    #[error("the blocking client cannot start its runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// Whether retrying the same call later may succeed (see [`hive_ops::Error::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Ops(e) => e.is_transient(),
            Error::WorkerIdTaken { .. } | Error::Runtime(_) => false,
        }
    }

    /// Whether a row the call named does not exist (an unknown task, plan, run, …).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Ops(hive_ops::Error::NotFound { .. }))
    }

    /// Whether the input broke a model rule (an empty title, a cyclic plan, a transition
    /// the table forbids, …); nothing was changed.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Ops(hive_ops::Error::Invalid(_)))
    }

    /// Whether the run is no longer its task's current run (taken back, cancelled): its
    /// worker must drop the result.
    pub fn is_stale_run(&self) -> bool {
        matches!(
            self,
            Error::Ops(
                hive_ops::Error::StaleRun { .. }
                    | hive_ops::Error::Store(hive_store::Error::StaleRun { .. })
            )
        )
    }

    /// Whether the database as a whole cannot be used, whatever the call's data (see
    /// [`hive_store::Error::is_about_the_database`]).
    pub fn is_about_the_database(&self) -> bool {
        match self {
            Error::Ops(e) => e.is_about_the_database(),
            Error::WorkerIdTaken { .. } | Error::Runtime(_) => false,
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
