//! Every operation of the async client, blocking: each declared once here, with the
//! signature of the async method it runs to completion.

use std::collections::HashMap;
use std::time::Duration;

use hive_models::{
    ExecutionPlan, Json, NewPlan, NewTask, PlanCounters, PlanHeader, PlanId, PlanStatus, Run,
    RunId, Task, TaskId, TaskStatus, Timestamp, Worker, WorkerId, WorkerStatus,
};
use hive_ops::{Claimed, PlanResults, PlanSummary, TriagedSubtask};
use hive_store::{
    FinishReport, Finished, PlansPruned, QueueStats, ReapReport, RunOutcome, StatusCounts,
    TaskFilter, TaskPageParams, WorkerRegistration,
};

use super::Client;
use crate::Result;

/// `blocking! { "path::Type" => { fn name(arg: Type, …) -> Output; … } … }` writes, for
/// each method, `pub fn name(&self, arg: Type, …) -> Result<Output>` running the async
/// method of the same name (documented at `path::Type::name`) on the facade's runtime, and
/// [`WRAPPED`]: every name declared.
macro_rules! blocking {
    ($($owner:literal => { $(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $out:ty;)* })*) => {
        impl Client {
            $($(
                #[doc = concat!("Blocking [`", $owner, "::", stringify!($name), "`].")]
                // `?` converts an operation's error; the client's own methods already
                // return this crate's.
                #[allow(clippy::needless_question_mark)]
                pub fn $name(&self, $($arg: $ty),*) -> Result<$out> {
                    Ok(self.block_on(|c| c.$name($($arg),*))?)
                }
            )*)*
        }

        /// The async client's operations this facade wraps, by name (for the tests).
        #[cfg(test)]
        pub(super) const WRAPPED: &[&str] = &[$($(stringify!($name)),*),*];
    };
}

