//! [`ExecutionPlan`], a DAG of [`SubTask`]s, its statuses and its validation.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::status::status_enum;
use crate::task::{check_json_storable, check_no_nul, non_blank};
use crate::{Error, Json, PlanId, Result, TaskId, Timestamp};

status_enum!(
    /// Where a plan is in its life.
    PlanStatus, "plan" {
        Pending => "pending",
        InProgress => "in_progress",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl PlanStatus {
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether a finished subtask of a plan in this status may be queued again on its own:
    /// not in a failed or cancelled plan, which is retried whole instead.
    pub const fn requeues_subtasks(self) -> bool {
        !matches!(self, Self::Failed | Self::Cancelled)
    }

    /// Whether cancelling a plan in this status cancels anything: a running plan, and a
    /// failed one, whose subtasks that do not depend on the failure go on (the plan stays
    /// failed; its open subtasks are cancelled).
    pub const fn may_cancel(self) -> bool {
        !matches!(self, Self::Completed | Self::Cancelled)
    }

    /// Whether a plan in this status may have its tasks created: not one finished before
    /// it had any (cancelled before it started: retrying it makes it pending again).
    pub fn check_materialize(self) -> crate::Result<()> {
        if !self.is_terminal() {
            return Ok(());
        }
        Err(crate::Error::InvalidField {
            field: "status".into(),
            reason: format!(
                "`{self}` plans cannot have their tasks created (retry the plan first)"
            ),
        })
    }

    /// Whether a plan in this status can be retried: only a failed or a cancelled one.
    pub fn check_retry(self) -> crate::Result<()> {
        let why = match self {
            Self::Failed | Self::Cancelled => return Ok(()),
            Self::Completed => "every subtask completed",
            Self::Pending | Self::InProgress => {
                "it is still running (cancel it first, or let it finish)"
            }
        };
        Err(crate::Error::InvalidField {
            field: "status".into(),
            reason: format!("`{self}` plans cannot be retried: {why}"),
        })
    }
}

/// A plan's status and progress counters: everything the plan rules read and write when
/// one of its subtasks finishes (the rest of a plan, its subtasks above all, can be large
/// and is never needed for that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounters {
    pub status: PlanStatus,
    pub total: u32,
    pub completed: u32,
    pub failed: u32,
    pub cancelled: u32,
}

impl PlanCounters {
    /// Whether the plan can be retried: failed or cancelled, or completed with subtasks
    /// that failed or were cancelled since (a completed subtask run again that failed for
    /// good: the plan stays completed, and this retry is the way to run it once more).
    pub fn check_retry(&self) -> crate::Result<()> {
        if self.status == PlanStatus::Completed && self.failed.saturating_add(self.cancelled) > 0 {
            return Ok(());
        }
        self.status.check_retry()
    }

    /// The plan rule, for one subtask reaching `subtask_status`: counts it, then moves the
    /// plan if it must — failed at the first failure, completed when every subtask
    /// completed, cancelled when every subtask finished and some were cancelled. Returns the
    /// new status when it changed; a finished plan counts but never moves again.
    pub fn step(&mut self, subtask_status: crate::TaskStatus) -> Option<PlanStatus> {
        use crate::TaskStatus;
        match subtask_status {
            TaskStatus::Completed => self.completed = self.completed.saturating_add(1),
            TaskStatus::Failed => self.failed = self.failed.saturating_add(1),
            TaskStatus::Cancelled => self.cancelled = self.cancelled.saturating_add(1),
            _ => {}
        }
        let to = self.status_after(subtask_status)?;
        self.status = to;
        Some(to)
    }

    /// A subtask that had reached `subtask_status` is back in the queue (an operator's
    /// requeue): it no longer counts as finished. The plan's status does not move: a plan
    /// still running finishes when the subtask does, and a finished plan stays finished.
    pub fn unstep(&mut self, subtask_status: crate::TaskStatus) {
        use crate::TaskStatus;
        match subtask_status {
            TaskStatus::Completed => self.completed = self.completed.saturating_sub(1),
            TaskStatus::Failed => self.failed = self.failed.saturating_sub(1),
            TaskStatus::Cancelled => self.cancelled = self.cancelled.saturating_sub(1),
            _ => {}
        }
    }

    /// Subtasks finished, whatever their end.
    pub fn finished(&self) -> u32 {
        self.completed
            .saturating_add(self.failed)
            .saturating_add(self.cancelled)
    }

    /// The status the counts alone call for (`None` while work remains or once finished):
    /// what a backend that counts without locking the plan checks after committing.
    pub fn settled(&self) -> Option<PlanStatus> {
        self.status_after(crate::TaskStatus::Completed)
    }

    /// The status a non-terminal plan moves to after one of its subtasks reached
    /// `subtask_status` and the counters were updated; `None` while work remains (or the
    /// plan already finished).
    pub fn status_after(&self, subtask_status: crate::TaskStatus) -> Option<PlanStatus> {
        if self.status.is_terminal() {
            return None;
        }
        let finished = self.finished();
        if subtask_status == crate::TaskStatus::Failed
            || (finished >= self.total && self.failed > 0)
        {
            Some(PlanStatus::Failed)
        } else if self.completed >= self.total {
            Some(PlanStatus::Completed)
        } else if finished >= self.total {
            Some(PlanStatus::Cancelled)
        } else {
            None
        }
    }
}

/// One node of a plan: a task definition plus the ids of the subtasks it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubTask {
    /// Unique within the plan; dependencies refer to it.
    pub id: String,
    /// Empty (or left out of a plan file): the subtask's task is titled by its id.
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub task_type: String,
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default = "empty_object")]
    pub payload: Json,
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Expected running time in seconds, for planning displays.
    #[serde(default)]
    pub estimated_duration: Option<u64>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Backoff between retries (`None`: the task type's policy, else the worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<crate::RetryPolicy>,
    /// A run may last this long before the worker stops it.
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// Once its dependencies completed (at submission for a subtask without any), wait
    /// this long before the subtask can be claimed.
    #[serde(default)]
    pub delay_secs: Option<u64>,
    /// Subtasks (and tasks) sharing this key run at most `concurrency_limit` at once across
    /// all workers, as for [`crate::NewTask::concurrency_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// How many tasks of `concurrency_key` may run at once (default 1; a stored rule for the
    /// key takes precedence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
}

