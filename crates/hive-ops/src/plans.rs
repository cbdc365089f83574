//! Execution plan operations: create (validated DAG), materialize into tasks, dependency
//! checks, next subtask, start, cancel, and the cached status read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hive_models::{ExecutionPlan, NewPlan, PlanHeader, PlanId, PlanStatus, Task, TaskId};
use hive_store::{PlanPruneParams, PlansPruned, StatusCounts, Store, TaskFilter};
use serde::Serialize;

use crate::{Error, Ops, Result};

/// What [`Ops::submit_plan_reporting`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanSubmitted {
    pub id: PlanId,
    /// Tasks this call created: 0 when a plan with the same idempotency key had them all.
    pub new_tasks: u64,
}

impl PlanSubmitted {
    /// Whether this call created the plan's tasks; false for a plan submitted before
    /// under the same idempotency key, which nothing changed.
    pub fn created(&self) -> bool {
        self.new_tasks > 0
    }
}

/// Plans deleted per transaction by [`Ops::prune_plans`]: few, as each takes all its tasks
/// along (a plan may hold 100,000).
pub const PLAN_PRUNE_BATCH: u32 = 20;

/// A TTL cache of plan statuses. Every event about a plan invalidates its entry, so this
/// process never reads its own stale status.
#[derive(Debug)]
pub(crate) struct StatusCache {
    ttl: Duration,
    entries: Mutex<Entries>,
    /// Counts invalidations: a status read before one of its plan is not stored after it
    /// (the change that finished the plan may have landed between the read and the put).
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    by_plan: HashMap<PlanId, Entry>,
    /// Reads begun before this generation are not stored (entries were forgotten since).
    floor: u64,
}

/// What the cache knows of a plan: its status as read, if any, and the generation of its
/// last change (per plan, so changes to other plans do not keep this one's out; kept with
/// the status, so a read begun before a change is refused even after a later read stored
/// its status).
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    status: Option<(PlanStatus, Instant)>,
    changed_at: u64,
}

/// The most plans a cache holds; past it, all are forgotten (and the floor raised).
const CACHED_PLANS: usize = 10_000;

impl Entries {
    /// Makes room for one more plan: expired statuses and changes go first, then all.
    fn make_room(&mut self, generation: u64, ttl: Duration) {
        if self.by_plan.len() < CACHED_PLANS {
            return;
        }
        (self.by_plan).retain(|_, e| e.status.is_some_and(|(_, at)| at.elapsed() < ttl));
        if self.by_plan.len() >= CACHED_PLANS {
            self.by_plan.clear();
        }
        // What a forgotten entry would have refused, the floor refuses.
        self.floor = generation;
    }
}

impl StatusCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        StatusCache {
            ttl,
            entries: Mutex::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn next_generation(&self) -> u64 {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, id: PlanId) -> Option<PlanStatus> {
        let entries = self.lock();
        let (status, at) = entries.by_plan.get(&id)?.status?;
        (at.elapsed() < self.ttl).then_some(status)
    }

    /// Stores a status read when the cache was at `read_at` (see [`StatusCache::generation`]),
    /// unless the plan changed since.
    pub(crate) fn put(&self, id: PlanId, status: PlanStatus, read_at: u64) {
        let mut entries = self.lock();
        let changed_at = entries.by_plan.get(&id).map_or(0, |e| e.changed_at);
        if read_at < entries.floor || read_at < changed_at {
            return;
        }
        if !entries.by_plan.contains_key(&id) {
            entries.make_room(self.generation(), self.ttl);
            if read_at < entries.floor {
                return;
            }
        }
        let entry = entries.by_plan.entry(id).or_default();
        entry.status = Some((status, Instant::now()));
    }

    pub(crate) fn invalidate(&self, id: PlanId) {
        let mut entries = self.lock();
        let at = self.next_generation();
        if !entries.by_plan.contains_key(&id) {
            entries.make_room(at, self.ttl);
        }
        entries.by_plan.insert(
            id,
            Entry {
                status: None,
                changed_at: at,
            },
        );
    }

    pub(crate) fn clear(&self) {
        let mut entries = self.lock();
        entries.by_plan.clear();
        entries.floor = self.next_generation();
    }
}

/// A plan with its task counts per status, for status displays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    pub plan: ExecutionPlan,
    pub progress_percent: f64,
    pub task_counts: StatusCounts,
}

