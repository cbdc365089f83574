//! Task operations: create, read, update status, delete, cancel, requeue, retry, prune.

use std::collections::HashMap;
use std::time::Duration;

use hive_models::{Json, NewTask, PlanId, Run, RunId, Task, TaskId, TaskStatus};
use hive_store::{
    PruneParams, StatusChange, StatusChanged, StatusCounts, Store, TaskFilter, TaskPageParams,
    TasksInserted,
};

use crate::{Error, Ops, Result};

/// How many tasks [`Ops::get_queued_tasks`] returns when no limit is given: the original
/// package's default.
pub const DEFAULT_QUEUED_LIMIT: u32 = 10;

/// How many failed tasks one [`Ops::requeue_failed`] looks at, at most, those it passes
/// over or a requeue refuses included: a dashboard's "retry every failure" over a history
/// of refused ones (subtasks whose dependency failed) ends in seconds, not hours.
pub const REQUEUE_LOOKS_AT_MOST: usize = 10_000;

/// What [`Ops::retry_tasks`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    /// Tasks put back in the queue.
    pub retried: u64,
    /// Tasks that matched but changed before their turn (another operator retried or
    /// deleted them): left as they are.
    pub skipped: u64,
    /// Subtasks of failed or cancelled plans, which are retried with their plan
    /// ([`Ops::retry_plan`]), not alone: left as they are.
    pub in_finished_plans: u64,
    /// Tasks the retry rules refuse (one waiting for a dependency that failed or was
    /// cancelled, which would wait for good): left as they are; retrying one alone names
    /// why.
    pub refused: u64,
}

/// What [`Ops::create_task_reporting`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TaskCreated {
    pub id: TaskId,
    /// False when the task's idempotency key named a task created before.
    pub created: bool,
}

/// Refuses a bulk retry whose filter could select tasks a retry must not move: it must
/// name one status that [`TaskStatus::check_retry`] allows.
pub fn check_retry_filter(filter: &TaskFilter) -> std::result::Result<(), hive_models::Error> {
    match filter.status {
        Some(status) => status.check_retry(),
        None => Err(hive_models::Error::InvalidField {
            field: "status".into(),
            reason: "a bulk retry needs the status of the tasks to retry (e.g. `failed`)".into(),
        }),
    }
}

impl<S: Store + ?Sized> Ops<S> {
    /// Creates a task and returns its id (the first task's id when its idempotency key was
    /// seen before). Rejects an empty title or type and an oversized payload, naming the field.
    pub async fn create_task(&self, task: NewTask) -> Result<TaskId> {
        Ok(self.create_task_reporting(task).await?.id)
    }

    /// [`Ops::create_task`], also telling whether this call created the task or its
    /// idempotency key named a task created before (a retried request), which nothing
    /// changed.
    pub async fn create_task_reporting(&self, task: NewTask) -> Result<TaskCreated> {
        let done = self.create_tasks_reporting(vec![task]).await?;
        let id = done
            .ids
            .first()
            .copied()
            .ok_or_else(|| Error::not_found("task", "created"))?;
        Ok(TaskCreated {
            id,
            created: done.new_tasks > 0,
        })
    }

    /// Creates many tasks in one transaction. Nothing is created if any task is invalid;
    /// the error names the task's position.
    pub async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>> {
        Ok(self.create_tasks_reporting(tasks).await?.ids)
    }

    /// [`Ops::create_tasks`], also counting the tasks this call created (a task whose
    /// idempotency key names a stored task is not one of them).
    pub async fn create_tasks_reporting(&self, tasks: Vec<NewTask>) -> Result<TasksInserted> {
        for (i, t) in tasks.iter().enumerate() {
            t.validate(self.config.max_payload_bytes).map_err(|e| {
                if tasks.len() == 1 {
                    Error::Invalid(e)
                } else {
                    Error::Invalid(hive_models::Error::InvalidField {
                        field: format!("tasks[{i}]"),
                        reason: e.to_string(),
                    })
                }
            })?;
        }
        let tasks = tasks
            .into_iter()
            .map(|t| self.config.with_type_retry(t))
            .collect();
        Ok(self.store.insert_tasks(tasks).await?)
    }