fn default_priority() -> i32 {
    1
}

fn empty_object() -> Json {
    Json::Object(Default::default())
}

impl SubTask {
    pub fn new(
        id: impl Into<String>,
        title: impl Into<String>,
        task_type: impl Into<String>,
    ) -> Self {
        SubTask {
            id: id.into(),
            title: title.into(),
            description: String::new(),
            task_type: task_type.into(),
            priority: 1,
            payload: empty_object(),
            dependencies: Vec::new(),
            estimated_duration: None,
            max_retries: None,
            retry_policy: None,
            timeout_secs: None,
            delay_secs: None,
            concurrency_key: None,
            concurrency_limit: None,
        }
    }

    crate::setters! {
        description: impl Into<String> => into,
        /// What the handler receives (`ctx.task.payload`); `{}` unless set.
        payload: Json,
        priority: i32,
        /// Failed runs retried at most this many times.
        max_retries: u32 => Some,
        /// Backoff between retries, for this subtask alone.
        retry_policy: crate::RetryPolicy => Some,
        /// A run may last this long before the worker stops it.
        timeout_secs: u32 => Some,
        /// Once its dependencies completed (at submission for a subtask without any), wait
        /// this long before the subtask can be claimed.
        delay_secs: u64 => Some,
        /// Expected running time in seconds, for planning displays.
        estimated_duration: u64 => Some,
        /// Runs at most `concurrency_limit` (default 1) at once with the other tasks of this
        /// key, across all workers.
        concurrency_key: impl Into<String> => some_into,
        /// How many tasks of the key may run at once.
        concurrency_limit: u32 => Some,
    }

    /// Sets the subtasks (ids within the plan) this one waits for, replacing any set before.
    pub fn depends_on<I: IntoIterator<Item = S>, S: Into<String>>(mut self, deps: I) -> Self {
        self.dependencies = deps.into_iter().map(Into::into).collect();
        self
    }

    pub fn has_dependencies(&self) -> bool {
        !self.dependencies.is_empty()
    }

