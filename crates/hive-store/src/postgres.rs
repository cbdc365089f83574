//! [`PostgresStore`]: Hive on PostgreSQL, for many workers in many processes.
//!
//! Every timestamp written and every time comparison uses the server's clock, never the
//! caller's: `now()` (the transaction's start), except that a claim uses
//! `statement_timestamp()`, because a claim that follows a finish in one transaction
//! ([`Store::finish_and_claim`]) may run long after that transaction began, and a run must
//! not seem to start before the dependency it waited for completed. Hot paths are few round
//! trips: a claim is one statement, and so is finishing a batch of successful runs outside
//! plans; any other batch locks and reads what it can touch, replays itself by the rules
//! ([`crate::rules`], adapted in `replay.rs`) and writes with one statement. Change
//! notifications reach every process through `pg_notify`: those of the writes workers and
//! producers make all the time just after their commits, before the call returns
//! (`publish.rs` says why), every other write's inside its transaction, so Postgres
//! delivers them on commit.
//!
//! Files: `connect.rs` (URL, pool, migrations), `tasks.rs`, `runs.rs`, `plans.rs`,
//! `workers.rs` (each area's statements), `replay.rs` (the rules' adapter), `listen.rs`
//! (LISTEN), `publish.rs` (NOTIFY after commit), `rows.rs` (rows into models), `sql.rs`
//! (shared SQL pieces).

#[macro_use]
mod sql;
mod chores;
mod claim;
mod connect;
mod dashboard;
mod flow;
mod folds;
mod listen;
mod plans;
mod progress;
mod publish;
mod release;
mod replay;
mod rows;
mod runs;
mod schedules;
mod tasks;
mod workers;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use hive_models::{
    ExecutionPlan, NewPlan, NewTask, PlanCounters, PlanHeader, PlanId, PlanStatus, Run, RunId,
    Task, TaskId, Timestamp, Worker, WorkerId,
};
use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::sql::{Fail, R};
use crate::{
    Backend, Claim, ClaimParams, Error, FinishReport, HeartbeatReport, Notification, Notifier,
    PruneParams, QueueStats, ReapParams, ReapReport, Result, RunOutcome, StatusChange,
    StatusChanged, StatusCounts, Store, TaskFilter, TaskPageParams, TasksInserted, WorkerFilter,
    WorkerRegistration, WorkerStatusChange,
};

/// How often a transaction that lost a deadlock or serialization race is retried.
const RETRIES: u32 = 4;

