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

/// Every task column plus `deps` (the task's dependencies in order), as
/// [`db::task_from_row`] decodes them. Queries alias the tasks table `t`.
macro_rules! task_columns {
    () => {
        "t.id, t.title, t.description, t.task_type, t.priority, t.status, t.current_phase, \
         t.workflow, t.payload, t.assigned_worker, t.due_date, t.max_retries, t.parent_task_id, \
         t.plan_id, t.plan_subtask_id, t.pending_deps, t.tags, t.metadata, t.run_at, t.attempts, \
         t.current_run_id, t.idempotency_key, t.result, t.last_error, t.created_at, t.updated_at, \
         (SELECT json_group_array(d.depends_on ORDER BY d.position) \
            FROM task_dependencies d WHERE d.task_id = t.id) AS deps"
    };
}

macro_rules! run_columns {
    () => {
        "id, task_id, worker_id, run_number, status, phase, started_at, completed_at, \
         lease_expires_at, result_data, error_message, output_log, transcript"
    };
}

macro_rules! worker_columns {
    () => {
        "id, role, status, last_heartbeat, capabilities, current_task_id, registered_at, metadata"
    };
}

macro_rules! plan_columns {
    () => {
        "id, title, description, parent_task_id, status, total_subtasks, completed_subtasks, \
         failed_subtasks, cancelled_subtasks, subtasks, materialized, created_at, updated_at"
    };
}

mod db;
mod plans;
mod runs;
mod tasks;
mod workers;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use hive_models::{
    ExecutionPlan, NewPlan, NewTask, PlanId, PlanStatus, Run, RunId, Task, TaskId, Timestamp,
    Worker, WorkerId, WorkerStatus,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::broadcast;

use crate::{
    Backend, Claim, ClaimParams, ConnectOptions, DatabaseUrl, Error, FinishReport, HeartbeatReport,
    Notification, Notifier, PruneParams, ReapParams, ReapReport, Result, RunOutcome, StatusChange,
    StatusChanged, StatusCounts, Store, TaskFilter, WorkerFilter, WorkerRegistration,
};
use db::{Fail, R};

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
}

/// Readers when neither the URL nor the options say.
const DEFAULT_READERS: u32 = 4;
/// How long a write waits for another process's write lock before `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// A `sqlite:` URL split into what sqlx understands and the pool settings it does not.
#[derive(Debug)]
struct ParsedUrl {
    /// `sqlite://PATH[?params sqlx knows]`.
    sqlx_url: String,
    path: String,
    in_memory: bool,
    max_connections: Option<u32>,
    acquire_timeout: Option<Duration>,
}