    /// The task this subtask becomes when its plan is materialized (dependencies and the
    /// plan link are the backend's to record).
    pub fn to_new_task(&self, parent_task_id: Option<TaskId>) -> crate::NewTask {
        let title = if self.title.is_empty() {
            &self.id
        } else {
            &self.title
        };
        crate::NewTask {
            title: title.clone(),
            task_type: self.task_type.clone(),
            description: self.description.clone(),
            priority: self.priority,
            payload: self.payload.clone(),
            max_retries: self.max_retries,
            retry_policy: self.retry_policy,
            parent_task_id,
            timeout_secs: self.timeout_secs,
            delay_secs: self.delay_secs.unwrap_or(0),
            concurrency_key: self.concurrency_key.clone(),
            concurrency_limit: self.concurrency_limit,
            ..crate::NewTask::default()
        }
    }
}

/// What a caller supplies to create a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub parent_task_id: Option<TaskId>,
    pub subtasks: Vec<SubTask>,
    /// Free-form facts about the plan (who asked for it, a ticket, the goal): a JSON
    /// object, `{}` when not given. Stored with the plan; Hive does not read it.
    #[serde(default = "empty_object")]
    pub metadata: Json,
    /// Makes the submission safe to repeat (after a timeout, a crash, a retried request):
    /// a second plan with the same key creates nothing, and its submission returns the
    /// first plan's id, whatever the second one's content. The key is free again once its
    /// plan is pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl NewPlan {
    /// A plan of `subtasks`, without description, parent task or metadata.
    pub fn new(title: impl Into<String>, subtasks: Vec<SubTask>) -> Self {
        NewPlan {
            title: title.into(),
            description: String::new(),
            parent_task_id: None,
            subtasks,
            metadata: empty_object(),
            idempotency_key: None,
        }
    }

    crate::setters! {
        description: impl Into<String> => into,
        /// Makes the submission safe to repeat: see the field of this name.
        idempotency_key: impl Into<String> => some_into,
        /// The task this plan breaks down.
        parent_task_id: TaskId => Some,
        /// Free-form facts about the plan; must be a JSON object.
        metadata: Json,
    }

    /// Validates the title, the metadata and the DAG; see [`validate_subtasks`].
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        non_blank("title", &self.title)?;
        check_no_nul("description", &self.description)?;
        check_metadata_object(&self.metadata)?;
        if let Some(key) = &self.idempotency_key {
            crate::task::check_idempotency_key(key)?;
        }
        validate_subtasks(&self.subtasks, max_payload_bytes)
    }
}

/// A plan's metadata must be a JSON object (so keys can be added without breaking
/// readers), without NUL characters.
fn check_metadata_object(metadata: &Json) -> Result<()> {
    let kind = match metadata {
        Json::Object(_) => return check_json_storable("metadata", metadata),
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
    };
    Err(Error::InvalidField {
        field: "metadata".into(),
        reason: format!("must be a JSON object, not {kind}"),
    })
}

