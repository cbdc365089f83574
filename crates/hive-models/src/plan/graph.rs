//! An [`ExecutionPlan`]'s dependency graph read the other way: which subtasks wait for a
//! given one, and which wait for nothing or are waited for by nothing.

use std::collections::{BTreeMap, HashSet};

use super::ExecutionPlan;

impl ExecutionPlan {
    /// The subtasks that wait for `subtask_id` (its direct dependents), in plan order;
    /// empty for a subtask nothing depends on or an unknown id.
    pub fn get_dependents(&self, subtask_id: &str) -> Vec<&str> {
        self.subtask_ids
            .iter()
            .filter(|id| self.get_dependencies(id).iter().any(|d| d == subtask_id))
            .map(String::as_str)
            .collect()
    }

    /// Every subtask's direct dependents at once (the inverse of `dependency_graph`), each
    /// list in plan order; a subtask nothing depends on maps to an empty list.
    pub fn dependents_graph(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut graph: BTreeMap<&str, Vec<&str>> = self
            .subtask_ids
            .iter()
            .map(|id| (id.as_str(), Vec::new()))
            .collect();
        for id in &self.subtask_ids {
            for dep in self.get_dependencies(id) {
                if let Some(list) = graph.get_mut(dep.as_str()) {
                    list.push(id.as_str());
                }
            }
        }
        graph
    }

    /// The subtasks that wait for nothing (where the plan starts), in plan order.
    pub fn roots(&self) -> Vec<&str> {
        self.subtask_ids
            .iter()
            .filter(|id| self.get_dependencies(id).is_empty())
            .map(String::as_str)
            .collect()
    }

    /// The subtasks nothing waits for (whose outputs are the plan's result), in plan order.
    pub fn sinks(&self) -> Vec<&str> {
        let depended: HashSet<&str> = self
            .dependency_graph
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        self.subtask_ids
            .iter()
            .map(String::as_str)
            .filter(|id| !depended.contains(id))
            .collect()
    }
}