impl ParsedUrl {
    fn parse(url: &DatabaseUrl) -> Result<ParsedUrl> {
        let unsupported = || Error::UnsupportedUrl(url.redacted());
        let text = url.expose();
        let rest = text.strip_prefix("sqlite:").ok_or_else(unsupported)?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut max_connections = None;
        let mut acquire_timeout = None;
        let mut kept = url::form_urlencoded::Serializer::new(String::new());
        let mut in_memory = path == ":memory:";
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "max_connections" => {
                    max_connections = Some(v.parse::<u32>().map_err(|_| unsupported())?);
                }
                "acquire_timeout_secs" => {
                    let secs = v.parse::<f64>().map_err(|_| unsupported())?;
                    let d = Duration::try_from_secs_f64(secs).map_err(|_| unsupported())?;
                    acquire_timeout = Some(d);
                }
                _ => {
                    in_memory |= k == "mode" && v == "memory";
                    kept.append_pair(&k, &v);
                }
            }
        }
        if path.is_empty() && !in_memory {
            return Err(unsupported());
        }
        let kept = kept.finish();
        // `sqlite://` + the path keeps an absolute path absolute when sqlx strips the scheme.
        let sqlx_url = if kept.is_empty() {
            format!("sqlite://{path}")
        } else {
            format!("sqlite://{path}?{kept}")
        };
        Ok(ParsedUrl {
            sqlx_url,
            path: if path.is_empty() {
                ":memory:".into()
            } else {
                path.into()
            },
            in_memory,
            max_connections,
            acquire_timeout,
        })
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database a `sqlite:PATH`, `sqlite://PATH` or
    /// `sqlite::memory:` URL names, applying migrations when `options.migrate`.
    /// `max_connections` sizes the reader pool; writes always use one connection.
    pub async fn connect(url: &DatabaseUrl, options: &ConnectOptions) -> Result<SqliteStore> {
        let parsed = ParsedUrl::parse(url)?;
        let target = parsed.path.clone();
        let sql_err = |e: sqlx::Error| match e {
            sqlx::Error::Configuration(_) => Error::UnsupportedUrl(url.redacted()),
            e => db::map_sqlx(&target, e),
        };
        let acquire = parsed
            .acquire_timeout
            .or(options.acquire_timeout)
            .unwrap_or(DEFAULT_ACQUIRE_TIMEOUT);
        let readers = parsed
            .max_connections
            .or(options.max_connections)
            .unwrap_or(DEFAULT_READERS)
            .max(1);
        let base = SqliteConnectOptions::from_str(&parsed.sqlx_url)
            .map_err(sql_err)?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = |size: u32| {
            SqlitePoolOptions::new()
                .max_connections(size)
                .acquire_timeout(acquire)
                // A local file needs no liveness ping before each use.
                .test_before_acquire(false)
        };
        let (reader, writer) = if parsed.in_memory {
            // Every connection to `:memory:` is its own database, so there is exactly one,
            // and it must never be closed for idleness or age: that would drop the data.
            let opts = base.shared_cache(false);
            let only = pool(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(opts)
                .await
                .map_err(sql_err)?;
            (only.clone(), only)
        } else {
            let opts = base
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL loses nothing when the application crashes, only
                // possibly the last commits when the machine loses power.
                .synchronous(SqliteSynchronous::Normal);
            // The writer connects first: it creates the file and switches it to WAL.
            let writer = pool(1).connect_with(opts.clone()).await.map_err(sql_err)?;
            let reader = pool(readers).connect_with(opts).await.map_err(sql_err)?;
            (reader, writer)
        };
        if options.migrate {
            migrate(&writer).await?;
        }
        Ok(SqliteStore {
            reader,
            writer,
            notifier: Notifier::new(),
            target,
        })
    }

    fn error(&self, f: Fail) -> Error {
        f.into_error(&self.target)
    }

    fn sql_error(&self, e: sqlx::Error) -> Error {
        db::map_sqlx(&self.target, e)
    }

    /// Opens a write transaction holding the write lock from the start, so it can never
    /// fail half-way with "database is locked" when it upgrades from reading to writing.
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.sql_error(e))
    }

    /// Commits when the operation succeeded (then sends its notifications), rolls back
    /// when it failed.
    async fn end<T>(
        &self,
        tx: Transaction<'static, Sqlite>,
        outcome: R<T>,
        notes: Vec<Notification>,
    ) -> Result<T> {
        match outcome {
            Ok(v) => {
                tx.commit().await.map_err(|e| self.sql_error(e))?;
                self.notifier.send_all(notes);
                Ok(v)
            }
            Err(f) => {
                // The operation's error is the one to report. Should the rollback fail too,
                // sqlx rolls back again when the dropped transaction's connection is reused.
                let _ = tx.rollback().await;
                Err(self.error(f))
            }
        }
    }

    fn read<T>(&self, outcome: R<T>) -> Result<T> {
        outcome.map_err(|f| self.error(f))
    }
}

