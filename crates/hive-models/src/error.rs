//! The one error type of hive-models: everything a pure rule can reject.

/// A rule of the models was broken. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A status name that is not one of the enum's snake_case names.
    #[error("unknown {kind} status `{value}`; expected one of: {expected}")]
    UnknownStatus {
        kind: &'static str,
        value: String,
        expected: String,
    },
    /// A status change the transition table forbids.
    #[error("illegal {kind} status transition from `{from}` to `{to}`")]
    IllegalTransition {
        kind: &'static str,
        from: String,
        to: String,
    },
    /// A field of an input failed validation.
    #[error("invalid `{field}`: {reason}")]
    InvalidField { field: String, reason: String },
    /// A payload larger than the configured limit.
    #[error("`payload` is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    /// An execution plan whose subtasks do not form a valid DAG.
    #[error("invalid plan: {0}")]
    InvalidPlan(PlanError),
    /// A handler's output over the size limit; `owner` names the subtask or task.
    /// The size comes first: a table's narrow error column still shows it.
    #[error("output of {size} bytes, over the limit of {limit} bytes, from {owner}")]
    OutputTooLarge {
        owner: String,
        size: usize,
        limit: usize,
    },
    /// A string that is not a valid identifier.
    #[error("invalid {kind} id `{value}`")]
    InvalidId { kind: &'static str, value: String },
    /// A change refused because other work still needs the row (deleting a task of a
    /// running plan, or one that unfinished tasks wait for).
    #[error("{kind} `{id}` is in use: {reason}")]
    InUse {
        kind: &'static str,
        id: String,
        reason: String,
    },
    /// A subtask retried alone while its plan is failed or cancelled: the plan would not
    /// run on (what depends on the subtask was cancelled with it); retrying the plan does.
    #[error(
        "task `{task}` is a subtask of plan `{plan}`, which is {status}: retry the plan \
         instead (`hive plan retry {plan}` runs every subtask that did not complete)"
    )]
    SubtaskOfFinishedPlan {
        task: String,
        plan: String,
        status: &'static str,
    },
    /// A subtask queued again while one of its dependencies is failed or cancelled: it
    /// would wait for good, and its plan would never finish.
    #[error(
        "task `{task}` depends on task `{dependency}`, which is {status} and will not \
         complete: requeue `{dependency}` first (or retry the plan)"
    )]
    DependencyWillNotComplete {
        task: String,
        dependency: String,
        status: &'static str,
    },
}

/// Why a plan's subtasks were rejected, naming the subtask ids involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("a plan needs at least one subtask")]
    Empty,
    #[error("subtask id must not be empty")]
    EmptyId,
    #[error("duplicate subtask id `{0}`")]
    DuplicateId(String),
    #[error("subtask `{0}` depends on itself")]
    SelfDependency(String),
    #[error("subtask `{subtask}` depends on unknown subtask `{dependency}`")]
    UnknownDependency { subtask: String, dependency: String },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("subtask `{subtask}`: {reason}")]
    InvalidSubtask { subtask: String, reason: String },
}

impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        Error::InvalidPlan(e)
    }
}

/// Result alias for model rules.
pub type Result<T, E = Error> = std::result::Result<T, E>;