impl Fail {
    /// A deadlock or serialization failure: the transaction was rolled back and running it
    /// again may well succeed.
    fn is_retryable(&self) -> bool {
        match self {
            Fail::Sql(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }
}

/// Maps a driver error onto the portable variants. `target` is `host:port`; nothing here
/// can carry the URL or its password (sqlx's messages never include them).
fn map_sqlx(e: sqlx::Error, target: &str) -> Error {
    crate::sql::map_driver(e, target, |db| {
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        let message = format!("{} (SQLSTATE {code})", db.message());
        match code.as_str() {
            "23505" => Error::Conflict(message),
            // serialization_failure, deadlock_detected, lock_not_available, query_canceled
            // (a statement or lock timeout): lost to other calls, not wrong in itself
            "40001" | "40P01" | "55P03" | "57014" => Error::Contended(message),
            // integrity constraints, data exceptions, a value too deeply nested to parse
            c if c.starts_with("23") || c.starts_with("22") || c == "54001" => {
                Error::Rejected(message)
            }
            // connection exceptions, server shutting down, too many connections, a server
            // that takes no writes (a standby, or a failover target not yet promoted: a
            // retry may reach the primary; failing the work for good would lose it)
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "25006" => {
                Error::Unavailable {
                    target: target.to_owned(),
                    reason: message,
                }
            }
            "53100" => Error::StorageFull {
                target: target.to_owned(),
                reason: message,
            },
            // a refused login, an unknown database or role: asking again cannot help
            c if c.starts_with("28") || c == "3D000" => Error::Misconfigured {
                target: target.to_owned(),
                reason: message,
            },
            _ => Error::Database(message),
        }
    })
}

/// Hive on PostgreSQL.
///
/// Concurrency: claims in one statement with `FOR UPDATE SKIP LOCKED`; NOTIFY on or just
/// after commit.
/// Every other write is one transaction that locks the task rows it changes (in id order),
/// so concurrent workers in any number of processes never double-claim a task or finish a
/// stale run; a transaction that loses a deadlock or serialization race is retried.
///
/// [`Store::subscribe`] starts one background listener (`LISTEN "hive_events:<schema>"` on
/// its own connection, `application_name` `hive-listen-<origin as simple uuid>`) that
/// forwards every notification, this store's own included, and reconnects with backoff
/// after a connection loss, then sends a catch-up wake-up. It stops when the store is
/// dropped.
pub struct PostgresStore {
    pool: PgPool,
    notifier: Notifier,
    /// `host:port`, for `Unavailable` errors.
    target: String,
    listen_options: PgConnectOptions,
    listener: tokio::sync::Mutex<Option<listen::Handle>>,
    /// The credits waiting to be folded after their finishes' commits (see
    /// `folds::Folds`).
    folds: folds::Folds,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("origin", &self.notifier.origin())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// The pool, for callers that run their own queries next to the store's.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn map(&self, f: Fail) -> Error {
        match f {
            Fail::Sql(e) => map_sqlx(e, &self.target),
            Fail::Store(e) => e,
        }
    }

    /// Publishes a committed change's notifications (see `publish.rs`).
    async fn publish(&self, payloads: Vec<String>) {
        publish::publish_or_wake(&self.pool, &self.notifier, payloads).await;
    }

    /// Announces a flow rule's change to every process: a pause lifted, a limit raised or
    /// gone may let waiting tasks be claimed, so workers look again.
    async fn flow_changed(&self, changed: bool) -> Result<()> {
        if changed {
            let note = self.notifier.note(crate::Change::StoreChanged);
            self.publish(vec![self.run(async { sql::payload(&note) }).await?])
                .await;
        }
        Ok(())
    }

    /// Runs one operation, mapping its error.
    async fn run<T>(&self, op: impl Future<Output = R<T>>) -> Result<T> {
        op.await.map_err(|f| self.map(f))
    }

    /// Runs a transactional operation, again when it lost a deadlock or serialization race
    /// (it was rolled back, so running it again is safe).
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = R<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(f) if attempt < RETRIES && f.is_retryable() => {
                    attempt += 1;
                    // Jitter, so the transactions that collided do not collide again.
                    let jitter = (Uuid::new_v4().as_u128() % 8) as u64;
                    tokio::time::sleep(Duration::from_millis(4 * u64::from(attempt) + jitter))
                        .await;
                }
                Err(f) => return Err(self.map(f)),
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn origin(&self) -> Uuid {
        self.notifier.origin()
    }

    async fn close(&self) {
        if let Some(listener) = self.listener.lock().await.take() {
            listener.stop().await;
        }
        if tokio::time::timeout(crate::CLOSE_WAIT, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!(server = %self.target, "a connection was still in use at close");
        }
    }

    async fn now(&self) -> Result<Timestamp> {
        self.run(async {
            Ok(sqlx::query_scalar("SELECT now()")
                .fetch_one(&self.pool)
                .await?)
        })
        .await
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Notification>> {
        let mut listener = self.listener.lock().await;
        // A closed store opens no listener connection again.
        if self.pool.is_closed() {
            return Err(map_sqlx(sqlx::Error::PoolClosed, &self.target));
        }
        if !listener.as_ref().is_some_and(listen::Handle::is_running) {
            // The channel as the pool's connections name it in their NOTIFYs: a pool
            // handed to `from_pool` may set its schema in a connect hook, which the
            // listener's own connection does not run.
            let timing = listen::Timing::default();
            let channel = listen::channel(&self.pool, timing)
                .await
                .map_err(|e| map_sqlx(e, &self.target))?;
            let handle = listen::start(
                channel,
                self.listen_options.clone(),
                self.notifier.clone(),
                timing,
            )
            .await
            .map_err(|e| map_sqlx(e, &self.target))?;
            *listener = Some(handle);
        }
        Ok(self.notifier.subscribe())
    }

    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<TasksInserted> {
        if tasks.is_empty() {
            return Ok(TasksInserted::default());
        }
        // One statement (or, with idempotency keys, one short transaction, tried again on
        // a lost race: see `insert_tasks_once`).
        self.run(self.insert_tasks_once(tasks)).await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        self.run(self.read_task(id)).await
    }

    async fn get_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        self.run(self.read_tasks_by_id(ids)).await
    }

    async fn page_tasks(&self, params: &TaskPageParams) -> Result<Vec<Task>> {
        params.check()?;
        self.run(self.read_page(params)).await
    }

    async fn queue_stats(&self, since: Option<Timestamp>) -> Result<QueueStats> {
        self.run(self.read_stats(since)).await
    }

    async fn count_finished_tasks(&self) -> Result<Vec<crate::TypeStatusCount>> {
        self.run(self.read_counts(true)).await
    }

    async fn count_unfinished_tasks(&self) -> Result<Vec<crate::TypeStatusCount>> {
        self.run(self.read_counts(false)).await
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        self.run(self.read_tasks(f)).await
    }

    async fn count_tasks(&self, plan_id: Option<PlanId>) -> Result<StatusCounts> {
        self.run(self.count(plan_id)).await
    }

    async fn set_task_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>> {
        self.retrying(|| self.set_status_once(id, &change)).await
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool> {
        self.retrying(|| self.delete_once(id)).await
    }

    async fn prune_tasks(&self, p: &PruneParams) -> Result<u64> {
        p.check()?;
        let statuses: Vec<&str> = p.statuses.iter().map(|s| s.as_str()).collect();
        self.retrying(|| self.prune_once(p, &statuses)).await
    }

    async fn claim_tasks(&self, params: &ClaimParams) -> Result<Vec<Claim>> {
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        self.retrying(|| self.claim_once(params)).await
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<Vec<FinishReport>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying(|| self.finish_once(outcomes)).await
    }

    async fn finish_and_claim(
        &self,
        outcomes: &[RunOutcome],
        claim: &ClaimParams,
    ) -> Result<(Vec<FinishReport>, Vec<Claim>)> {
        self.retrying(|| self.finish_and_claim_once(outcomes, claim))
            .await
    }

    async fn extend_lease(&self, run_id: RunId, lease: Duration) -> Result<Timestamp> {
        self.run(self.extend_once(run_id, lease)).await
    }

    async fn record_progress(
        &self,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) -> Result<()> {
        self.run(self.record_progress_once(run_id, fraction, message))
            .await
    }

    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying(|| self.release_once(run_ids, false)).await
    }

    async fn release_unstarted(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying(|| self.release_once(run_ids, true)).await
    }

    async fn reap(&self, params: &ReapParams) -> Result<ReapReport> {
        self.retrying(|| self.reap_once(params)).await
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.run(self.read_run(id)).await
    }

    async fn get_runs(&self, ids: &[RunId]) -> Result<Vec<Run>> {
        self.run(self.read_runs_by_id(ids)).await
    }

    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        self.run(self.read_runs(task_id)).await
    }

