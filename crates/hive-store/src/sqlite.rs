//! [`SqliteStore`]: the SQLite backend (WAL, every write in `BEGIN IMMEDIATE` on one writer
//! connection, readers on a pool of their own).
//!
//! Each [`Store`] method that changes anything is one transaction on the single writer
//! connection, opened with `BEGIN IMMEDIATE` so it holds SQLite's write lock from its first
//! statement: writers in this process queue on the writer pool instead of spinning on the
//! lock, and writers in other processes wait up to the busy timeout. Reads run on the reader
//! pool and, in WAL mode, never wait for writers. Timestamps come from SQLite's clock, read
//! once per transaction.

/// The database clock as INTEGER microseconds since the epoch. SQLite's `'now'` has
/// millisecond resolution and is fixed for the duration of one statement.
macro_rules! now_us {
    () => {
        "(CAST(ROUND(unixepoch('now', 'subsec') * 1000.0) AS INTEGER) * 1000)"
    };
}

/// ` LIMIT <param>`, as an expression of the bound value. SQLite compiles a bare bound LIMIT
/// into a constant of the value it was prepared with and re-prepares the statement whenever
/// a different value is bound: a claim's limit changes from batch to batch, and re-preparing
/// the claim cost 3–4% of the writer's time.
macro_rules! limit {
    ($param:literal) => {
        concat!(" LIMIT ", $param, " + 0")
    };
}

/// Every task column plus `deps` (the task's dependencies in order), as
/// [`db::task_from_row`] decodes them. Queries alias the tasks table `t`.
macro_rules! task_columns {
    () => {
        "t.id, t.title, t.description, t.task_type, t.priority, t.status, t.current_phase, \
         t.workflow, t.payload, t.assigned_worker, t.due_date, t.max_retries, t.parent_task_id, \
         t.plan_id, t.plan_subtask_id, t.pending_deps, t.tags, t.metadata, t.run_at, t.attempts, \
         t.current_run_id, t.idempotency_key, t.result, t.last_error, t.created_at, t.updated_at, \
         t.timeout_secs, t.delay_secs, t.retry_policy, t.concurrency_key, t.concurrency_limit, \
         (SELECT json_group_array(d.depends_on ORDER BY d.position) \
            FROM task_dependencies d WHERE d.task_id = t.id) AS deps"
    };
}

macro_rules! run_columns {
    () => {
        "id, task_id, worker_id, run_number, status, phase, started_at, completed_at, \
         lease_expires_at, result_data, error_message, output_log, transcript, progress, \
         progress_message, progress_at, created_at, updated_at"
    };
}

macro_rules! worker_columns {
    () => {
        "id, role, status, last_heartbeat, capabilities, current_task_id, registered_at, metadata, \
         status_reason"
    };
}

macro_rules! plan_columns {
    () => {
        "id, title, description, parent_task_id, status, total_subtasks, completed_subtasks, \
         failed_subtasks, cancelled_subtasks, materialized, metadata, idempotency_key, created_at, \
         updated_at"
    };
}

/// A read on a connection of the reader pool: `read!(self, module::function, args…)`, the
/// function taking the connection first.
macro_rules! read {
    // Several statements seen from one snapshot: a read transaction (WAL keeps it apart
    // from commits meanwhile), rolled back also when the future is dropped.
    ($self:ident, snapshot $f:path $(, $arg:expr)* $(,)?) => {{
        let mut tx = $self.reader.begin().await.map_err(|e| $self.sql_error(e))?;
        let out = $f(&mut tx $(, $arg)*).await;
        let _ = tx.rollback().await;
        $self.read(out)
    }};
    ($self:ident, $f:path $(, $arg:expr)* $(,)?) => {{
        let mut c = $self.reader.acquire().await.map_err(|e| $self.sql_error(e))?;
        let out = $f(&mut c $(, $arg)*).await;
        $self.read(out)
    }};
}

