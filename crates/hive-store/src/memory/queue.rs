//! The memory store's ready queue: tasks without a concurrency key in one ordered set, each
//! key's in a set of its own (one per limit its tasks carry, as room depends on it), read
//! in queue order by merging them. A claim so passes over a full key's backlog in one step
//! instead of task by task, as the SQL backends walk keys, and a key costs the walk nothing
//! until its first task's turn comes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, btree_map, btree_set};
use std::iter::Peekable;
use std::ops::Bound;

use hive_models::TaskId;

/// Ready-queue key: priority descending, then insertion order.
pub(super) type ReadyKey = (Reverse<i32>, u64, TaskId);

/// A concurrency key and the limit its tasks in one set carry.
pub(super) type Keyed = (String, Option<u32>);

/// Queued tasks with no pending dependency (their `run_at` is checked when claiming).
#[derive(Debug, Default)]
pub(super) struct ReadyQueue {
    plain: BTreeSet<ReadyKey>,
    keyed: HashMap<Keyed, BTreeSet<ReadyKey>>,
    /// Each set's first task, in queue order.
    heads: BTreeMap<ReadyKey, Keyed>,
}

impl ReadyQueue {
    /// Adds a task: `key` is its concurrency key and limit, if it has a key.
    pub fn insert(&mut self, key: Option<Keyed>, at: ReadyKey) {
        let Some(k) = key else {
            self.plain.insert(at);
            return;
        };
        let set = self.keyed.entry(k.clone()).or_default();
        let first = set.first().copied();
        set.insert(at);
        if first.is_none_or(|f| at < f) {
            if let Some(f) = first {
                self.heads.remove(&f);
            }
            self.heads.insert(at, k);
        }
    }

    pub fn remove(&mut self, key: Option<Keyed>, at: &ReadyKey) {
        let Some(k) = key else {
            self.plain.remove(at);
            return;
        };
        let Some(set) = self.keyed.get_mut(&k) else {
            return;
        };
        let was_first = set.first() == Some(at);
        set.remove(at);
        if was_first {
            self.heads.remove(at);
            match set.first() {
                Some(next) => {
                    self.heads.insert(*next, k);
                }
                None => {
                    self.keyed.remove(&k);
                }
            }
        }
    }

    /// Every ready task in queue order, with its key.
    pub fn walk(&self) -> Walk<'_> {
        Walk {
            queue: self,
            plain: self.plain.iter().peekable(),
            heads: self.heads.iter().peekable(),
            more: BinaryHeap::new(),
            last: None,
        }
    }
}

/// A walk of the ready queue in order (see [`ReadyQueue::walk`]): the unkeyed tasks, each
/// key's first task in the order of the firsts, and the next task of each key the walk took
/// one of (unless told to skip it), merged.
pub(super) struct Walk<'a> {
    queue: &'a ReadyQueue,
    plain: Peekable<btree_set::Iter<'a, ReadyKey>>,
    heads: Peekable<btree_map::Iter<'a, ReadyKey, Keyed>>,
    more: BinaryHeap<Reverse<(ReadyKey, &'a Keyed)>>,
    /// The last keyed task given, whose key's next task joins the walk at the next step
    /// unless [`Walk::skip_key`] comes first.
    last: Option<(&'a Keyed, ReadyKey)>,
}

/// Where the walk's next task comes from.
enum Source {
    Plain,
    Head,
    More,
}

impl<'a> Iterator for Walk<'a> {
    type Item = (Option<&'a str>, TaskId);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((key, at)) = self.last.take()
            && let Some(next) = self
                .queue
                .keyed
                .get(key)
                .and_then(|set| set.range((Bound::Excluded(at), Bound::Unbounded)).next())
        {
            self.more.push(Reverse((*next, key)));
        }
        let mut best: Option<(ReadyKey, Source)> =
            self.plain.peek().map(|at| (**at, Source::Plain));
        let mut consider = |at: ReadyKey, from: Source| {
            if best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, from));
            }
        };
        if let Some((at, _)) = self.heads.peek() {
            consider(**at, Source::Head);
        }
        if let Some(Reverse((at, _))) = self.more.peek() {
            consider(*at, Source::More);
        }
        let (at, from) = best?;
        match from {
            Source::Plain => {
                self.plain.next();
                Some((None, at.2))
            }
            Source::Head => {
                let (_, key) = self.heads.next()?;
                self.last = Some((key, at));
                Some((Some(key.0.as_str()), at.2))
            }
            Source::More => {
                let Reverse((_, key)) = self.more.pop()?;
                self.last = Some((key, at));
                Some((Some(key.0.as_str()), at.2))
            }
        }
    }
}

impl Walk<'_> {
    /// Leaves the rest of the last task's key (those of its limit) out of the walk (nothing
    /// for a task without a key).
    pub fn skip_key(&mut self) {
        self.last = None;
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
            (Some(("a".to_owned(), None)), at(5, 2)),
            (Some(("a".to_owned(), None)), at(5, 3)),
            (Some(("b".to_owned(), None)), at(1, 4)),
            (None, at(1, 5)),
            (Some(("a".to_owned(), None)), at(1, 6)),
        ];
        for (k, t) in &tasks {
            q.insert(k.clone(), *t);
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

        q.remove(tasks[3].0.clone(), &tasks[3].1);
        assert!(q.keyed.len() == 1, "an emptied key is forgotten");
        q.remove(tasks[1].0.clone(), &tasks[1].1);
        assert_eq!(
            q.heads.get(&tasks[2].1),
            tasks[2].0.as_ref(),
            "a's next leads"
        );
        q.insert(tasks[1].0.clone(), tasks[1].1);
        assert_eq!(q.walk().count(), 5);
        for (k, t) in &tasks {
            q.remove(k.clone(), t);
        }
        assert!(q.keyed.is_empty() && q.heads.is_empty());
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