/// A plan: subtasks with dependencies, their progress counters and the plan's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPlan {
    pub id: PlanId,
    pub title: String,
    pub description: String,
    pub parent_task_id: Option<TaskId>,
    pub status: PlanStatus,
    pub total_subtasks: u32,
    pub completed_subtasks: u32,
    pub failed_subtasks: u32,
    /// Subtasks cancelled (directly, with the plan, or because a dependency failed).
    #[serde(default)]
    pub cancelled_subtasks: u32,
    /// Subtask ids in the order they were given.
    pub subtask_ids: Vec<String>,
    /// Subtask id → the subtask ids it depends on.
    pub dependency_graph: BTreeMap<String, Vec<String>>,
    pub subtasks: Vec<SubTask>,
    /// Whether `create_planned_subtasks_from_plan` has turned the subtasks into tasks.
    pub materialized: bool,
    /// Free-form facts given at submission (see [`NewPlan::metadata`]); `{}` by default.
    #[serde(default = "empty_object")]
    pub metadata: Json,
    /// The key it was submitted with (see the field of this name on [`NewPlan`]).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl ExecutionPlan {
    /// Builds a pending plan from validated input, as a backend does on insert.
    pub fn from_new(id: PlanId, new: NewPlan, now: Timestamp) -> ExecutionPlan {
        let subtask_ids = new.subtasks.iter().map(|s| s.id.clone()).collect();
        let dependency_graph = new
            .subtasks
            .iter()
            .map(|s| (s.id.clone(), s.dependencies.clone()))
            .collect();
        ExecutionPlan {
            id,
            title: new.title,
            description: new.description,
            parent_task_id: new.parent_task_id,
            status: PlanStatus::Pending,
            total_subtasks: u32::try_from(new.subtasks.len()).unwrap_or(u32::MAX),
            completed_subtasks: 0,
            failed_subtasks: 0,
            cancelled_subtasks: 0,
            subtask_ids,
            dependency_graph,
            subtasks: new.subtasks,
            materialized: false,
            metadata: new.metadata,
            idempotency_key: new.idempotency_key,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.status == PlanStatus::Completed
    }

    pub fn is_failed(&self) -> bool {
        self.status == PlanStatus::Failed
    }

    pub fn is_in_progress(&self) -> bool {
        self.status == PlanStatus::InProgress
    }

    /// Completed subtasks as a percentage of all subtasks (100 for an empty plan).
    pub fn get_progress_percentage(&self) -> f64 {
        progress_percentage(self.completed_subtasks, self.total_subtasks)
    }

    pub fn increment_completed(&mut self) {
        self.completed_subtasks = self.completed_subtasks.saturating_add(1);
    }

    pub fn increment_failed(&mut self) {
        self.failed_subtasks = self.failed_subtasks.saturating_add(1);
    }

    pub fn increment_cancelled(&mut self) {
        self.cancelled_subtasks = self.cancelled_subtasks.saturating_add(1);
    }

    /// The plan's status and counters, to which the plan rules apply.
    pub fn counters(&self) -> PlanCounters {
        PlanCounters {
            status: self.status,
            total: self.total_subtasks,
            completed: self.completed_subtasks,
            failed: self.failed_subtasks,
            cancelled: self.cancelled_subtasks,
        }
    }

    /// Takes in subtasks a running subtask added (see [`grow`]).
    pub fn grow(&mut self, g: &Growth) {
        for s in &mut self.subtasks {
            if g.rewired.contains(&s.id) {
                s.dependencies.extend(g.sinks.iter().cloned());
                self.dependency_graph
                    .insert(s.id.clone(), s.dependencies.clone());
            }
        }
        for s in &g.added {
            self.subtask_ids.push(s.id.clone());
            self.dependency_graph
                .insert(s.id.clone(), s.dependencies.clone());
        }
        self.subtasks.extend(g.added.iter().cloned());
        let added = u32::try_from(g.added.len()).unwrap_or(u32::MAX);
        self.total_subtasks = self.total_subtasks.saturating_add(added);
    }

    /// Takes back counters the plan rules changed.
    pub fn set_counters(&mut self, c: PlanCounters) {
        self.status = c.status;
        self.total_subtasks = c.total;
        self.completed_subtasks = c.completed;
        self.failed_subtasks = c.failed;
        self.cancelled_subtasks = c.cancelled;
    }

    /// See [`PlanCounters::status_after`].
    pub fn status_after(&self, subtask_status: crate::TaskStatus) -> Option<PlanStatus> {
        self.counters().status_after(subtask_status)
    }

    /// pending → in_progress; false from any other status.
    pub fn start_execution(&mut self) -> bool {
        self.set_if(PlanStatus::Pending, PlanStatus::InProgress)
    }

    pub fn complete(&mut self) -> bool {
        self.finish(PlanStatus::Completed)
    }

    pub fn fail(&mut self) -> bool {
        self.finish(PlanStatus::Failed)
    }

    pub fn cancel(&mut self) -> bool {
        self.finish(PlanStatus::Cancelled)
    }

    fn finish(&mut self, to: PlanStatus) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.status = to;
        true
    }

    fn set_if(&mut self, from: PlanStatus, to: PlanStatus) -> bool {
        if self.status != from {
            return false;
        }
        self.status = to;
        true
    }

    /// The subtasks `subtask_id` waits for, in the order given; empty for a subtask
    /// without dependencies or an unknown id. See [`ExecutionPlan::get_dependents`] for
    /// the other direction.
    pub fn get_dependencies(&self, subtask_id: &str) -> &[String] {
        self.dependency_graph
            .get(subtask_id)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Records that `subtask_id` waits for `depends_on`, refusing anything that would break the DAG.
    pub fn add_dependency(&mut self, subtask_id: &str, depends_on: &str) -> Result<()> {
        let mut subtasks = self.subtasks.clone();
        let node = subtasks
            .iter_mut()
            .find(|s| s.id == subtask_id)
            .ok_or_else(|| PlanError::InvalidSubtask {
                subtask: subtask_id.into(),
                reason: "no such subtask in this plan".into(),
            })?;
        if !node.dependencies.iter().any(|d| d == depends_on) {
            node.dependencies.push(depends_on.into());
        }
        validate_graph(&subtasks)?;
        self.subtasks = subtasks;
        self.dependency_graph
            .insert(subtask_id.into(), self.get_dependencies_of(subtask_id));
        Ok(())
    }

    fn get_dependencies_of(&self, subtask_id: &str) -> Vec<String> {
        self.subtasks
            .iter()
            .find(|s| s.id == subtask_id)
            .map(|s| s.dependencies.clone())
            .unwrap_or_default()
    }
}