impl<S: Store + ?Sized> Ops<S> {
    /// Validates and stores a plan (`pending`, subtasks not yet tasks). The error names the
    /// offending subtask ids: duplicates, self-dependencies, unknown dependencies or a cycle.
    pub async fn create_execution_plan(&self, plan: NewPlan) -> Result<PlanId> {
        let plan = self.checked_plan(plan).await?;
        Ok(self.store.insert_plan(plan).await?)
    }

    /// A plan validated, its parent task found, its subtasks' retry limits filled from the
    /// configuration.
    async fn checked_plan(&self, mut plan: NewPlan) -> Result<NewPlan> {
        plan.validate(self.config.max_payload_bytes)?;
        if let Some(parent) = plan.parent_task_id
            && self.store.get_task(parent).await?.is_none()
        {
            return Err(Error::not_found("parent task", parent));
        }
        for s in &mut plan.subtasks {
            self.config.fill_subtask_retry(s);
        }
        Ok(plan)
    }

    /// Turns a plan's subtasks into tasks with dependency rows; returns how many were
    /// created, 0 when already done. [`Error::NotFound`] for an unknown plan.
    pub async fn create_planned_subtasks_from_plan(&self, plan_id: PlanId) -> Result<u64> {
        self.store
            .materialize_plan(plan_id)
            .await?
            .ok_or_else(|| Error::not_found("plan", plan_id))
    }

    /// Creates a plan and its tasks, as [`Ops::create_execution_plan`] then
    /// [`Ops::create_planned_subtasks_from_plan`] would, in one transaction: a crash
    /// between the two would leave a pending plan whose id the caller never got.
    pub async fn submit_plan(&self, plan: NewPlan) -> Result<PlanId> {
        Ok(self.submit_plan_reporting(plan).await?.id)
    }

    /// [`Ops::submit_plan`], also telling whether this call created the plan's tasks or a
    /// plan holding its idempotency key had them already (a retried request, a second
    /// scheduler): a caller can say "submitted before" rather than report a new plan.
    pub async fn submit_plan_reporting(&self, plan: NewPlan) -> Result<PlanSubmitted> {
        let plan = self.checked_plan(plan).await?;
        let (id, new_tasks) = self.store.submit_plan(plan).await?;
        Ok(PlanSubmitted { id, new_tasks })
    }

    pub async fn get_execution_plan_status(&self, plan_id: PlanId) -> Result<Option<PlanStatus>> {
        // The header, not the plan: a plan's definition may be 100,000 subtasks long.
        let generation = self.plan_cache.generation();
        let status = self.store.get_plan_header(plan_id).await?.map(|p| p.status);
        if let Some(s) = status {
            self.plan_cache.put(plan_id, s, generation);
        }
        Ok(status)
    }

    /// [`Ops::get_execution_plan_status`] served from a TTL cache; this process's own
    /// changes (and, with Postgres, other processes') invalidate it through the event bus.
    pub async fn get_execution_plan_status_cached(
        &self,
        plan_id: PlanId,
    ) -> Result<Option<PlanStatus>> {
        if let Some(s) = self.plan_cache.get(plan_id) {
            return Ok(Some(s));
        }
        self.get_execution_plan_status(plan_id).await
    }

    pub async fn get_plan(&self, plan_id: PlanId) -> Result<Option<ExecutionPlan>> {
        Ok(self.store.get_plan(plan_id).await?)
    }

    /// A plan with its progress and task counts per status.
    pub async fn plan_summary(&self, plan_id: PlanId) -> Result<Option<PlanSummary>> {
        let Some(plan) = self.store.get_plan(plan_id).await? else {
            return Ok(None);
        };
        let task_counts = self.store.count_tasks(Some(plan_id)).await?;
        Ok(Some(PlanSummary {
            progress_percent: plan.get_progress_percentage(),
            plan,
            task_counts,
        }))
    }

    /// A plan's title, status and counters without its subtasks: one row whatever the
    /// plan's size (what a page about a large plan starts from). `None` for an unknown plan.
    pub async fn plan_header(&self, plan_id: PlanId) -> Result<Option<PlanHeader>> {
        Ok(self.store.get_plan_header(plan_id).await?)
    }

    /// A plan's status and counters without its subtasks: cheap to poll whatever the
    /// plan's size. `None` for an unknown plan.
    pub async fn plan_progress(
        &self,
        plan_id: PlanId,
    ) -> Result<Option<hive_models::PlanCounters>> {
        Ok(self.store.get_plan_counters(plan_id).await?)
    }