    async fn list_plan_runs(&self, plan_id: PlanId) -> Result<Vec<Run>> {
        self.run(self.read_plan_runs(plan_id)).await
    }

    async fn running_runs(&self, workers: &[WorkerId]) -> Result<Vec<Run>> {
        self.run(self.read_running_runs(workers)).await
    }

    async fn insert_schedule(&self, schedule: &hive_models::Schedule) -> Result<()> {
        self.run(self.insert_schedule_once(schedule)).await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<hive_models::Schedule>> {
        self.run(self.read_schedule(name)).await
    }

    async fn list_schedules(&self) -> Result<Vec<hive_models::Schedule>> {
        self.run(self.read_schedules()).await
    }

    async fn due_schedules(&self, now: Timestamp) -> Result<Vec<hive_models::Schedule>> {
        self.run(self.read_due_schedules(now)).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        self.run(self.delete_schedule_once(name)).await
    }

    async fn put_flow_rule(&self, rule: &hive_models::FlowRule) -> Result<()> {
        self.run(self.put_flow_rule_once(rule)).await?;
        self.flow_changed(true).await
    }

    async fn list_flow_rules(&self) -> Result<Vec<hive_models::FlowRule>> {
        self.run(self.list_flow_rules_once()).await
    }

    async fn delete_flow_rule(&self, scope: &hive_models::Scope) -> Result<bool> {
        let deleted = self.run(self.delete_flow_rule_once(scope)).await?;
        self.flow_changed(deleted).await?;
        Ok(deleted)
    }

    async fn edit_flow_rule(
        &self,
        scope: &hive_models::Scope,
        edit: hive_models::FlowEdit,
    ) -> Result<(Option<hive_models::FlowRule>, bool)> {
        let edited = self.run(self.edit_flow_rule_once(scope, edit)).await?;
        self.flow_changed(edited.1).await?;
        Ok(edited)
    }

    async fn advance_schedule(&self, advance: &crate::ScheduleAdvance) -> Result<bool> {
        self.run(self.advance_schedule_once(advance)).await
    }

    async fn replace_schedule(&self, s: &hive_models::Schedule, from: Timestamp) -> Result<bool> {
        self.run(self.replace_schedule_once(s, from)).await
    }

    async fn unfinished_by_key(&self, keys: &[String]) -> Result<bool> {
        self.run(self.read_unfinished_by_key(keys)).await
    }

    async fn keyed_work(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, crate::KeyedWork>> {
        self.run(self.read_keyed_work(keys)).await
    }

    async fn claim_slot(&self, read: &hive_models::Schedule, slot: Timestamp) -> Result<bool> {
        self.run(self.claim_slot_once(read, slot)).await
    }

    async fn note_manual_run(&self, name: &str, key: &str) -> Result<bool> {
        self.run(self.note_manual_run_once(name, key)).await
    }

    async fn register_worker(&self, r: &WorkerRegistration) -> Result<Worker> {
        self.run(self.register_once(r)).await
    }

    async fn heartbeat(
        &self,
        id: &WorkerId,
        status: Option<WorkerStatusChange>,
    ) -> Result<Option<HeartbeatReport>> {
        self.run(self.heartbeat_once(id, status.as_ref())).await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<Worker>> {
        self.run(self.read_worker(id)).await
    }

    async fn list_workers(&self, f: &WorkerFilter) -> Result<Vec<Worker>> {
        self.run(self.read_workers(f)).await
    }

    async fn unregister_worker(&self, id: &WorkerId) -> Result<Option<Vec<TaskId>>> {
        self.retrying(|| self.unregister_once(id)).await
    }

    async fn prune_worker(&self, id: &WorkerId, silent_before: Timestamp) -> Result<bool> {
        self.run(self.prune_worker_once(id, silent_before)).await
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId> {
        self.run(self.insert_plan_row(&plan)).await
    }

    async fn submit_plan(&self, plan: NewPlan) -> Result<(PlanId, u64)> {
        self.run(self.submit_once(&plan)).await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>> {
        self.run(self.read_plan(id)).await
    }

    async fn get_plan_counters(&self, id: PlanId) -> Result<Option<PlanCounters>> {
        self.run(self.read_plan_counters(id)).await
    }

    async fn get_plan_header(&self, id: PlanId) -> Result<Option<PlanHeader>> {
        self.run(self.read_plan_header(id)).await
    }

    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        self.run(self.read_plans(status, limit)).await
    }

    async fn list_plan_headers(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<PlanHeader>> {
        self.run(self.read_plan_headers(status, limit)).await
    }

    async fn count_plans(&self, status: Option<PlanStatus>) -> Result<u64> {
        self.run(self.count_plans_of(status)).await
    }

    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>> {
        self.retrying(|| self.materialize_once(id)).await
    }

    async fn transition_plan(&self, id: PlanId, from: PlanStatus, to: PlanStatus) -> Result<bool> {
        self.run(self.transition_once(id, from, to)).await
    }

    async fn cancel_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        self.retrying(|| self.cancel_plan_once(id)).await
    }

    async fn prune_plans(&self, p: &crate::PlanPruneParams) -> Result<crate::PlansPruned> {
        p.check()?;
        let statuses: Vec<&str> = p.statuses.iter().map(|s| s.as_str()).collect();
        self.retrying(|| self.prune_plans_once(p, &statuses)).await
    }

    async fn retry_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        self.retrying(|| self.retry_plan_once(id)).await
    }

    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.run(self.deps_met(ids)).await
    }

    async fn subtask_ids(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.run(self.read_subtask_ids(ids)).await
    }
}