/// A plan's subtasks in the order their tasks are created ([`in_layers`]), and the id of
/// each one's task, minted in that order. Task ids are time-ordered, so the tasks one layer
/// makes ready together sit side by side in every index keyed by task id: minted in the
/// listed order instead, the next steps of 100 chains touched a page per chain of such an
/// index in every round that finished or claimed them (on SQLite, where a commit writes
/// every page it changed, plan-chains ran 15–35% slower).
pub fn tasks_in_layers(subtasks: &[SubTask]) -> (Vec<&SubTask>, HashMap<&str, TaskId>) {
    let order: Vec<&SubTask> = in_layers(subtasks)
        .into_iter()
        .map(|i| &subtasks[i])
        .collect();
    let ids = order
        .iter()
        .map(|st| (st.id.as_str(), TaskId::new()))
        .collect();
    (order, ids)
}

/// The order a plan's tasks are created in, as indices into `subtasks`: by depth (a
/// subtask without dependencies has depth 0, any other one more than its deepest
/// dependency), in the given order within a depth. Queue order breaks ties by creation, so
/// ready subtasks of equal priority are claimed a layer at a time: 100 chains advance side
/// by side instead of the first chains running to their end while the others wait.
/// `subtasks` must form a DAG (see [`validate_subtasks`]); a dependency outside it counts
/// as done.
pub fn in_layers(subtasks: &[SubTask]) -> Vec<usize> {
    let index: HashMap<&str, usize> = subtasks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut depth: Vec<Option<usize>> = vec![None; subtasks.len()];
    // Entered but not finished: a dependency found here would be a cycle, counted as done.
    let mut entered = vec![false; subtasks.len()];
    for start in 0..subtasks.len() {
        // Iterative, so a chain of 100,000 cannot overflow the stack.
        let mut stack = vec![start];
        while let Some(&node) = stack.last() {
            if depth[node].is_some() {
                stack.pop();
                continue;
            }
            entered[node] = true;
            let deps = subtasks[node]
                .dependencies
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied());
            let before = stack.len();
            let mut deepest = None;
            for d in deps {
                match depth[d] {
                    Some(x) => deepest = deepest.max(Some(x)),
                    None if !entered[d] => stack.push(d),
                    None => {}
                }
            }
            if stack.len() == before {
                depth[node] = Some(deepest.map_or(0, |d| d + 1));
                stack.pop();
            }
        }
    }
    let mut order: Vec<usize> = (0..subtasks.len()).collect();
    order.sort_by_key(|&i| depth[i].unwrap_or(0));
    order
}

/// Dependencies per subtask id, deduplicated, for backends that store dependency rows.
pub fn unique_dependencies(subtask: &SubTask) -> Vec<&str> {
    let mut seen = HashSet::new();
    subtask
        .dependencies
        .iter()
        .map(String::as_str)
        .filter(|d| seen.insert(*d))
        .collect()
}

mod graph;
mod growth;
mod header;
mod validate;
pub use growth::{Growth, grow};
pub use header::PlanHeader;
use header::progress_percentage;
use validate::validate_graph;
pub use validate::{validate_subtask_fields, validate_subtasks};

#[cfg(test)]
mod tests;
