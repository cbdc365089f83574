//! [`PlanHeader`]: a plan without its subtasks, and the way between it and an
//! [`ExecutionPlan`].

use serde::{Deserialize, Serialize};

use super::{ExecutionPlan, NewPlan, PlanCounters, PlanStatus, SubTask};
use crate::{Json, PlanId, TaskId, Timestamp};

/// A plan without its subtasks: what lists of plans show, at a cost that does not grow
/// with the plans' size (a plan of 100,000 subtasks is read as one row).
// The fields repeat `ExecutionPlan`'s rather than `ExecutionPlan` flattening a header: its
// fields are the original package's model, which apps read by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    pub id: PlanId,
    pub title: String,
    pub description: String,
    pub parent_task_id: Option<TaskId>,
    pub status: PlanStatus,
    pub total_subtasks: u32,
    pub completed_subtasks: u32,
    pub failed_subtasks: u32,
    pub cancelled_subtasks: u32,
    pub materialized: bool,
    pub metadata: Json,
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl PlanHeader {
    /// Completed subtasks as a percentage of all subtasks (100 for an empty plan).
    pub fn get_progress_percentage(&self) -> f64 {
        progress_percentage(self.completed_subtasks, self.total_subtasks)
    }

    /// Its status and counts.
    pub fn counters(&self) -> PlanCounters {
        PlanCounters {
            status: self.status,
            total: self.total_subtasks,
            completed: self.completed_subtasks,
            failed: self.failed_subtasks,
            cancelled: self.cancelled_subtasks,
        }
    }
}

pub(super) fn progress_percentage(completed: u32, total: u32) -> f64 {
    if total == 0 {
        return 100.0;
    }
    f64::from(completed) * 100.0 / f64::from(total)
}

impl ExecutionPlan {
    /// A plan read back: its header and its subtasks, from which the subtask ids and the
    /// dependency graph derive, as on insert.
    pub fn from_header(h: PlanHeader, subtasks: Vec<SubTask>) -> ExecutionPlan {
        let new = NewPlan {
            title: h.title,
            description: h.description,
            parent_task_id: h.parent_task_id,
            subtasks,
            metadata: h.metadata,
            idempotency_key: h.idempotency_key,
        };
        let mut plan = ExecutionPlan::from_new(h.id, new, h.created_at);
        plan.set_counters(PlanCounters {
            status: h.status,
            total: h.total_subtasks,
            completed: h.completed_subtasks,
            failed: h.failed_subtasks,
            cancelled: h.cancelled_subtasks,
        });
        plan.materialized = h.materialized;
        plan.updated_at = h.updated_at;
        plan
    }

    /// The plan without its subtasks.
    pub fn header(&self) -> PlanHeader {
        PlanHeader {
            id: self.id,
            title: self.title.clone(),
            description: self.description.clone(),
            parent_task_id: self.parent_task_id,
            status: self.status,
            total_subtasks: self.total_subtasks,
            completed_subtasks: self.completed_subtasks,
            failed_subtasks: self.failed_subtasks,
            cancelled_subtasks: self.cancelled_subtasks,
            materialized: self.materialized,
            metadata: self.metadata.clone(),
            idempotency_key: self.idempotency_key.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}
