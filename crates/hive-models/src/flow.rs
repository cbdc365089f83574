//! Flow control: limits on how many tasks of a type or a concurrency key run at once and
//! start per period, and paused types, which workers respect together across processes.
//!
//! A [`FlowRule`] is stored per [`Scope`]; the claim of every backend admits a task only
//! while each of its scopes has room ([`Admission`]), inside the claim's transaction.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Timestamp};

/// Longest concurrency key or task type name a rule may name, in bytes.
pub const MAX_SCOPE_NAME_BYTES: usize = 200;
/// The most tasks a concurrency or rate limit may allow.
pub const MAX_LIMIT: u32 = 1_000_000;
/// The longest rate-limit period.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(86_400);

/// What a rule limits: every task of a type, or every task carrying a concurrency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Scope {
    Type(String),
    Key(String),
}

impl Scope {
    /// `type` or `key`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Type(_) => "type",
            Scope::Key(_) => "key",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Scope::Type(n) | Scope::Key(n) => n,
        }
    }

    /// The scope from its stored kind and name.
    pub fn from_parts(kind: &str, name: impl Into<String>) -> Result<Scope> {
        match kind {
            "type" => Ok(Scope::Type(name.into())),
            "key" => Ok(Scope::Key(name.into())),
            other => Err(Error::InvalidField {
                field: "scope".into(),
                reason: format!("unknown scope kind `{other}`; expected `type` or `key`"),
            }),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let field = match self {
            Scope::Type(_) => "task_type",
            Scope::Key(_) => "concurrency_key",
        };
        check_scope_name(field, self.name())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.kind(), self.name())
    }
}

/// Rejects an empty, overlong or control-character name for a type or key (a NUL with the
/// message every field gives it).
pub fn check_scope_name(field: &str, name: &str) -> Result<()> {
    crate::check_no_nul(field, name)?;
    let reason = if name.trim().is_empty() {
        "must not be empty".to_owned()
    } else if name.len() > MAX_SCOPE_NAME_BYTES {
        format!(
            "is {} bytes, over the limit of {MAX_SCOPE_NAME_BYTES}",
            name.len()
        )
    } else if name.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else if name == "." || name == ".." {
        // A URL's path cannot carry it: the dashboard's and the API's links to it would
        // resolve to their parent.
        format!("must not be `{name}`")
    } else {
        return Ok(());
    };
    Err(Error::InvalidField {
        field: field.into(),
        reason,
    })
}

/// At most `max` starts in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub max: u32,
    #[serde(with = "millis")]
    pub per: Duration,
}

impl Rate {
    pub fn validate(&self) -> Result<()> {
        check_limit("rate", self.max)?;
        if self.per < Duration::from_millis(1) || self.per > MAX_RATE_PERIOD {
            return Err(Error::InvalidField {
                field: "rate".into(),
                reason: format!(
                    "the period must be between 1 ms and {} s",
                    MAX_RATE_PERIOD.as_secs()
                ),
            });
        }
        Ok(())
    }

