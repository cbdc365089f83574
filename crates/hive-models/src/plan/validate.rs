//! Validating a plan's subtasks: each one's own fields, and the graph they form.

use std::collections::HashMap;

use super::SubTask;
use crate::error::PlanError;
use crate::task::{check_json_storable, check_no_nul, check_payload_size, check_timing, non_blank};
use crate::{Error, Result};

/// Checks that subtasks form a valid DAG: at least one, non-empty unique ids, titles
/// (when given) and types not blank, payloads within the limit, dependencies only on
/// subtasks of the same plan, no self-dependency and no cycle. The error names the offending ids.
pub fn validate_subtasks(subtasks: &[SubTask], max_payload_bytes: usize) -> Result<()> {
    if subtasks.is_empty() {
        return Err(PlanError::Empty.into());
    }
    for s in subtasks {
        validate_subtask_fields(s, max_payload_bytes)?;
    }
    validate_graph(subtasks)
}

/// Checks one subtask's own fields (not its place in the graph): id, title, type, text
/// without NUL, timing, retries, concurrency key and payload size. The error names the
/// subtask.
pub fn validate_subtask_fields(s: &SubTask, max_payload_bytes: usize) -> Result<()> {
    if s.id.trim().is_empty() {
        return Err(PlanError::EmptyId.into());
    }
    let invalid = |e: Error| PlanError::InvalidSubtask {
        // Escaped, so an id holding a NUL or a newline still prints on one line.
        subtask: s.id.escape_debug().to_string(),
        reason: e.to_string(),
    };
    crate::check_scope_name("id", &s.id).map_err(invalid)?;
    // Empty is "titled by its id"; only a title of spaces is a mistake.
    if !s.title.is_empty() {
        non_blank("title", &s.title).map_err(invalid)?;
    }
    crate::check_scope_name("task_type", &s.task_type).map_err(invalid)?;
    check_no_nul("description", &s.description).map_err(invalid)?;
    for (i, d) in s.dependencies.iter().enumerate() {
        check_no_nul(&format!("dependencies[{i}]"), d).map_err(invalid)?;
    }
    check_json_storable("payload", &s.payload).map_err(invalid)?;
    check_timing(s.timeout_secs, s.delay_secs.unwrap_or(0)).map_err(invalid)?;
    if let Some(p) = &s.retry_policy {
        p.validate("retry_policy").map_err(invalid)?;
    }
    crate::check_max_retries(s.max_retries).map_err(invalid)?;
    crate::check_concurrency(s.concurrency_key.as_deref(), s.concurrency_limit).map_err(invalid)?;
    check_payload_size(&s.payload, max_payload_bytes).map_err(invalid)?;
    Ok(())
}

pub(super) fn validate_graph(subtasks: &[SubTask]) -> Result<()> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(subtasks.len());
    for (i, s) in subtasks.iter().enumerate() {
        if index.insert(s.id.as_str(), i).is_some() {
            return Err(PlanError::DuplicateId(s.id.clone()).into());
        }
    }
    for s in subtasks {
        for d in &s.dependencies {
            if d == &s.id {
                return Err(PlanError::SelfDependency(s.id.clone()).into());
            }
            if !index.contains_key(d.as_str()) {
                return Err(PlanError::UnknownDependency {
                    subtask: s.id.clone(),
                    dependency: d.clone(),
                }
                .into());
            }
        }
    }
    if let Some(cycle) = find_cycle(subtasks, &index) {
        return Err(PlanError::Cycle(cycle).into());
    }
    Ok(())
}

/// Iterative three-colour DFS, so deep chains cannot overflow the stack. Returns the
/// cycle as subtask ids, its first id repeated at the end.
fn find_cycle(subtasks: &[SubTask], index: &HashMap<&str, usize>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour = vec![Colour::White; subtasks.len()];
    for start in 0..subtasks.len() {
        if colour[start] != Colour::White {
            continue;
        }
        // Each frame: node and the position of the next dependency to visit.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = Colour::Grey;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = &subtasks[node].dependencies;
            if *next < deps.len() {
                let dep = index[deps[*next].as_str()];
                *next += 1;
                match colour[dep] {
                    Colour::White => {
                        colour[dep] = Colour::Grey;
                        stack.push((dep, 0));
                    }
                    Colour::Grey => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|&(n, _)| subtasks[n].id.clone())
                            .collect();
                        cycle.push(subtasks[dep].id.clone());
                        return Some(cycle);
                    }
                    Colour::Black => {}
                }
            } else {
                colour[node] = Colour::Black;
                stack.pop();
            }
        }
    }
    None
}