blocking! {
    "hive_ops::Ops" => {
        // Tasks.
        fn create_task(task: NewTask) -> TaskId;
        fn create_tasks(tasks: Vec<NewTask>) -> Vec<TaskId>;
        fn create_task_reporting(task: NewTask) -> hive_ops::TaskCreated;
        fn create_tasks_reporting(tasks: Vec<NewTask>) -> hive_store::TasksInserted;
        fn get_task(id: TaskId) -> Option<Task>;
        fn get_tasks(ids: &[TaskId]) -> Vec<Task>;
        fn update_task_status(id: TaskId, status: TaskStatus, metadata: Option<Json>) -> bool;
        fn requeue_task(id: TaskId) -> bool;
        fn retry_task(id: TaskId) -> bool;
        fn retry_tasks(filter: &TaskFilter) -> hive_ops::RetryReport;
        fn cancel_task(id: TaskId, reason: Option<&str>) -> bool;
        fn get_tasks_by_status(status: TaskStatus) -> Vec<Task>;
        fn get_queued_tasks(limit: impl Into<Option<u32>> + Send, task_type: Option<&str>) -> Vec<Task>;
        fn get_ready_tasks(limit: impl Into<Option<u32>> + Send, task_type: Option<&str>) -> Vec<Task>;
        fn list_tasks(filter: &TaskFilter) -> Vec<Task>;
        fn count_tasks(plan_id: Option<PlanId>) -> StatusCounts;
        fn status_counts() -> StatusCounts;
        fn page_tasks(params: &TaskPageParams) -> Vec<Task>;
        fn queue_stats(since: Option<Timestamp>) -> QueueStats;
        fn requeue_failed(filter: &TaskPageParams, max: u32) -> Vec<TaskId>;
        fn delete_task(id: TaskId) -> bool;
        fn prune_tasks(older_than: Duration, statuses: &[TaskStatus]) -> u64;
        fn list_runs(task_id: TaskId) -> Vec<Run>;
        fn get_run(id: RunId) -> Option<Run>;
        fn get_runs(ids: &[RunId]) -> Vec<Run>;
        // Workers.
        fn register_worker(worker_id: &str, role: &str, capabilities: Vec<String>) -> bool;
        fn register_worker_with(registration: &WorkerRegistration) -> Worker;
        fn update_worker_heartbeat(worker_id: &str, status: Option<WorkerStatus>) -> bool;
        fn set_worker_status(worker_id: &str, status: WorkerStatus, reason: Option<&str>) -> bool;
        fn get_active_workers(role: Option<&str>) -> Vec<Worker>;
        fn list_workers(role: Option<&str>) -> Vec<Worker>;
        fn get_worker(worker_id: &str) -> Option<Worker>;
        fn unregister_worker(worker_id: &str) -> bool;
        fn remove_worker(worker_id: &str) -> Option<Vec<TaskId>>;
        fn prune_workers(silent_for: Duration) -> Vec<WorkerId>;
        fn add_schedule(new: hive_models::NewSchedule) -> hive_models::Schedule;
        fn put_schedule(new: hive_models::NewSchedule) -> (hive_models::Schedule, hive_ops::SchedulePut);
        fn trigger_schedule(name: &str, key: Option<&str>) -> hive_ops::Triggered;
        fn list_schedule_views() -> Vec<hive_ops::ScheduleView>;
        fn get_schedule_view(name: &str) -> Option<hive_ops::ScheduleView>;
        fn schedule_history(name: &str, limit: u32) -> Option<Vec<hive_ops::SlotRun>>;
        fn get_schedule(name: &str) -> Option<hive_models::Schedule>;
        fn list_schedules() -> Vec<hive_models::Schedule>;
        fn delete_schedule(name: &str) -> bool;
        fn pause_schedule(name: &str) -> bool;
        fn resume_schedule(name: &str) -> bool;
        fn fire_due_schedules() -> hive_ops::FireReport;
        // Flow control.
        fn set_limits(scope: hive_models::Scope, limits: hive_ops::Limits, allow_new: bool) -> hive_models::FlowRule;
        fn delete_limits(scope: &hive_models::Scope) -> bool;
        fn pause_queue(task_type: &str, allow_new: bool) -> hive_models::FlowRule;
        fn resume_queue(task_type: &str) -> bool;
        fn list_flow_rules() -> Vec<hive_models::FlowRule>;
        fn list_queues() -> Vec<hive_ops::QueueInfo>;
        // Plans.
        fn create_execution_plan(plan: NewPlan) -> PlanId;
        fn create_planned_subtasks_from_plan(plan_id: PlanId) -> u64;
        fn submit_plan(plan: NewPlan) -> PlanId;
        fn submit_plan_reporting(plan: NewPlan) -> hive_ops::PlanSubmitted;
        fn get_execution_plan_status(plan_id: PlanId) -> Option<PlanStatus>;
        fn get_execution_plan_status_cached(plan_id: PlanId) -> Option<PlanStatus>;
        fn get_plan(plan_id: PlanId) -> Option<ExecutionPlan>;
        fn plan_summary(plan_id: PlanId) -> Option<PlanSummary>;
        fn plan_progress(plan_id: PlanId) -> Option<PlanCounters>;
        fn plan_header(plan_id: PlanId) -> Option<PlanHeader>;
        fn plan_results(plan_id: PlanId) -> Option<PlanResults>;
        fn wait_for_plan(id: PlanId, within: Option<Duration>) -> PlanHeader;
        fn wait_for_task(id: TaskId, within: Option<Duration>) -> Task;
        fn plan_subtasks_by_status(plan: &PlanHeader, statuses: &[TaskStatus], limit: u32) -> Vec<Task>;
        fn plan_subtasks_with_timing(plan: &PlanHeader, statuses: &[TaskStatus], limit: u32) -> Vec<TriagedSubtask>;
        fn list_plans(status: Option<PlanStatus>, limit: Option<u32>) -> Vec<ExecutionPlan>;
        fn list_plan_headers(status: Option<PlanStatus>, limit: Option<u32>) -> Vec<PlanHeader>;
        fn count_plans(status: Option<PlanStatus>) -> u64;
        fn running_runs_of(workers: &[WorkerId]) -> Vec<Run>;
        fn check_subtask_dependencies(task_id: TaskId) -> bool;
        fn check_subtask_dependencies_batch(task_ids: &[TaskId]) -> HashMap<TaskId, bool>;
        fn get_next_planned_subtask(plan_id: PlanId) -> Option<Task>;
        fn mark_plan_execution_started(plan_id: PlanId) -> bool;
        fn cancel_plan(plan_id: PlanId) -> bool;
        fn retry_plan(plan_id: PlanId) -> Vec<TaskId>;
        fn prune_plans(older_than: Duration, statuses: &[PlanStatus]) -> PlansPruned;
        // Running tasks.
        fn claim_next_task(worker_id: &WorkerId, task_types: &[String], lease: Duration)
            -> Option<Claimed>;
        fn claim_tasks(worker_id: &WorkerId, task_types: &[String], limit: u32, lease: Duration)
            -> Vec<Claimed>;
        fn finish_and_claim(
            outcomes: &[RunOutcome],
            worker_id: &WorkerId,
            task_types: &[String],
            limit: u32,
            lease: Duration,
        ) -> (Vec<FinishReport>, Vec<Claimed>);
        fn complete_task(run_id: RunId, result: Option<Json>) -> ();
        fn fail_task(run_id: RunId, error: impl Into<String> + Send) -> Finished;
        fn finish_runs(outcomes: Vec<RunOutcome>) -> Vec<FinishReport>;
        fn extend_lease(run_id: RunId, lease: Duration) -> Timestamp;
        fn release_runs(run_ids: &[RunId]) -> Vec<TaskId>;
        fn release_unstarted_runs(run_ids: &[RunId]) -> Vec<TaskId>;
        fn record_progress(run_id: RunId, fraction: f64, message: Option<String>) -> ();
        fn running_runs(worker: &WorkerId) -> Vec<Run>;
        fn reap() -> ReapReport;
    }
    "crate::Client" => {
        // The original SDK's names (crate::compat).
        fn get_pending_tasks(task_type: Option<&str>) -> Vec<Task>;
        fn heartbeat(worker_id: &str, status: Option<WorkerStatus>) -> bool;
        fn start_plan_execution(plan_id: PlanId) -> bool;
        fn get_next_subtask(plan_id: PlanId) -> Option<Task>;
        fn get_available_workers(role: Option<&str>) -> Vec<Worker>;
        fn get_plan_status(plan_id: PlanId) -> Option<PlanStatus>;
        fn check_dependencies(task_id: TaskId) -> bool;
        fn create_subtasks_from_plan(plan_id: PlanId) -> u64;
    }
}