    pub async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.store.get_task(id).await?)
    }

    /// The tasks of `ids` that exist, in insertion order, in one read.
    pub async fn get_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        Ok(self.store.get_tasks(ids).await?)
    }

    /// Sets a task's status: `Ok(false)` for an unknown task, `Err(Invalid)` for a change
    /// the transition table forbids. `metadata` is merged into the task's metadata.
    pub async fn update_task_status(
        &self,
        id: TaskId,
        status: TaskStatus,
        metadata: Option<Json>,
    ) -> Result<bool> {
        let change = StatusChange {
            metadata,
            ..StatusChange::to(status)
        };
        self.apply_status(id, change).await.map(|c| c.is_some())
    }

    /// Puts a task that no worker holds (failed, completed, cancelled, …) back in the queue.
    pub async fn requeue_task(&self, id: TaskId) -> Result<bool> {
        let change = StatusChange::requeue();
        self.apply_status(id, change).await.map(|c| c.is_some())
    }

    /// An operator's retry: puts a task no worker holds, and that is not queued, back in
    /// the queue for one more run (its attempts so far still count against `max_retries`).
    /// `Ok(false)` for an unknown task; `Invalid` for a status [`TaskStatus::check_retry`]
    /// refuses.
    pub async fn retry_task(&self, id: TaskId) -> Result<bool> {
        let Some(task) = self.store.get_task(id).await? else {
            return Ok(false);
        };
        task.status.check_retry()?;
        self.requeue_task(id).await
    }

    /// Retries every task matching `filter` (which must name a status a retry moves, see
    /// [`check_retry_filter`]) as the tasks stood when the call began, reading
    /// `retry_batch` at a time: a task that fails again meanwhile is not retried twice, and
    /// a million matches are never loaded at once. `filter.limit` caps the total.
    pub async fn retry_tasks(&self, filter: &TaskFilter) -> Result<RetryReport> {
        check_retry_filter(filter)?;
        let now = self.store.now().await?;
        let as_of = filter.updated_not_after.map_or(now, |t| t.min(now));
        let page = self.config.retry_batch.max(1);
        let mut left = filter.limit.unwrap_or(u32::MAX);
        let mut report = RetryReport::default();
        // Tasks a retry refused keep their status, and so match every later page: read
        // past them (each page is that many longer) and count each once.
        let mut refused: std::collections::HashSet<TaskId> = std::collections::HashSet::new();
        while left > 0 {
            let want = left.min(page);
            let held = u32::try_from(refused.len()).unwrap_or(u32::MAX);
            let batch = self
                .store
                .list_tasks(&TaskFilter {
                    updated_not_after: Some(as_of),
                    limit: Some(want.saturating_add(held)),
                    ..filter.clone()
                })
                .await?;
            let full = batch.len() >= want.saturating_add(held) as usize;
            let mut fresh = 0;
            for task in &batch {
                if refused.contains(&task.id) {
                    continue;
                }
                // A task refused earlier that has since left the filter (deleted, say)
                // makes room on the page for one more than asked: leave it to the limit.
                if fresh == want {
                    break;
                }
                fresh += 1;
                // Each retried task leaves the filter's status, so the next page starts
                // after it. One deleted or queued again since it was read is skipped.
                match self.apply_status(task.id, StatusChange::requeue()).await {
                    Ok(Some(c)) if c.previous != TaskStatus::Queued => report.retried += 1,
                    Err(Error::Invalid(hive_models::Error::SubtaskOfFinishedPlan { .. })) => {
                        report.in_finished_plans += 1;
                        refused.insert(task.id);
                    }
                    Ok(_) => report.skipped += 1,
                    Err(Error::Invalid(_)) => {
                        report.refused += 1;
                        refused.insert(task.id);
                    }
                    Err(e) => return Err(e),
                }
            }
            if !full {
                break;
            }
            left = left.saturating_sub(fresh);
        }
        Ok(report)
    }

    /// Cancels a task (and, transitively, the tasks that depend on it). A worker holding it
    /// gets a stale-run error when it tries to finish. `reason`, when given, is kept as the
    /// task's `last_error` and its running run's `error_message`, and carried by the
    /// status event. `Ok(false)` for an unknown task.
    pub async fn cancel_task(&self, id: TaskId, reason: Option<&str>) -> Result<bool> {
        let change = StatusChange::to(TaskStatus::Cancelled).because(reason.map(str::to_owned));
        self.apply_status(id, change).await.map(|c| c.is_some())
    }

    async fn apply_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>> {
        if let Some(metadata) = &change.metadata {
            hive_models::check_json_storable("metadata", metadata)?;
        }
        if let Some(reason) = &change.reason {
            hive_models::check_no_nul("reason", reason)?;
        }
        let changed = self.store.set_task_status(id, change).await?;
        if let Some(c) = &changed {
            self.plans_changed(c.task.plan_id);
            self.finished_counts.forget().await;
        }
        Ok(changed)
    }

    /// Every task in a status, in queue order.
    pub async fn get_tasks_by_status(&self, status: TaskStatus) -> Result<Vec<Task>> {
        Ok(self
            .store
            .list_tasks(&TaskFilter {
                status: Some(status),
                ..Default::default()
            })
            .await?)
    }

    /// Up to `limit` queued tasks (`None`: [`DEFAULT_QUEUED_LIMIT`], the original's 10),
    /// optionally of one type: priority descending, then oldest first. As in the original,
    /// a queued task may still wait for its dependencies or its `run_at`; see
    /// [`Ops::get_ready_tasks`] for the ones a worker could claim now.
    pub async fn get_queued_tasks(
        &self,
        limit: impl Into<Option<u32>>,
        task_type: Option<&str>,
    ) -> Result<Vec<Task>> {
        self.queued(limit.into(), task_type, false).await
    }

    /// [`Ops::get_queued_tasks`] limited to the tasks a worker could claim now: every
    /// dependency completed and `run_at` passed (on the database clock).
    pub async fn get_ready_tasks(
        &self,
        limit: impl Into<Option<u32>>,
        task_type: Option<&str>,
    ) -> Result<Vec<Task>> {
        self.queued(limit.into(), task_type, true).await
    }

    async fn queued(
        &self,
        limit: Option<u32>,
        task_type: Option<&str>,
        ready_only: bool,
    ) -> Result<Vec<Task>> {
        let filter = TaskFilter {
            status: Some(TaskStatus::Queued),
            task_type: task_type.map(str::to_owned),
            limit: Some(limit.unwrap_or(DEFAULT_QUEUED_LIMIT)),
            ready_only,
            ..Default::default()
        };
        Ok(self.store.list_tasks(&filter).await?)
    }

    /// Tasks matching any filter, in queue order.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        Ok(self.store.list_tasks(filter).await?)
    }

    /// Task counts per status, for the store or one plan.
    pub async fn count_tasks(&self, plan_id: Option<hive_models::PlanId>) -> Result<StatusCounts> {
        Ok(self.store.count_tasks(plan_id).await?)
    }

    /// One page of tasks, newest first, below the cursor `params.before`, under the
    /// filters (keyset pagination: as fast on the last page as on the first). Rejects a
    /// limit outside 1..=[`TaskPageParams::MAX_LIMIT`].
    pub async fn page_tasks(&self, params: &TaskPageParams) -> Result<Vec<Task>> {
        params.check()?;
        Ok(self.store.page_tasks(params).await?)
    }

    /// Requeues failed tasks matching `filter` (its status is taken as `failed`), newest
    /// first, a page at a time, at most `max` of them: an operator's "retry every failure
    /// of this type", bounded so one request never runs unbounded: it looks at
    /// [`REQUEUE_LOOKS_AT_MOST`] failed tasks at most, and passes over the subtasks of
    /// failed and cancelled plans with one read per plan. Returns the ids requeued (a task
    /// deleted meanwhile, or one a requeue refuses, is skipped).
    pub async fn requeue_failed(&self, filter: &TaskPageParams, max: u32) -> Result<Vec<TaskId>> {
        let mut page = TaskPageParams {
            status: Some(TaskStatus::Failed),
            limit: TaskPageParams::MAX_LIMIT.min(max.max(1)),
            ..filter.clone()
        };
        page.check()?;
        let mut done = Vec::new();
        let mut looked = 0;
        let mut plans_requeue: HashMap<PlanId, bool> = HashMap::new();
        while done.len() < max as usize && looked < REQUEUE_LOOKS_AT_MOST {
            let tasks = self.store.page_tasks(&page).await?;
            if tasks.is_empty() {
                break;
            }
            for t in &tasks {
                if done.len() >= max as usize || looked >= REQUEUE_LOOKS_AT_MOST {
                    break;
                }
                looked += 1;
                // The next page starts after the last task looked at, not the page's last.
                page.before = Some(t.id);
                if let Some(plan) = t.plan_id {
                    let requeues = match plans_requeue.get(&plan) {
                        Some(known) => *known,
                        None => {
                            let header = self.store.get_plan_header(plan).await?;
                            let requeues = header.is_none_or(|h| h.status.requeues_subtasks());
                            *plans_requeue.entry(plan).or_insert(requeues)
                        }
                    };
                    if !requeues {
                        continue;
                    }
                }
                // A subtask of a failed plan (retried with its plan) or one whose
                // dependency will not complete stays failed; the others go on.
                match self.requeue_task(t.id).await {
                    Ok(true) => done.push(t.id),
                    Ok(false) | Err(Error::Invalid(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(done)
    }

    /// Deletes a task and its runs; false for an unknown task.
    pub async fn delete_task(&self, id: TaskId) -> Result<bool> {
        let deleted = self.store.delete_task(id).await?;
        self.finished_counts.forget().await;
        Ok(deleted)
    }

    /// Deletes finished tasks outside plans older than `older_than` in the given terminal
    /// statuses (none given: every finished status, as [`Ops::prune_plans`] takes it), in
    /// bounded batches so no statement holds locks for long. Returns how many were
    /// deleted. Plan subtasks go with their plan ([`Ops::prune_plans`]).
    pub async fn prune_tasks(&self, older_than: Duration, statuses: &[TaskStatus]) -> Result<u64> {
        let statuses = match statuses {
            [] => vec![
                TaskStatus::Completed,
                TaskStatus::Failed,
                TaskStatus::Cancelled,
            ],
            given => given.to_vec(),
        };
        let params = PruneParams {
            older_than,
            statuses,
            limit: self.config.prune_batch.max(1),
        };
        let mut total = 0;
        loop {
            let n = self.store.prune_tasks(&params).await?;
            total += n;
            if n < u64::from(params.limit) {
                self.finished_counts.forget().await;
                return Ok(total);
            }
        }
    }

    /// A task's runs, first attempt first.
    pub async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        Ok(self.store.list_runs(task_id).await?)
    }

    pub async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        Ok(self.store.get_run(id).await?)
    }

    /// The runs of `ids` that exist, by task then run number, in one read.
    pub async fn get_runs(&self, ids: &[RunId]) -> Result<Vec<Run>> {
        Ok(self.store.get_runs(ids).await?)
    }
}