/// Applies the embedded migrations. Two processes opening a new file at once may race; the
/// loser's attempt fails on the migration record and a second attempt finds it applied.
async fn migrate(pool: &SqlitePool) -> Result<()> {
    let migrator = sqlx::migrate!("../../migrations/sqlite");
    match migrator.run(pool).await {
        Ok(()) => Ok(()),
        Err(_) => migrator
            .run(pool)
            .await
            .map_err(|e| Error::Migration(e.to_string())),
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

    async fn now(&self) -> Result<Timestamp> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = match db::db_now(&mut c).await {
            Ok(v) => db::ts("clock", v),
            Err(e) => Err(e),
        };
        self.read(out)
    }

    async fn subscribe(&self) -> Result<broadcast::Receiver<Notification>> {
        Ok(self.notifier.subscribe())
    }

    async fn insert_tasks(&self, new: Vec<NewTask>) -> Result<Vec<TaskId>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let out = tasks::insert(&mut tx, new).await;
        let notes = match &out {
            Ok(ids) => {
                let single = ids.first().copied().filter(|_| ids.len() == 1);
                vec![self.notifier.task_created(single)]
            }
            Err(_) => Vec::new(),
        };
        self.end(tx, out, notes).await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = db::fetch_task(&mut c, id).await;
        self.read(out)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = tasks::list(&mut c, filter).await;
        self.read(out)
    }

    async fn count_tasks(&self, plan_id: Option<PlanId>) -> Result<StatusCounts> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = tasks::count(&mut c, plan_id).await;
        self.read(out)
    }

    async fn set_task_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>> {
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = tasks::set_status(&mut tx, &self.notifier, &mut notes, id, change).await;
        self.end(tx, out, notes).await
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool> {
        let mut tx = self.begin().await?;
        let out = tasks::delete(&mut tx, id).await;
        self.end(tx, out, Vec::new()).await
    }

    async fn prune_tasks(&self, params: &PruneParams) -> Result<u64> {
        if let Some(bad) = params.statuses.iter().find(|s| !s.is_terminal()) {
            return Err(hive_models::Error::InvalidField {
                field: "statuses".into(),
                reason: format!("only terminal tasks can be pruned, not `{bad}`"),
            }
            .into());
        }
        if params.statuses.is_empty() || params.limit == 0 {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let out = tasks::prune(&mut tx, params).await;
        self.end(tx, out, Vec::new()).await
    }

    async fn claim_tasks(&self, params: &ClaimParams) -> Result<Vec<Claim>> {
        if params.limit == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = runs::claim(&mut tx, &self.notifier, &mut notes, params).await;
        self.end(tx, out, notes).await
    }

    async fn finish_runs(&self, outcomes: &[RunOutcome]) -> Result<Vec<FinishReport>> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = runs::finish(&mut tx, &self.notifier, &mut notes, outcomes).await;
        self.end(tx, out, notes).await
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
        let mut tx = self.begin().await?;
        let out = runs::extend_lease(&mut tx, run_id, lease).await;
        self.end(tx, out, Vec::new()).await
    }

    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = runs::release(&mut tx, &self.notifier, &mut notes, run_ids).await;
        self.end(tx, out, notes).await
    }

    async fn reap(&self, params: &ReapParams) -> Result<ReapReport> {
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = runs::reap(&mut tx, &self.notifier, &mut notes, params).await;
        self.end(tx, out, notes).await
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = runs::get(&mut c, id).await;
        self.read(out)
    }

    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = runs::list(&mut c, task_id).await;
        self.read(out)
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
        status: Option<WorkerStatus>,
    ) -> Result<Option<HeartbeatReport>> {
        let mut tx = self.begin().await?;
        let out = workers::heartbeat(&mut tx, id, status).await;
        self.end(tx, out, Vec::new()).await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<Worker>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = workers::get(&mut c, id).await;
        self.read(out)
    }

    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = workers::list(&mut c, filter).await;
        self.read(out)
    }

    async fn unregister_worker(&self, id: &WorkerId) -> Result<Option<Vec<TaskId>>> {
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = workers::unregister(&mut tx, &self.notifier, &mut notes, id).await;
        self.end(tx, out, notes).await
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId> {
        let mut tx = self.begin().await?;
        let out = plans::insert(&mut tx, plan).await;
        self.end(tx, out, Vec::new()).await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = plans::get(&mut c, id).await;
        self.read(out)
    }

    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = plans::list(&mut c, status, limit).await;
        self.read(out)
    }

    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>> {
        let mut tx = self.begin().await?;
        let out = plans::materialize(&mut tx, id).await;
        let notes = match &out {
            Ok(plans::Materialized::Created(_)) => vec![self.notifier.task_created(None)],
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
        let mut tx = self.begin().await?;
        let mut notes = Vec::new();
        let out = plans::cancel(&mut tx, &self.notifier, &mut notes, id).await;
        self.end(tx, out, notes).await
    }

    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut c = self.reader.acquire().await.map_err(|e| self.sql_error(e))?;
        let out = tasks::dependencies_met(&mut c, ids).await;
        self.read(out)
    }
}
