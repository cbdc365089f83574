//! The one error type of hive-ops.

use hive_models::RunId;

/// What an operation can fail with. Input errors come before any database call and
/// change nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input breaks a model rule (empty title, oversized payload, cyclic plan, …).
    #[error(transparent)]
    Invalid(hive_models::Error),
    /// The named row does not exist.
    #[error("{entity} `{id}` not found")]
    NotFound { entity: &'static str, id: String },
    /// The run is no longer its task's current run; the late worker must drop its result.
    #[error("stale run `{run_id}`: it is no longer the task's current run")]
    StaleRun { run_id: RunId },
    /// A flow rule for a task type nothing uses: most often a typo, which would limit
    /// nothing and leave the intended type unlimited.
    #[error(
        "unknown task type `{task_type}`: no task, worker or schedule uses it (check the \
         spelling, or allow a new type to set it before its first task)"
    )]
    UnknownTaskType { task_type: String },
    /// The store failed.
    #[error(transparent)]
    Store(hive_store::Error),
}

impl Error {
    /// Whether the same call may succeed later without anything changing: the store could
    /// not be reached, a lock or serialization race was lost, the disk was full.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_transient())
    }

    /// Whether the database as a whole cannot be used (see
    /// [`hive_store::Error::is_about_the_database`]).
    pub fn is_about_the_database(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_about_the_database())
    }

    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }
}

impl From<hive_models::Error> for Error {
    fn from(e: hive_models::Error) -> Self {
        Error::Invalid(e)
    }
}

impl From<hive_store::Error> for Error {
    fn from(e: hive_store::Error) -> Self {
        // Lift the store's portable variants so callers match on one enum.
        match e {
            hive_store::Error::Invalid(m) => Error::Invalid(m),
            hive_store::Error::NotFound { entity, id } => Error::NotFound { entity, id },
            hive_store::Error::StaleRun { run_id } => Error::StaleRun { run_id },
            other => Error::Store(other),
        }
    }
}

/// Result alias for operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
