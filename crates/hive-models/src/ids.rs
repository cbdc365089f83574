//! Newtype identifiers, so a task id can never be passed where a plan id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// A map keyed by ids Hive (or its async runtime) made itself: tasks, runs, plans, the
/// worker's handler calls. Nothing calls for SipHash's resistance to chosen keys there,
/// and a task's claim and finish look up a dozen of them (SipHash was a tenth of a memory
/// drain's instructions). Maps keyed by what callers name keep SipHash.
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set of [`IdMap`].
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) id, so new rows land at the end of indexes.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s.trim()).map(Self).map_err(|_| Error::InvalidId {
                    kind: $kind,
                    value: s.to_owned(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// Identifies a [`crate::Task`].
    TaskId,
    "task"
);
uuid_id!(
    /// Identifies a [`crate::Run`], one execution attempt of a task; it doubles as the lease token.
    RunId,
    "run"
);
uuid_id!(
    /// Identifies an [`crate::ExecutionPlan`].
    PlanId,
    "plan"
);

/// Identifies a [`crate::Worker`]. Workers choose their own names (`deployer-1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// Validates and wraps a worker name: not empty, at most 200 characters, no control
    /// characters; the error says which.
    pub fn parse(s: impl Into<String>) -> Result<Self, Error> {
        let s = s.into();
        crate::check_no_nul("worker_id", &s)?;
        let reason = if s.trim().is_empty() {
            "must not be empty".to_owned()
        } else if s.chars().count() > 200 {
            format!("is {} characters, over the limit of 200", s.chars().count())
        } else if s.chars().any(char::is_control) {
            format!("`{}` holds a control character", s.escape_debug())
        } else {
            return Ok(Self(s));
        };
        Err(Error::InvalidField {
            field: "worker_id".into(),
            reason,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkerId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}