/// A write in one transaction of the writer: `write!(self, module::function, args…)`, the
/// function taking the connection, the notifier and the notifications to send after commit;
/// `write!(self, quiet …)` for one that sends none.
macro_rules! write {
    ($self:ident, quiet $f:path $(, $arg:expr)* $(,)?) => {{
        let mut tx = $self.begin().await?;
        let out = $f(&mut tx $(, $arg)*).await;
        $self.end(tx, out, Vec::new()).await
    }};
    ($self:ident, $f:path $(, $arg:expr)* $(,)?) => {{
        let mut tx = $self.begin().await?;
        let mut notes = Vec::new();
        let out = $f(&mut tx, &$self.notifier, &mut notes $(, $arg)*).await;
        $self.end(tx, out, notes).await
    }};
}

mod connect;
mod dashboard;
mod db;
mod flow;
mod plans;
mod replay;
mod runs;
mod schedules;
mod tasks;
mod tx;
mod watch;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hive_models::{
    ExecutionPlan, NewPlan, NewTask, PlanCounters, PlanHeader, PlanId, PlanStatus, Run, RunId,
    Task, TaskId, Timestamp, Worker, WorkerId, WorkerStatus,
};
use sqlx::SqlitePool;
use tokio::sync::broadcast;

use crate::{
    Backend, Claim, ClaimParams, ConnectOptions, DatabaseUrl, Error, FinishReport, HeartbeatReport,
    Notification, Notifier, PruneParams, QueueStats, ReapParams, ReapReport, Result, RunOutcome,
    StatusChange, StatusChanged, StatusCounts, Store, TaskFilter, TaskPageParams, TasksInserted,
    WorkerFilter, WorkerRegistration, WorkerStatusChange,
};
use db::{Fail, R};
use tx::{Faults, WriteTx};

/// WAL; every write in `BEGIN IMMEDIATE` on a single writer connection.
#[derive(Debug)]
pub struct SqliteStore {
    /// Reads; for `sqlite::memory:` the same one-connection pool as `writer`.
    reader: SqlitePool,
    /// Exactly one connection: every write transaction.
    writer: SqlitePool,
    notifier: Notifier,
    /// The database path, for `Unavailable` errors.
    target: String,
    /// The file opened (checked before every write; see [`connect::FileId::check`]).
    file: Option<connect::FileId>,
    faults: Faults,
    /// Other processes' commits, noticed (see [`watch`]).
    watch: Arc<watch::Watch>,
    /// Whether other processes can open this database (not `sqlite::memory:`).
    shared: bool,
}

/// A fault a test injects into the next write transaction (see
/// [`SqliteStore::inject_fault`]).
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxFault {
    /// The next `COMMIT` fails without committing.
    Commit,
    /// The next `ROLLBACK` fails without rolling back, leaving the transaction open.
    Rollback,
}

impl SqliteStore {
    /// Opens the database a `sqlite:PATH`, `sqlite://PATH` or `sqlite::memory:` URL names,
    /// creating, migrating, using or refusing it as `options.schema` says.
    /// `max_connections` sizes the reader pool; writes always use one connection.
    pub async fn connect(url: &DatabaseUrl, options: &ConnectOptions) -> Result<SqliteStore> {
        let opened = connect::open(url, options).await?;
        Ok(SqliteStore {
            reader: opened.reader,
            writer: opened.writer,
            notifier: Notifier::new(),
            target: opened.target,
            shared: opened.file.is_some(),
            file: opened.file,
            faults: Faults::default(),
            watch: Arc::default(),
        })
    }

    /// Makes the next write transaction's `COMMIT` or `ROLLBACK` fail, for tests of how the
    /// store recovers.
    #[cfg(feature = "testing")]
    pub fn inject_fault(&self, fault: TxFault) {
        use std::sync::atomic::Ordering;
        match fault {
            TxFault::Commit => self.faults.commit.store(true, Ordering::SeqCst),
            TxFault::Rollback => self.faults.rollback.store(true, Ordering::SeqCst),
        }
    }

    fn error(&self, f: Fail) -> Error {
        f.into_error(&self.target)
    }

    fn sql_error(&self, e: sqlx::Error) -> Error {
        db::map_sqlx(&self.target, e)
    }

    /// Opens a write transaction holding the write lock from the start, so it can never
    /// fail half-way with "database is locked" when it upgrades from reading to writing.
    async fn begin(&self) -> Result<WriteTx> {
        if let Some(file) = self.file {
            file.check(&self.target)?;
        }
        WriteTx::begin(&self.writer, !self.shared)
            .await
            .map_err(|e| self.sql_error(e))
    }

