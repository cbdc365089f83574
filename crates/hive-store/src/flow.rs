//! The claim of flow-controlled tasks, written once for the SQL backends: which ready tasks
//! to read, in what order to take them, and which starts to record. Each backend supplies
//! the reads (under its exclusion: SQLite's write lock, Postgres's advisory locks per scope)
//! and the writes.
//!
//! A claim reads the rules, then the use of the limited types it asks for, then the heads of
//! those types' queues and of the keyed tasks (passing over types and keys with no room),
//! then the use of the keys found, and admits the candidates in queue order with
//! [`Admission`]. Tasks of other types without a key never take this path: the plain claim
//! skips every flow-controlled task.

#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_imports)
)]

use std::collections::HashMap;

use hive_models::{Admission, Candidate, FlowRule, Scope, TaskId, Usage};

use crate::ClaimParams;

/// A ready flow-controlled task as the candidate reads return it.
#[derive(Debug, Clone)]
pub struct FlowCandidate {
    pub id: TaskId,
    pub task_type: String,
    pub key: Option<String>,
    pub key_limit: Option<u32>,
    pub priority: i32,
    pub seq: i64,
}

impl FlowCandidate {
    fn as_candidate(&self) -> Candidate<'_> {
        Candidate {
            task_type: &self.task_type,
            key: self.key.as_deref(),
            key_limit: self.key_limit,
        }
    }
}

/// The rules one claim works with, read at its start.
#[derive(Debug, Default)]
pub struct FlowClaim {
    rules: HashMap<Scope, FlowRule>,
}

impl FlowClaim {
    pub fn new(rules: Vec<FlowRule>) -> FlowClaim {
        FlowClaim {
            rules: rules.into_iter().map(|r| (r.scope.clone(), r)).collect(),
        }
    }