    /// Plans, newest first.
    pub async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        Ok(self.store.list_plans(status, limit).await?)
    }

    /// The plans [`Self::list_plans`] lists, without their subtasks: what a listing shows,
    /// one row each however large the plans (`list_plans` reads every subtask of every
    /// plan it lists).
    pub async fn list_plan_headers(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<PlanHeader>> {
        Ok(self.store.list_plan_headers(status, limit).await?)
    }

    /// How many plans there are, of one status or all: a count, at the same cost however
    /// many plans there are to count (`hive status`, `GET /api/status`).
    pub async fn count_plans(&self, status: Option<PlanStatus>) -> Result<u64> {
        Ok(self.store.count_plans(status).await?)
    }

    /// Whether every dependency of a task is completed. [`Error::NotFound`] for an unknown task.
    pub async fn check_subtask_dependencies(&self, task_id: TaskId) -> Result<bool> {
        let met = self.store.dependencies_met(&[task_id]).await?;
        met.get(&task_id)
            .copied()
            .ok_or_else(|| Error::not_found("task", task_id))
    }

    /// [`Ops::check_subtask_dependencies`] for many tasks in one store round trip; unknown
    /// ids are absent from the map.
    pub async fn check_subtask_dependencies_batch(
        &self,
        task_ids: &[TaskId],
    ) -> Result<HashMap<TaskId, bool>> {
        Ok(self.store.dependencies_met(task_ids).await?)
    }

    /// The plan's best ready subtask (queue order), without claiming it.
    pub async fn get_next_planned_subtask(&self, plan_id: PlanId) -> Result<Option<Task>> {
        let filter = TaskFilter {
            plan_id: Some(plan_id),
            ready_only: true,
            limit: Some(1),
            ..Default::default()
        };
        Ok(self.store.list_tasks(&filter).await?.into_iter().next())
    }

    /// Moves a plan from pending to in_progress; false from any other status or for an unknown plan.
    pub async fn mark_plan_execution_started(&self, plan_id: PlanId) -> Result<bool> {
        let started = self
            .store
            .transition_plan(plan_id, PlanStatus::Pending, PlanStatus::InProgress)
            .await?;
        self.plans_changed([plan_id]);
        Ok(started)
    }

    /// Gives a failed or cancelled plan another go, in one transaction: its failed and
    /// cancelled subtasks are queued again, each waiting for its dependencies that are not
    /// completed, and the plan is `in_progress` again. Completed subtasks are not run again:
    /// their outputs stay and reach the requeued dependents as inputs. Each requeued subtask
    /// has its attempts back at 0 (its whole retry budget; run numbers keep counting).
    /// A plan cancelled before its tasks were created has them created now, and runs as a
    /// new one would. Returns the requeued task ids (insertion order; none for such a plan).
    ///
    /// Errors: `NotFound` for an unknown plan; `Invalid` for a plan that is not failed or
    /// cancelled (still running, or completed with every subtask completed), and nothing
    /// changes. A completed plan with a subtask failed or cancelled since (run again by
    /// hand) is retried like a failed one.
    pub async fn retry_plan(&self, plan_id: PlanId) -> Result<Vec<TaskId>> {
        let Some(counters) = self.store.get_plan_counters(plan_id).await? else {
            return Err(Error::not_found("plan", plan_id));
        };
        counters.check_retry()?;
        let requeued = self.store.retry_plan(plan_id).await?;
        self.plans_changed([plan_id]);
        self.finished_counts.forget().await;
        if requeued.as_ref().is_some_and(Vec::is_empty)
            && self
                .store
                .get_plan_counters(plan_id)
                .await?
                .is_some_and(|c| c.status == PlanStatus::Pending)
        {
            // Pending again: cancelled before its tasks were created, which come now.
            self.store.materialize_plan(plan_id).await?;
        }
        match requeued {
            Some(ids) => Ok(ids),
            // Its status changed between the read and the retry (another retry won).
            None => match self.store.get_plan_counters(plan_id).await? {
                Some(now) => {
                    now.check_retry()?;
                    Ok(Vec::new())
                }
                None => Err(Error::not_found("plan", plan_id)),
            },
        }
    }

    /// Deletes finished plans in `statuses` (all three when empty) last updated longer ago
    /// than `older_than` whose every subtask is finished, with their subtasks and runs,
    /// oldest first, [`PLAN_PRUNE_BATCH`] plans to a transaction. A failed plan whose other
    /// branch still runs stays until it ends. Unfinished statuses are `Invalid`.
    pub async fn prune_plans(
        &self,
        older_than: Duration,
        statuses: &[PlanStatus],
    ) -> Result<PlansPruned> {
        let statuses = if statuses.is_empty() {
            vec![
                PlanStatus::Completed,
                PlanStatus::Failed,
                PlanStatus::Cancelled,
            ]
        } else {
            statuses.to_vec()
        };
        let params = PlanPruneParams {
            older_than,
            statuses,
            limit: PLAN_PRUNE_BATCH,
        };
        params.check()?;
        let mut total = PlansPruned::default();
        loop {
            let pruned = self.store.prune_plans(&params).await?;
            total += pruned;
            // Until a batch finds nothing: one may prune fewer than asked and leave more
            // (a plan another transaction held, or reopened since its candidates were read,
            // is passed over; the next batch's candidates are read anew).
            if pruned.plans == 0 {
                self.finished_counts.forget().await;
                return Ok(total);
            }
        }
    }

    /// Cancels a plan and its open subtasks (workers holding them get stale-run errors).
    /// A failed plan stays failed, and its open subtasks (those that did not depend on the
    /// failure) are cancelled. False for an unknown, completed or cancelled plan, and for a
    /// failed one with nothing open.
    pub async fn cancel_plan(&self, plan_id: PlanId) -> Result<bool> {
        // The store cancels only a plan that may be; reading first tells "already
        // finished" apart from "cancelled now" for the caller. Its header is enough.
        let failed = match self.store.get_plan_header(plan_id).await? {
            Some(p) if p.status.may_cancel() => p.status == PlanStatus::Failed,
            _ => return Ok(false),
        };
        let cancelled = self.store.cancel_plan(plan_id).await?;
        self.plans_changed([plan_id]);
        self.finished_counts.forget().await;
        Ok(cancelled.is_some_and(|c| !failed || !c.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status read before the change that finished its plan, stored after that change
    /// invalidated the entry, would be served stale for the TTL: it is not stored.
    #[test]
    fn a_status_read_before_an_invalidation_is_not_cached_after_it() {
        let cache = StatusCache::new(Duration::from_secs(60));
        let plan = PlanId::new();
        let before = cache.generation();
        cache.invalidate(plan);
        cache.put(plan, PlanStatus::InProgress, before);
        assert_eq!(cache.get(plan), None);
        cache.put(plan, PlanStatus::Completed, cache.generation());
        assert_eq!(cache.get(plan), Some(PlanStatus::Completed));
    }

    /// A read begun before a change is refused also after a later read stored the plan's
    /// new status.
    #[test]
    fn a_read_from_before_a_change_never_overwrites_a_later_one() {
        let cache = StatusCache::new(Duration::from_secs(60));
        let plan = PlanId::new();
        let early = cache.generation();
        cache.invalidate(plan);
        cache.put(plan, PlanStatus::Completed, cache.generation());
        cache.put(plan, PlanStatus::InProgress, early);
        assert_eq!(cache.get(plan), Some(PlanStatus::Completed));
    }

    /// Changes alone (a worker's claims and finishes, which never read) keep the cache
    /// bounded.
    #[test]
    fn changes_alone_keep_the_cache_bounded() {
        let cache = StatusCache::new(Duration::from_secs(60));
        for _ in 0..CACHED_PLANS * 2 {
            cache.invalidate(PlanId::new());
        }
        assert!(cache.lock().by_plan.len() <= CACHED_PLANS);
    }

    /// Under load some plan changes during almost every read: only a change to the plan
    /// read keeps its status out.
    #[test]
    fn another_plans_change_does_not_keep_a_status_out() {
        let cache = StatusCache::new(Duration::from_secs(60));
        let (plan, other) = (PlanId::new(), PlanId::new());
        let before = cache.generation();
        cache.invalidate(other);
        cache.put(plan, PlanStatus::InProgress, before);
        assert_eq!(cache.get(plan), Some(PlanStatus::InProgress));
        let before = cache.generation();
        cache.clear();
        cache.put(plan, PlanStatus::Completed, before);
        assert_eq!(
            cache.get(plan),
            None,
            "everything was forgotten during the read"
        );
    }

    #[test]
    fn a_full_cache_of_fresh_statuses_starts_over() {
        let cache = StatusCache::new(Duration::from_secs(60));
        for _ in 0..CACHED_PLANS {
            cache.put(PlanId::new(), PlanStatus::InProgress, cache.generation());
        }
        let last = PlanId::new();
        cache.put(last, PlanStatus::Failed, cache.generation());
        assert_eq!(cache.lock().by_plan.len(), 1);
        assert_eq!(cache.get(last), Some(PlanStatus::Failed));
    }
}
