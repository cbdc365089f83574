//! The memory store's ready queue: tasks without a concurrency key in one ordered set, each
//! key's in a set of its own, read in queue order by merging them. A claim so passes over a
//! full key's backlog in one step instead of task by task, as the SQL backends walk keys.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, btree_set};

use hive_models::TaskId;

/// Ready-queue key: priority descending, then insertion order.
pub(super) type ReadyKey = (Reverse<i32>, u64, TaskId);

/// Queued tasks with no pending dependency (their `run_at` is checked when claiming).
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    plain: BTreeSet<ReadyKey>,
    keyed: HashMap<String, BTreeSet<ReadyKey>>,
}

impl ReadyQueue {
    pub fn insert(&mut self, key: Option<&str>, at: ReadyKey) {
        match key {
            None => {
                self.plain.insert(at);
            }
            Some(k) => match self.keyed.get_mut(k) {
                Some(set) => {
                    set.insert(at);
                }
                None => {
                    self.keyed.insert(k.to_owned(), BTreeSet::from([at]));
                }
            },
        }
    }

    pub fn remove(&mut self, key: Option<&str>, at: &ReadyKey) {
        match key {
            None => {
                self.plain.remove(at);
            }
            Some(k) => {
                if let Some(set) = self.keyed.get_mut(k) {
                    set.remove(at);
                    if set.is_empty() {
                        self.keyed.remove(k);
                    }
                }
            }
        }
    }

    /// Every ready task in queue order, with its key.
    pub fn walk(&self) -> Walk<'_> {
        let mut sources: Vec<(Option<&str>, btree_set::Iter<'_, ReadyKey>)> =
            Vec::with_capacity(1 + self.keyed.len());
        sources.push((None, self.plain.iter()));
        sources.extend(
            self.keyed
                .iter()
                .map(|(k, set)| (Some(k.as_str()), set.iter())),
        );
        let mut heads = BinaryHeap::with_capacity(sources.len());
        // With no key, the unkeyed set is walked as it is (see `Walk::next`).
        for (i, (_, tasks)) in sources
            .iter_mut()
            .enumerate()
            .filter(|_| !self.keyed.is_empty())
        {
            if let Some(at) = tasks.next() {
                heads.push(Reverse((*at, i)));
            }
        }
        Walk {
            skipped: vec![false; sources.len()],
            sources,
            heads,
            last: None,
        }
    }
}

/// A walk of the ready queue in order (see [`ReadyQueue::walk`]).
pub(super) struct Walk<'a> {
    sources: Vec<(Option<&'a str>, btree_set::Iter<'a, ReadyKey>)>,
    heads: BinaryHeap<Reverse<(ReadyKey, usize)>>,
    skipped: Vec<bool>,
    last: Option<usize>,
}

impl<'a> Iterator for Walk<'a> {
    type Item = (Option<&'a str>, TaskId);

    fn next(&mut self) -> Option<Self::Item> {
        if let [(None, plain)] = self.sources.as_mut_slice() {
            return plain.next().map(|at| (None, at.2));
        }
        loop {
            let Reverse((at, i)) = self.heads.pop()?;
            if self.skipped[i] {
                continue;
            }
            if let Some(next) = self.sources[i].1.next() {
                self.heads.push(Reverse((*next, i)));
            }
            self.last = Some(i);
            return Some((self.sources[i].0, at.2));
        }
    }
}

impl Walk<'_> {
    /// Leaves the rest of the last task's key out of the walk (nothing for a task without
    /// a key).
    pub fn skip_key(&mut self) {
        if let Some(i) = self.last
            && self.sources[i].0.is_some()
        {
            self.skipped[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(priority: i32, seq: u64) -> ReadyKey {
        (Reverse(priority), seq, TaskId::new())
    }

    #[test]
    fn the_walk_merges_every_key_in_queue_order_and_skips_a_key_on_request() {
        let mut q = ReadyQueue::default();
        let tasks = [
            (None, at(1, 1)),
            (Some("a"), at(5, 2)),
            (Some("a"), at(5, 3)),
            (Some("b"), at(1, 4)),
            (None, at(1, 5)),
            (Some("a"), at(1, 6)),
        ];
        for (k, t) in &tasks {
            q.insert(*k, *t);
        }
        let order: Vec<TaskId> = q.walk().map(|(_, id)| id).collect();
        let want: Vec<TaskId> = [1, 2, 0, 3, 4, 5].iter().map(|i| tasks[*i].1.2).collect();
        assert_eq!(order, want, "priority first, then age, across keys");

        let mut walk = q.walk();
        assert_eq!(walk.next(), Some((Some("a"), tasks[1].1.2)));
        walk.skip_key();
        let rest: Vec<TaskId> = walk.map(|(_, id)| id).collect();
        let want: Vec<TaskId> = [0, 3, 4].iter().map(|i| tasks[*i].1.2).collect();
        assert_eq!(rest, want, "the rest of key a is left out");

        q.remove(Some("b"), &tasks[3].1);
        assert!(!q.keyed.contains_key("b"), "an emptied key is forgotten");
        assert_eq!(q.walk().count(), 5);
        for (k, t) in &tasks {
            q.remove(*k, t);
        }
        assert!(q.keyed.is_empty());
        let plain = [at(1, 8), at(3, 9), at(1, 7)];
        for t in &plain {
            q.insert(None, *t);
        }
        let order: Vec<TaskId> = q.walk().map(|(_, id)| id).collect();
        assert_eq!(
            order,
            [plain[1].2, plain[2].2, plain[0].2],
            "without keys too"
        );
    }
}