    /// Commits when the operation succeeded (then sends its notifications), rolls back
    /// when it failed. Either way the writer connection is left idle or replaced.
    async fn end<T>(&self, tx: WriteTx, outcome: R<T>, notes: Vec<Notification>) -> Result<T> {
        match outcome {
            Ok(v) => {
                // Marked from before to after, so the watcher reading `data_version` at any
                // moment around it knows the change is this store's.
                self.watch
                    .own(tx.commit(&self.faults))
                    .await
                    .map_err(|e| self.sql_error(e))?;
                self.notifier.send_all(notes);
                Ok(v)
            }
            Err(f) => {
                // The operation's error is the one to report.
                tx.rollback(&self.faults).await;
                Err(self.error(f))
            }
        }
    }

    /// What a flow rule's change announces: a pause lifted, a limit raised or gone may let
    /// waiting tasks be claimed, so workers look again.
    fn flow_changed(&self, changed: bool) -> Vec<Notification> {
        match changed {
            true => vec![self.notifier.note(crate::Change::StoreChanged)],
            false => Vec::new(),
        }
    }

    fn read<T>(&self, outcome: R<T>) -> Result<T> {
        outcome.map_err(|f| self.error(f))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn origin(&self) -> uuid::Uuid {
        self.notifier.origin()
    }

    async fn close(&self) {
        self.watch.stop().await;
        // Readers first, so the writer's close is the last: it checkpoints and removes the
        // log. Bounded: a connection still checked out would otherwise hold the exit.
        for pool in [&self.reader, &self.writer] {
            if tokio::time::timeout(crate::CLOSE_WAIT, pool.close())
                .await
                .is_err()
            {
                tracing::warn!(
                    database = %self.target,
                    "a connection was still in use at close; the write-ahead log may stay"
                );
            }
        }
    }

    async fn now(&self) -> Result<Timestamp> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = match db::db_now(&mut c).await {
            Ok(v) => db::ts("clock", v),
            Err(e) => Err(e),
        };
        self.read(out)
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Notification>> {
        let receiver = self.notifier.subscribe();
        if self.shared {
            self.watch.start(&self.reader, &self.notifier);
        }
        Ok(receiver)
    }

    async fn insert_tasks(&self, new: Vec<NewTask>) -> Result<TasksInserted> {
        if new.is_empty() {
            return Ok(TasksInserted::default());
        }
        let mut tx = self.begin().await?;
        let out = tasks::insert(&mut tx, new).await;
        let notes = match &out {
            Ok(done) => self.notifier.tasks_inserted(done).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        self.end(tx, out, notes).await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        read!(self, db::fetch_task, id)
    }

    async fn get_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>> {
        read!(self, db::fetch_tasks, ids)
    }

    async fn page_tasks(&self, params: &TaskPageParams) -> Result<Vec<Task>> {
        params.check()?;
        read!(self, dashboard::page, params)
    }

    async fn queue_stats(&self, since: Option<Timestamp>) -> Result<QueueStats> {
        read!(self, snapshot dashboard::stats, since)
    }

    async fn count_finished_tasks(&self) -> Result<Vec<crate::TypeStatusCount>> {
        read!(self, dashboard::counts, true)
    }

    async fn count_unfinished_tasks(&self) -> Result<Vec<crate::TypeStatusCount>> {
        read!(self, dashboard::counts, false)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        read!(self, tasks::list, filter)
    }

    async fn count_tasks(&self, plan_id: Option<PlanId>) -> Result<StatusCounts> {
        read!(self, tasks::count, plan_id)
    }

    async fn set_task_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>> {
        write!(self, tasks::set_status, id, change)
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool> {
        write!(self, quiet tasks::delete, id)
    }

    async fn prune_tasks(&self, params: &PruneParams) -> Result<u64> {
        params.check()?;
        if params.statuses.is_empty() || params.limit == 0 {
            return Ok(0);
        }
        write!(self, quiet tasks::prune, params)
    }

    async fn claim_tasks(&self, params: &ClaimParams) -> Result<Vec<Claim>> {
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        write!(self, runs::claim, params)
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<Vec<FinishReport>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        write!(self, runs::finish, outcomes)
    }

    async fn finish_and_claim(
        &self,
        outcomes: &[RunOutcome],
        claim: &ClaimParams,
    ) -> Result<(Vec<FinishReport>, Vec<Claim>)> {
        if outcomes.is_empty() && claim.limit == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = async {
            let reports = if outcomes.is_empty() {
                Vec::new()
            } else {
                runs::finish(&mut tx, &self.notifier, &mut notes, outcomes).await?
            };
            let claims = if claim.limit == 0 {
                Vec::new()
            } else {
                runs::claim(&mut tx, &self.notifier, &mut notes, claim).await?
            };
            Ok((reports, claims))
        }
        .await;
        if let Ok((_, claims)) = &out {
            Notifier::drop_claimed_ready(&mut notes, claims);
        }
        self.end(tx, out, notes).await
    }

    async fn extend_lease(&self, run_id: RunId, lease: Duration) -> Result<Timestamp> {
        write!(self, quiet runs::extend_lease, run_id, lease)
    }

    async fn record_progress(
        &self,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) -> Result<()> {
        write!(self, runs::record_progress, run_id, fraction, message)
    }

    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        write!(self, runs::release, run_ids, false)
    }

    async fn release_unstarted(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        write!(self, runs::release, run_ids, true)
    }

    async fn reap(&self, params: &ReapParams) -> Result<ReapReport> {
        write!(self, runs::reap, params)
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        read!(self, runs::get, id)
    }

    async fn get_runs(&self, ids: &[RunId]) -> Result<Vec<Run>> {
        read!(self, runs::by_id, ids)
    }

    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        read!(self, runs::list, task_id)
    }

    async fn list_plan_runs(&self, plan_id: PlanId) -> Result<Vec<Run>> {
        read!(self, runs::in_plan, plan_id)
    }

    async fn running_runs(&self, workers: &[WorkerId]) -> Result<Vec<Run>> {
        read!(self, runs::held_by, workers)
    }

    async fn insert_schedule(&self, schedule: &hive_models::Schedule) -> Result<()> {
        write!(self, quiet schedules::insert, schedule)
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<hive_models::Schedule>> {
        read!(self, schedules::get, name)
    }

    async fn list_schedules(&self) -> Result<Vec<hive_models::Schedule>> {
        read!(self, schedules::list)
    }

    async fn due_schedules(&self, now: Timestamp) -> Result<Vec<hive_models::Schedule>> {
        read!(self, schedules::due, now)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        write!(self, quiet schedules::delete, name)
    }

    async fn put_flow_rule(&self, rule: &hive_models::FlowRule) -> Result<()> {
        let mut tx = self.begin().await?;
        let out = flow::put(&mut tx, rule).await;
        let notes = self.flow_changed(out.is_ok());
        self.end(tx, out, notes).await
    }

    async fn list_flow_rules(&self) -> Result<Vec<hive_models::FlowRule>> {
        read!(self, flow::list)
    }

    async fn delete_flow_rule(&self, scope: &hive_models::Scope) -> Result<bool> {
        let mut tx = self.begin().await?;
        let out = flow::delete(&mut tx, scope).await;
        let notes = self.flow_changed(matches!(out, Ok(true)));
        self.end(tx, out, notes).await
    }

    async fn edit_flow_rule(
        &self,
        scope: &hive_models::Scope,
        edit: hive_models::FlowEdit,
    ) -> Result<(Option<hive_models::FlowRule>, bool)> {
        let mut tx = self.begin().await?;
        let out = flow::edit(&mut tx, scope, edit).await;
        let notes = self.flow_changed(matches!(out, Ok((_, true))));
        self.end(tx, out, notes).await
    }

    async fn advance_schedule(&self, advance: &crate::ScheduleAdvance) -> Result<bool> {
        write!(self, quiet schedules::advance, advance)
    }

    async fn replace_schedule(&self, s: &hive_models::Schedule, from: Timestamp) -> Result<bool> {
        write!(self, quiet schedules::replace, s, from)
    }

    async fn unfinished_by_key(&self, keys: &[String]) -> Result<bool> {
        read!(self, schedules::unfinished_by_key, keys)
    }

    async fn keyed_work(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, crate::KeyedWork>> {
        read!(self, schedules::keyed_work, keys)
    }

    async fn claim_slot(&self, read: &hive_models::Schedule, slot: Timestamp) -> Result<bool> {
        write!(self, quiet schedules::claim_slot, read, slot)
    }

    async fn note_manual_run(&self, name: &str, key: &str) -> Result<bool> {
        write!(self, quiet schedules::note_manual_run, name, key)
    }

    async fn register_worker(&self, registration: &WorkerRegistration) -> Result<Worker> {
        let mut tx = self.begin().await?;
        let out = workers::register(&mut tx, registration).await;
        let notes = vec![
            self.notifier
                .worker(registration.id.clone(), WorkerStatus::Active),
        ];
        self.end(tx, out, notes).await
    }

    async fn heartbeat(
        &self,
        id: &WorkerId,
        status: Option<WorkerStatusChange>,
    ) -> Result<Option<HeartbeatReport>> {
        let offline = status
            .as_ref()
            .is_some_and(|c| c.status == WorkerStatus::Offline);
        let mut tx = self.begin().await?;
        let out = workers::heartbeat(&mut tx, id, status.as_ref()).await;
        let notes = match &out {
            Ok(Some(_)) if offline => {
                vec![self.notifier.worker(id.clone(), WorkerStatus::Offline)]
            }
            _ => Vec::new(),
        };
        self.end(tx, out, notes).await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<Worker>> {
        read!(self, workers::get, id)
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>> {
        read!(self, workers::list, filter)
    }

    async fn unregister_worker(&self, id: &WorkerId) -> Result<Option<Vec<TaskId>>> {
        write!(self, workers::unregister, id)
    }

    async fn prune_worker(&self, id: &WorkerId, silent_before: Timestamp) -> Result<bool> {
        write!(self, workers::prune, id, silent_before)
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId> {
        write!(self, quiet plans::insert, &plan)
    }

    async fn submit_plan(&self, plan: NewPlan) -> Result<(PlanId, u64)> {
        let mut tx = self.begin().await?;
        let out = plans::submit(&mut tx, &plan).await;
        let notes = match &out {
            Ok((_, n)) if *n > 0 => vec![self.notifier.task_created(None, *n)],
            _ => Vec::new(),
        };
        self.end(tx, out, notes).await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>> {
        read!(self, snapshot plans::get, id)
    }

    async fn get_plan_counters(&self, id: PlanId) -> Result<Option<PlanCounters>> {
        read!(self, plans::counters, id)
    }

    async fn get_plan_header(&self, id: PlanId) -> Result<Option<PlanHeader>> {
        read!(self, plans::header, id)
    }

    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        read!(self, snapshot plans::list, status, limit)
    }

    async fn list_plan_headers(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<PlanHeader>> {
        read!(self, plans::list_headers, status, limit)
    }

    async fn count_plans(&self, status: Option<PlanStatus>) -> Result<u64> {
        read!(self, plans::count, status)
    }

    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>> {
        let mut tx = self.begin().await?;
        let out = plans::materialize(&mut tx, id, true).await;
        let notes = match &out {
            Ok(plans::Materialized::Created(n)) => vec![self.notifier.task_created(None, *n)],
            _ => Vec::new(),
        };
        let created = self.end(tx, out, notes).await?;
        Ok(match created {
            plans::Materialized::Unknown => None,
            plans::Materialized::Already => Some(0),
            plans::Materialized::Created(n) => Some(n),
        })
    }

    async fn transition_plan(&self, id: PlanId, from: PlanStatus, to: PlanStatus) -> Result<bool> {
        let mut tx = self.begin().await?;
        let out = plans::transition(&mut tx, id, from, to).await;
        let notes = match &out {
            Ok(true) => vec![self.notifier.plan_status(id, to)],
            _ => Vec::new(),
        };
        self.end(tx, out, notes).await
    }

    async fn cancel_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        write!(self, plans::cancel, id)
    }

    async fn retry_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        write!(self, plans::retry, id)
    }

    async fn prune_plans(&self, params: &crate::PlanPruneParams) -> Result<crate::PlansPruned> {
        params.check()?;
        if params.statuses.is_empty() || params.limit == 0 {
            return Ok(crate::PlansPruned::default());
        }
        write!(self, quiet plans::prune, params)
    }

    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        read!(self, tasks::dependencies_met, ids)
    }

    async fn subtask_ids(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        read!(self, tasks::subtask_ids, ids)
    }
}