    /// Ruled types this claim asks for, by name (the order Postgres locks them in).
    pub fn ruled_types(&self, p: &ClaimParams) -> Vec<String> {
        let mut types: Vec<String> = self
            .rules
            .keys()
            .filter_map(|s| match s {
                Scope::Type(t) if p.task_types.is_empty() || p.task_types.contains(t) => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect();
        types.sort();
        types
    }

    /// Whether a claim needs this path at all: it asks for a ruled type, or keyed tasks
    /// are ready.
    pub fn needed(&self, p: &ClaimParams, keyed_ready: bool) -> bool {
        keyed_ready || !self.ruled_types(p).is_empty()
    }

    /// Ruled types with no room now (paused, at their running cap, or out of starts):
    /// their heads are not read, and keyed tasks of these types are passed over.
    pub fn blocked_types(&self, ruled: &[String], usage: &HashMap<Scope, Usage>) -> Vec<String> {
        ruled
            .iter()
            .filter(|t| {
                let probe = Candidate {
                    task_type: t,
                    key: None,
                    key_limit: None,
                };
                let mut one = Admission::new(&self.rules, self.usage_of(&probe, usage));
                !one.admit(&probe)
            })
            .cloned()
            .collect()
    }

    fn usage_of(&self, c: &Candidate<'_>, usage: &HashMap<Scope, Usage>) -> HashMap<Scope, Usage> {
        c.scopes()
            .filter_map(|s| usage.get(&s).map(|u| (s, *u)))
            .collect()
    }

    /// The rate windows to count starts in, as (scope, window in microseconds).
    pub fn rate_windows<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a Scope>,
    ) -> Vec<(Scope, i64)> {
        scopes
            .into_iter()
            .filter_map(|s| {
                let rate = self.rules.get(s)?.rate?;
                let us = i64::try_from(rate.per.as_micros()).unwrap_or(i64::MAX);
                Some((s.clone(), us))
            })
            .collect()
    }

    /// Admits candidates in queue order (duplicates read by two heads count once): those
    /// among the first `limit` of the admitted and the plain queue's heads (`plain`: each
    /// ready task no rule concerns, as priority and seq, in queue order) merged. So a
    /// limited task never takes the place of a plain one ahead of it in the queue, as the
    /// memory store's single walk of the queue does.
    pub fn admit(
        &self,
        mut candidates: Vec<FlowCandidate>,
        usage: HashMap<Scope, Usage>,
        limit: usize,
        plain: &[(i32, i64)],
    ) -> Vec<FlowCandidate> {
        let order = |priority: i32, seq: i64| (std::cmp::Reverse(priority), seq);
        candidates.sort_by_key(|c| order(c.priority, c.seq));
        candidates.dedup_by_key(|c| c.id);
        let mut admission = Admission::new(&self.rules, usage);
        let mut plain = plain.iter().peekable();
        let mut plain_ahead = 0;
        let mut admitted = Vec::new();
        for c in candidates {
            let at = order(c.priority, c.seq);
            while admitted.len() + plain_ahead < limit
                && plain.next_if(|(p, s)| order(*p, *s) < at).is_some()
            {
                plain_ahead += 1;
            }
            if admitted.len() + plain_ahead >= limit {
                break;
            }
            if admission.admit(&c.as_candidate()) {
                admitted.push(c);
            }
        }
        admitted
    }

    /// How many of these keyed candidates one claim could take at most: per key, no more
    /// than its running cap (its rule's, else its tasks' own limit). A key with room for
    /// one and a deep backlog so fills one place, however many of its tasks were read.
    pub fn places(&self, keyed: &[FlowCandidate]) -> usize {
        let mut per_key: HashMap<&str, (usize, u32)> = HashMap::new();
        for c in keyed {
            let Some(key) = c.key.as_deref() else {
                continue;
            };
            let cap = self
                .rules
                .get(&Scope::Key(key.to_owned()))
                .and_then(|r| r.max_running)
                .or(c.key_limit)
                .unwrap_or(1);
            let (n, most) = per_key.entry(key).or_insert((0, cap));
            *n += 1;
            *most = (*most).max(cap);
        }
        per_key
            .values()
            .map(|(n, cap)| (*n).min(usize::try_from(*cap).unwrap_or(usize::MAX)))
            .sum()
    }

    /// One (kind, name) per start to record: each admitted task's rate-limited scopes.
    pub fn starts(&self, admitted: &[FlowCandidate]) -> Vec<Scope> {
        admitted
            .iter()
            .flat_map(|c| c.as_candidate().scopes().collect::<Vec<_>>())
            .filter(|s| self.rules.get(s).is_some_and(|r| r.rate.is_some()))
            .collect()
    }
}

/// The scopes a set of candidates counts against, sorted and distinct (the order Postgres
/// locks keys in).
pub fn keys_of(candidates: &[FlowCandidate]) -> Vec<String> {
    let mut keys: Vec<String> = candidates.iter().filter_map(|c| c.key.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// How many heads a claim of `limit` reads per queue: enough that tasks passed over
/// (their key full, say) rarely leave the claim short.
pub fn window(limit: u32) -> i64 {
    i64::from(limit).saturating_mul(2).saturating_add(16)
}

/// How many keyed tasks with room a claim of `limit` reads: what it could take and some
/// slack, not a whole [`window`]. On Postgres the read takes each task's key as it goes,
/// and other claimers read past those keys, so a claim holds few keys it will not take.
pub fn keyed_window(limit: u32) -> i64 {
    i64::from(limit).saturating_add(16)
}

/// How many ready keyed tasks a claim reads in queue order, whatever their keys' room,
/// before it gives up on that order: past this bound a busy key's backlog would cost every
/// claim a walk through all of it. Written into the statements as [`keyed_scan`] text, not
/// bound: Postgres' generic plan for an unknown limit sorted every ready keyed task.
pub const KEYED_SCAN: i64 = 512;

/// [`KEYED_SCAN`] as SQL text.
macro_rules! keyed_scan {
    () => {
        "512"
    };
}
pub(crate) use keyed_scan;

/// Whether the keyed tasks read in queue order (`scanned` of them, their keys' room for
/// `places` of those found: [`FlowClaim::places`]) may have missed tasks with room behind
/// them: the read stopped at [`KEYED_SCAN`] with fewer places than the claim's `limit` (or
/// than the whole read, for a claim larger than it: a read that full of places is enough).
/// Then the claim reads each key's heads instead (one probe per key with ready tasks,
/// through the index of ready tasks by key) and admits from both.
pub fn walk_keys(limit: u32, scanned: i64, places: usize) -> bool {
    scanned >= KEYED_SCAN
        && i64::try_from(places).unwrap_or(i64::MAX) < i64::from(limit).min(KEYED_SCAN)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_walked_only_when_the_bounded_read_was_short_of_places() {
        use super::{KEYED_SCAN, walk_keys};
        assert!(
            !walk_keys(32, KEYED_SCAN - 1, 0),
            "the read saw every ready keyed task"
        );
        assert!(walk_keys(32, KEYED_SCAN, 31), "short of the claim's 32");
        assert!(!walk_keys(32, KEYED_SCAN, 32));
        assert!(
            !walk_keys(600, KEYED_SCAN, 512),
            "a claim larger than the read is served by a full read"
        );
        assert!(walk_keys(600, KEYED_SCAN, 511));
        assert!(walk_keys(288, KEYED_SCAN, 1));
    }

    #[test]
    fn the_keyed_scan_is_written_as_its_constant() {
        assert_eq!(keyed_scan!(), super::KEYED_SCAN.to_string());
    }
}
