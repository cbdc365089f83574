//! Flow control in memory: rules by scope, recent starts of rate-limited scopes, and the
//! use of each scope read from its tasks in progress, all under the store's one lock.

use std::collections::{HashMap, VecDeque};

use hive_models::{Candidate, FlowRule, Scope, Task, Timestamp, Usage};

use super::state::{State, sub};

/// The starts each rate-limited scope made, oldest first.
pub(super) type Starts = HashMap<Scope, VecDeque<Timestamp>>;

impl State {
    /// Every rule, by scope.
    pub(crate) fn list_flow_rules(&self) -> Vec<FlowRule> {
        let mut rules: Vec<_> = self.flow_rules.values().cloned().collect();
        rules.sort_by(|a, b| a.scope.cmp(&b.scope));
        rules
    }

    /// What each scope uses at `at`: its running tasks, and its starts inside its rate
    /// window.
    pub(super) fn flow_usage(&self, at: Timestamp) -> HashMap<Scope, Usage> {
        let mut usage: HashMap<Scope, Usage> = HashMap::new();
        for id in &self.in_progress {
            let Some(task) = self.task(*id) else {
                continue;
            };
            for scope in candidate(task).scopes() {
                usage.entry(scope).or_default().running += 1;
            }
        }
        for (scope, starts) in &self.flow_starts {
            let Some(rate) = self.flow_rules.get(scope).and_then(|r| r.rate) else {
                continue;
            };
            let since = sub(at, rate.per);
            let recent = starts.iter().rev().take_while(|t| **t > since).count();
            usage.entry(scope.clone()).or_default().recent_starts = recent as u64;
        }
        usage
    }

    /// Counts a start against each rate-limited scope of `task`, forgetting the starts
    /// that fell out of the scope's window.
    pub(super) fn record_start(&mut self, task: &Task, at: Timestamp) {
        for scope in candidate(task).scopes() {
            let Some(rate) = self.flow_rules.get(&scope).and_then(|r| r.rate) else {
                continue;
            };
            let starts = self.flow_starts.entry(scope).or_default();
            let since = sub(at, rate.per);
            while starts.front().is_some_and(|t| *t <= since) {
                starts.pop_front();
            }
            starts.push_back(at);
        }
    }

    /// Takes the start `run`'s claim counted out of its task's rate windows: its handler
    /// never started.
    pub(super) fn forget_start(&mut self, run: hive_models::RunId) {
        let Some(run) = self.runs.get(&run) else {
            return;
        };
        let at = run.started_at;
        let Some(task) = self.task(run.task_id) else {
            return;
        };
        let scopes: Vec<Scope> = candidate(task).scopes().collect();
        for scope in scopes {
            if let Some(starts) = self.flow_starts.get_mut(&scope)
                && let Some(i) = starts.iter().rposition(|t| *t == at)
            {
                starts.remove(i);
            }
        }
    }

    pub(super) fn put_flow_rule(&mut self, rule: &FlowRule) {
        self.flow_rules.insert(rule.scope.clone(), rule.clone());
    }

    pub(super) fn delete_flow_rule(&mut self, scope: &Scope) -> bool {
        self.flow_starts.remove(scope);
        self.flow_rules.remove(scope).is_some()
    }

    pub(super) fn edit_flow_rule(
        &mut self,
        scope: &Scope,
        edit: hive_models::FlowEdit,
        at: Timestamp,
    ) -> (Option<FlowRule>, bool) {
        let stored = self.flow_rules.get(scope).cloned();
        let (rule, changed) = edit.apply(scope, stored, at);
        match &rule {
            Some(r) => self.put_flow_rule(r),
            None => {
                self.delete_flow_rule(scope);
            }
        }
        (rule, changed)
    }
}

/// The task as the admission sees it.
pub(super) fn candidate(task: &Task) -> Candidate<'_> {
    Candidate {
        task_type: &task.task_type,
        key: task.concurrency_key.as_deref(),
        key_limit: task.concurrency_limit,
    }
}