    /// Parses `N/PERIOD`, the period a number with a unit (`ms`, `s`, `m`, `h`, `d`) or a
    /// bare unit meaning one of it: `60/m`, `10/1s`, `1000/1h`, `5/500ms`.
    pub fn parse(text: &str) -> Result<Rate> {
        let bad = |reason: String| Error::InvalidField {
            field: "rate".into(),
            reason,
        };
        let (max, per) = text.split_once('/').ok_or_else(|| {
            bad(format!(
                "`{text}` is not `N/PERIOD` (for example `60/1m` or `10/s`)"
            ))
        })?;
        let max: u32 = max
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{max}` is not a whole number of starts")))?;
        let per = per.trim();
        let split = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (count, unit) = per.split_at(split);
        let count: u64 = if count.is_empty() {
            1
        } else {
            count
                .parse()
                .map_err(|_| bad(format!("`{per}` is not a period")))?
        };
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(bad(format!(
                    "`{per}` has no unit; use ms, s, m, h or d (for example `1m`)"
                )));
            }
        };
        let rate = Rate {
            max,
            per: Duration::from_millis(count.saturating_mul(unit_ms)),
        };
        rate.validate()?;
        Ok(rate)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per.as_millis();
        let (n, unit) = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ]
        .into_iter()
        .find(|(u, _)| ms.is_multiple_of(*u))
        .map_or((ms, "ms"), |(u, unit)| (ms / u, unit));
        write!(f, "{}/{n}{unit}", self.max)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

fn check_limit(field: &str, n: u32) -> Result<()> {
    if n == 0 || n > MAX_LIMIT {
        return Err(Error::InvalidField {
            field: field.into(),
            reason: format!(
                "{n} is not a limit; it must be between 1 and {MAX_LIMIT} (pause the type to \
                 stop its tasks)"
            ),
        });
    }
    Ok(())
}

/// The flow settings of one scope. A rule with no limit that is not paused says nothing
/// and is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRule {
    #[serde(flatten)]
    pub scope: Scope,
    /// At most this many of the scope's tasks run at once.
    pub max_running: Option<u32>,
    /// At most this many of the scope's tasks start per period.
    pub rate: Option<Rate>,
    /// No task of the scope is claimed; running ones finish.
    pub paused: bool,
    pub updated_at: Timestamp,
}

impl FlowRule {
    pub fn new(scope: Scope, now: Timestamp) -> FlowRule {
        FlowRule {
            scope,
            max_running: None,
            rate: None,
            paused: false,
            updated_at: now,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.scope.validate()?;
        if let Some(n) = self.max_running {
            check_limit("max_running", n)?;
        }
        if let Some(rate) = &self.rate {
            rate.validate()?;
        }
        Ok(())
    }

    /// Whether the rule limits or pauses anything (an empty rule is deleted instead).
    pub fn is_empty(&self) -> bool {
        self.max_running.is_none() && self.rate.is_none() && !self.paused
    }
}

/// One change to a scope's rule. The store applies it to the rule as stored when it
/// writes, under the rule's lock, so two operators changing one scope at once (one pausing
/// a type while another lifts its limits) each keep what the other did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEdit {
    /// Replaces the limits (both of them), keeping a pause.
    SetLimits {
        max_running: Option<u32>,
        rate: Option<Rate>,
    },
    /// Lifts both limits, keeping a pause.
    LiftLimits,
    Pause,
    Resume,
}

impl FlowEdit {
    /// The rule after this edit at `now` (`None`: it says nothing any more, and goes), and
    /// whether the edit changed anything.
    pub fn apply(
        self,
        scope: &Scope,
        stored: Option<FlowRule>,
        now: Timestamp,
    ) -> (Option<FlowRule>, bool) {
        let existed = stored.is_some();
        let mut rule = stored.unwrap_or_else(|| FlowRule::new(scope.clone(), now));
        let before = (rule.max_running, rule.rate, rule.paused);
        match self {
            FlowEdit::SetLimits { max_running, rate } => {
                rule.max_running = max_running;
                rule.rate = rate;
            }
            FlowEdit::LiftLimits => {
                rule.max_running = None;
                rule.rate = None;
            }
            FlowEdit::Pause => rule.paused = true,
            FlowEdit::Resume => rule.paused = false,
        }
        let changed = (rule.max_running, rule.rate, rule.paused) != before;
        if changed {
            rule.updated_at = now;
        }
        if rule.is_empty() {
            return (None, existed);
        }
        (Some(rule), changed)
    }
}

/// Checks a task's concurrency key and its limit (a limit needs a key).
pub fn check_concurrency(key: Option<&str>, limit: Option<u32>) -> Result<()> {
    match (key, limit) {
        (Some(k), l) => {
            check_scope_name("concurrency_key", k)?;
            l.map_or(Ok(()), |n| check_limit("concurrency_limit", n))
        }
        (None, Some(_)) => Err(Error::InvalidField {
            field: "concurrency_limit".into(),
            reason: "needs a `concurrency_key` to limit".into(),
        }),
        (None, None) => Ok(()),
    }
}

/// A ready task as the admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub task_type: &'a str,
    pub key: Option<&'a str>,
    /// The task's own limit for its key (1 when it carries a key and no limit).
    pub key_limit: Option<u32>,
}

impl Candidate<'_> {
    /// The scopes this task counts against.
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        std::iter::once(Scope::Type(self.task_type.to_owned()))
            .chain(self.key.map(|k| Scope::Key(k.to_owned())))
    }
}

/// A scope's use right now: tasks running and starts inside its rate window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub running: u64,
    pub recent_starts: u64,
}

/// Admits ready tasks, in queue order, while every scope each one counts against has room;
/// a task that does not fit is passed over without holding back tasks of other scopes.
/// Every backend runs it with usage it read under the claim's exclusion.
#[derive(Debug)]
pub struct Admission<'a> {
    rules: &'a HashMap<Scope, FlowRule>,
    usage: HashMap<Scope, Usage>,
}

impl<'a> Admission<'a> {
    pub fn new(rules: &'a HashMap<Scope, FlowRule>, usage: HashMap<Scope, Usage>) -> Self {
        Admission { rules, usage }
    }

    /// Whether the task fits now; if so its start is counted against its scopes.
    pub fn admit(&mut self, c: &Candidate<'_>) -> bool {
        let scopes: Vec<Scope> = c.scopes().collect();
        let fits = scopes.iter().all(|s| self.fits(s, c));
        if fits {
            for s in scopes {
                let used = self.usage.entry(s).or_default();
                used.running += 1;
                used.recent_starts += 1;
            }
        }
        fits
    }

    /// Whether the task's key, alone, has room for it now (true without a key): a task
    /// refused while its key has room was refused by its type.
    pub fn key_has_room(&self, c: &Candidate<'_>) -> bool {
        c.key
            .is_none_or(|k| self.fits(&Scope::Key(k.to_owned()), c))
    }

    fn fits(&self, s: &Scope, c: &Candidate<'_>) -> bool {
        let used = self.usage.get(s).copied().unwrap_or_default();
        let rule = self.rules.get(s);
        if rule.is_some_and(|r| r.paused) {
            return false;
        }
        let cap = match s {
            Scope::Type(_) => rule.and_then(|r| r.max_running),
            Scope::Key(_) => rule.and_then(|r| r.max_running).or(c.key_limit).or(Some(1)),
        };
        let running_ok = cap.is_none_or(|n| used.running < u64::from(n));
        let rate_ok = rule
            .and_then(|r| r.rate)
            .is_none_or(|r| used.recent_starts < u64::from(r.max));
        running_ok && rate_ok
    }
}

/// Whether tasks of this type or key go through [`Admission`] at all: keyed tasks and
/// types with a rule do; every other task is claimed without it.
pub fn is_flow_controlled(
    rules: &HashMap<Scope, FlowRule>,
    task_type: &str,
    key: Option<&str>,
) -> bool {
    key.is_some() || rules.contains_key(&Scope::Type(task_type.to_owned()))
}

#[cfg(test)]
mod tests;
