//! [`PostgresStore`]: Hive on PostgreSQL, for many workers in many processes.
//!
//! Every timestamp written and every time comparison uses the server's clock, never the
//! caller's: `now()` (the transaction's start), except that a claim uses
//! `statement_timestamp()`, because a claim that follows a finish in one transaction
//! ([`Store::finish_and_claim`]) may run long after that transaction began, and a run must
//! not seem to start before the dependency it waited for completed. Hot paths are few round trips: a claim is
//! one statement, and so is finishing a batch of successful runs outside plans; any other
//! batch locks and reads what it can touch, replays itself in Rust ([`effects`]) and writes
//! with one statement. Change notifications go out with `pg_notify` inside the writing
//! transaction, so Postgres delivers them on commit, to every process.

/// The terminal task statuses, as an SQL list.
macro_rules! terminal_statuses {
    () => {
        "('completed', 'failed', 'cancelled')"
    };
}

/// Every task query selects `t.*` plus this, so the row carries the task's dependency list
/// in the order the dependencies were declared.
macro_rules! task_dependencies {
    () => {
        "ARRAY(SELECT d.depends_on FROM task_dependencies d WHERE d.task_id = t.id \
         ORDER BY d.position) AS dependencies"
    };
}

/// The `SELECT` of full task rows (alias `t`); callers append `WHERE` and `ORDER BY`.
macro_rules! select_tasks {
    () => {
        concat!("SELECT t.*, ", task_dependencies!(), " FROM tasks t ")
    };
}

/// Sends one notification per row of `$rows` (an SQL query) as JSON arrays of up to 40
/// (each under Postgres's 8000-byte payload limit): one NOTIFY per 40 changes rather than
/// per change, which keeps commits of large batches cheap. `$object` builds one
/// notification from the row's columns (alias `x`). Yields one row, `n`, the payloads sent.
macro_rules! notify_rows {
    ($rows:expr, $object:expr) => {
        concat!(
            "SELECT count(pg_notify('hive_events:' || left(current_schema(), 50), c.p)) AS n FROM ( \
                 SELECT json_agg(",
            $object,
            ")::text AS p FROM (SELECT s.*, row_number() OVER () AS rn FROM (",
            $rows,
            ") s) x GROUP BY (x.rn - 1) / 40) c"
        )
    };
}

/// The columns [`effects::Node::from_row`] reads, from `runs r JOIN tasks t`.
macro_rules! locked_run_columns {
    () => {
        "r.id AS run_id, r.status AS run_status, t.id AS task_id, t.status AS task_status, \
         t.seq, t.current_run_id, t.plan_id, t.attempts, t.max_retries, now() AS now"
    };
}

mod effects;
mod listen;
mod rows;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use hive_models::{
    ExecutionPlan, Json, NewPlan, NewTask, PlanId, PlanStatus, Run, RunId, RunStatus, SubTask,
    Task, TaskId, TaskStatus, Timestamp, Worker, WorkerId, WorkerStatus,
};
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use tokio::sync::broadcast;
use uuid::Uuid;

use self::effects::{Changes, Effects, Node, RunPatch};
use crate::memory::run_status_on_leave;
use crate::sql_fail::{Fail, R};
use crate::{
    Backend, Claim, ClaimParams, ConnectOptions, DatabaseUrl, Error, FinishReport, Finished,
    HeartbeatReport, Notification, Notifier, Outcome, PruneParams, ReapParams, ReapReport, Result,
    RunOutcome, StatusChange, StatusChanged, StatusCounts, Store, TaskFilter, WorkerFilter,
    WorkerRegistration,
};

fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/postgres");
    m.dangerous_set_table_name(crate::MIGRATIONS_TABLE);
    m
}

/// The tables Hive's schema creates, to tell them from an app's own.
const HIVE_TABLES: &[&str] = &["plans", "tasks", "task_dependencies", "runs", "workers"];

const DEFAULT_MAX_CONNECTIONS: u32 = 10;
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Durations are capped at about 1000 years, so `now() ± d` stays a valid timestamp.
const MAX_DAYS: i64 = 365_250;
const MAX_MICROS: i64 = MAX_DAYS * 86_400 * 1_000_000;
/// Run ids travel with the claim statement; larger limits claim in chunks of this size.
const CLAIM_CHUNK: u32 = 1000;
/// A pooled connection idle longer than this is pinged before use.
const IDLE_PING_AFTER: Duration = Duration::from_secs(30);
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
    use sqlx::Error as E;
    let unavailable = |reason: String| Error::Unavailable {
        target: target.to_owned(),
        reason,
    };
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            unavailable(e.to_string())
        }
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = format!("{} (SQLSTATE {code})", db.message());
            match code.as_str() {
                // unique_violation, serialization_failure, deadlock_detected, lock_not_available
                "23505" | "40001" | "40P01" | "55P03" => Error::Conflict(message),
                // connection exceptions, server shutting down, too many connections
                c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                    unavailable(message)
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
        }
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => Error::Corrupt {
            table: "query result",
            reason: e.to_string(),
        },
        E::Migrate(m) => Error::Migration(m.to_string()),
        other => Error::Database(other.to_string()),
    }
}

/// Microseconds of a duration, capped (see [`MAX_DAYS`]).
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_MICROS)
}

fn payload(n: &Notification) -> R<String> {
    serde_json::to_string(n).map_err(|e| Fail::Store(Error::Database(format!("notification: {e}"))))
}

/// Pool settings taken out of the URL, and the URL without them (sqlx would only warn about
/// unknown parameters, but they are ours, not the server's).
#[derive(Debug)]
struct UrlSettings {
    url: String,
    max_connections: Option<u32>,
    acquire_timeout: Option<Duration>,
    password: Option<String>,
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Invalid(hive_models::Error::InvalidField {
        field: field.into(),
        reason: reason.into(),
    })
}

fn split_url(url: &DatabaseUrl) -> Result<UrlSettings> {
    let mut parsed =
        url::Url::parse(url.expose()).map_err(|_| Error::UnsupportedUrl(url.redacted()))?;
    let mut settings = UrlSettings {
        url: String::new(),
        max_connections: None,
        acquire_timeout: None,
        password: parsed.password().filter(|p| !p.is_empty()).map(|p| {
            url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map_or_else(|| p.to_owned(), |(_, v)| v.into_owned())
        }),
    };
    let mut kept = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "max_connections" => {
                let n: u32 = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(
                        "max_connections",
                        format!("`{value}` is not a positive integer"),
                    )
                })?;
                settings.max_connections = Some(n);
            }
            "acquire_timeout_secs" => {
                let secs = value
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| {
                        invalid(
                            "acquire_timeout_secs",
                            format!("`{value}` is not a number of seconds"),
                        )
                    })?;
                settings.acquire_timeout = Some(secs);
            }
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    settings.url = parsed.into();
    Ok(settings)
}

/// Removes a password from a driver message, should one ever appear there.
fn scrub(text: String, password: Option<&str>) -> String {
    match password {
        Some(p) if text.contains(p) => text.replace(p, "***"),
        _ => text,
    }
}

/// Hive on PostgreSQL.
///
/// Concurrency: claims in one statement with `FOR UPDATE SKIP LOCKED`; NOTIFY on commit.
/// Every other write is one transaction that locks the task rows it changes (in id order),
/// so concurrent workers in any number of processes never double-claim a task or finish a
/// stale run; a transaction that loses a deadlock or serialization race is retried.
///
/// [`Store::subscribe`] starts one background listener (`LISTEN "hive_events:<schema>"` on its own
/// connection, `application_name` `hive-listen-<origin as simple uuid>`) that forwards every
/// notification, this store's own included, and reconnects with backoff after a connection
/// loss, then sends a catch-up wake-up. It stops when the store is dropped.
pub struct PostgresStore {
    pool: PgPool,
    notifier: Notifier,
    /// `host:port`, for `Unavailable` errors.
    target: String,
    listen_options: PgConnectOptions,
    listener: tokio::sync::Mutex<Option<listen::Handle>>,
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
    /// Opens a pool on `url` (settings: `options`, then the URL's `max_connections` and
    /// `acquire_timeout_secs`, then defaults of 10 connections and 10 s) and applies the
    /// migrations when `options.migrate`. An unreachable server is
    /// [`Error::Unavailable`] naming `host:port` only.
    pub async fn connect(url: &DatabaseUrl, options: &ConnectOptions) -> Result<PostgresStore> {
        let settings = split_url(url)?;
        let target = url.target();
        let pg = PgConnectOptions::from_str(&settings.url).map_err(|e| {
            // Configuration messages describe the bad part, never echo the URL; scrub anyway.
            tracing::debug!(error = %scrub(e.to_string(), settings.password.as_deref()), "bad Postgres URL");
            Error::UnsupportedUrl(url.redacted())
        })?;
        let options = ConnectOptions {
            schema: options.schema,
            max_connections: options.max_connections.or(settings.max_connections),
            acquire_timeout: options.acquire_timeout.or(settings.acquire_timeout),
        };
        Self::open(pg, target, &options, settings.password.as_deref()).await
    }

    /// [`PostgresStore::connect`] from driver options (for callers that build them).
    pub async fn connect_with_options(
        pg: PgConnectOptions,
        options: &ConnectOptions,
    ) -> Result<PostgresStore> {
        let target = format!("{}:{}", pg.get_host(), pg.get_port());
        Self::open(pg, target, options, None).await
    }

    /// Wraps an existing pool, without migrating (see [`PostgresStore::migrate`]).
    pub fn from_pool(pool: PgPool) -> PostgresStore {
        let pg = (*pool.connect_options()).clone();
        let target = format!("{}:{}", pg.get_host(), pg.get_port());
        Self::assemble(pool, pg, target)
    }

    /// Applies the embedded migrations; harmless when they are applied already.
    pub async fn migrate(&self) -> Result<()> {
        let pg = (*self.pool.connect_options()).clone();
        let mut conn = PgConnection::connect_with(&pg)
            .await
            .map_err(|e| map_sqlx(e, &self.target))?;
        Self::run_migrations(&mut conn).await
    }

    async fn open(
        pg: PgConnectOptions,
        target: String,
        options: &ConnectOptions,
        password: Option<&str>,
    ) -> Result<PostgresStore> {
        let pg = if pg.get_application_name().is_none() {
            pg.application_name("hive")
        } else {
            pg
        };
        // A dedicated connection: proves the server is reachable, and if a migration fails,
        // closing it releases the migrator's advisory lock (a pooled one would keep it).
        let mut conn =
            PgConnection::connect_with(&pg)
                .await
                .map_err(|e| match map_sqlx(e, &target) {
                    // A server that answered and refused (no such database, a rejected login)
                    // is misconfigured, not unavailable: retrying the same connect cannot
                    // succeed.
                    Error::Database(reason) => Error::Database(scrub(reason, password)),
                    Error::Misconfigured { target, reason } => Error::Misconfigured {
                        target,
                        reason: scrub(reason, password),
                    },
                    Error::Unavailable { target, reason } => Error::Unavailable {
                        target,
                        reason: scrub(reason, password),
                    },
                    other => other,
                })?;
        let action = crate::schema::resolve(
            &mut crate::schema::SqlCatalog {
                conn: &mut conn,
                tables_sql: "SELECT table_name::text FROM information_schema.tables \
                             WHERE table_schema = current_schema() ORDER BY 1",
            },
            options.schema,
            &migrator(),
            HIVE_TABLES,
            &target,
            |e| map_sqlx(e, &target),
        )
        .await?;
        if action == crate::schema::Action::Migrate {
            Self::run_migrations(&mut conn).await?;
        }
        // Closing politely is a courtesy; the connection is dropped either way.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS))
            .acquire_timeout(options.acquire_timeout.unwrap_or(DEFAULT_ACQUIRE_TIMEOUT))
            // sqlx pings every connection it hands out by default: a round trip per
            // operation. Only a connection idle for a while is worth checking.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_PING_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(pg.clone());
        Ok(Self::assemble(pool, pg, target))
    }

    /// Runs the migrator; it takes an advisory lock, so processes that connect to a new
    /// database at the same time migrate one after another.
    async fn run_migrations(conn: &mut PgConnection) -> Result<()> {
        // `run_direct` rather than `run`: `run`'s `Acquire` bound makes the future of every
        // caller non-`Send` (sqlx's "not general enough" limitation), and `connect` must be
        // spawnable.
        migrator()
            .run_direct(None, conn, false)
            .await
            .map_err(|e| Error::Migration(e.to_string()))
    }

    fn assemble(pool: PgPool, pg: PgConnectOptions, target: String) -> PostgresStore {
        let notifier = Notifier::new();
        let listen_options =
            pg.application_name(&format!("hive-listen-{}", notifier.origin().simple()));
        PostgresStore {
            pool,
            notifier,
            target,
            listen_options,
            listener: tokio::sync::Mutex::new(None),
        }
    }

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

// ---- tasks ----

/// Inserts rows given as parallel arrays; conflicting idempotency keys insert nothing.
/// Returns the ids inserted. `$19` is the notification payload, sent when not null.
const INSERT_TASKS: &str = "\
WITH input AS ( \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], \
        $6::jsonb[], $7::bigint[], $8::text[], $9::jsonb[], $10::timestamptz[], $11::uuid[], \
        $12::jsonb[], $13::jsonb[], $14::timestamptz[], $15::text[], $16::uuid[], $17::text[], \
        $18::int[]) WITH ORDINALITY \
    AS x(id, title, description, task_type, priority, payload, max_retries, current_phase, \
        workflow, due_date, parent_task_id, tags, metadata, run_at, idempotency_key, plan_id, \
        plan_subtask_id, pending_deps, ord) \
), ins AS ( \
    INSERT INTO tasks (id, title, description, task_type, priority, payload, max_retries, \
        current_phase, workflow, due_date, parent_task_id, tags, metadata, run_at, \
        idempotency_key, plan_id, plan_subtask_id, pending_deps, created_at, updated_at) \
    SELECT x.id, x.title, x.description, x.task_type, x.priority, x.payload, x.max_retries, \
        x.current_phase, x.workflow, x.due_date, x.parent_task_id, \
        ARRAY(SELECT e.v FROM jsonb_array_elements_text(x.tags) WITH ORDINALITY AS e(v, i) \
              ORDER BY e.i), \
        x.metadata, x.run_at, x.idempotency_key, x.plan_id, x.plan_subtask_id, x.pending_deps, \
        now(), now() \
    FROM input x ORDER BY x.ord \
    ON CONFLICT (idempotency_key) DO NOTHING \
    RETURNING id \
) \
SELECT ARRAY(SELECT id FROM ins) AS inserted, \
    (SELECT count(pg_notify('hive_events:' || left(current_schema(), 50), $19::text)) WHERE $19::text IS NOT NULL) AS notified";

/// One task row to insert, in [`INSERT_TASKS`]'s column order.
#[derive(Debug, Default)]
struct TaskRows {
    id: Vec<Uuid>,
    title: Vec<String>,
    description: Vec<String>,
    task_type: Vec<String>,
    priority: Vec<i32>,
    payload: Vec<Json>,
    max_retries: Vec<i64>,
    current_phase: Vec<String>,
    workflow: Vec<Option<Json>>,
    due_date: Vec<Option<Timestamp>>,
    parent_task_id: Vec<Option<Uuid>>,
    tags: Vec<Json>,
    metadata: Vec<Json>,
    run_at: Vec<Option<Timestamp>>,
    idempotency_key: Vec<Option<String>>,
    plan_id: Vec<Option<Uuid>>,
    plan_subtask_id: Vec<Option<String>>,
    pending_deps: Vec<i32>,
}

impl TaskRows {
    fn push(&mut self, id: TaskId, t: NewTask, plan: Option<(PlanId, String, usize)>) {
        self.id.push(id.0);
        self.title.push(t.title);
        self.description.push(t.description);
        self.task_type.push(t.task_type);
        self.priority.push(t.priority);
        self.payload.push(t.payload);
        self.max_retries.push(i64::from(t.max_retries));
        self.current_phase.push(t.current_phase);
        self.workflow.push(t.workflow);
        self.due_date.push(t.due_date);
        self.parent_task_id.push(t.parent_task_id.map(|p| p.0));
        self.tags.push(Json::from(t.tags));
        self.metadata.push(t.metadata);
        self.run_at.push(t.run_at);
        self.idempotency_key.push(t.idempotency_key);
        let (plan_id, subtask, pending) = match plan {
            Some((p, s, n)) => (Some(p.0), Some(s), i32::try_from(n).unwrap_or(i32::MAX)),
            None => (None, None, 0),
        };
        self.plan_id.push(plan_id);
        self.plan_subtask_id.push(subtask);
        self.pending_deps.push(pending);
    }

    /// Inserts the rows and returns the ids actually inserted.
    async fn insert(self, conn: &mut PgConnection, note: Option<String>) -> R<Vec<Uuid>> {
        let row = sqlx::query(INSERT_TASKS)
            .bind(self.id)
            .bind(self.title)
            .bind(self.description)
            .bind(self.task_type)
            .bind(self.priority)
            .bind(self.payload)
            .bind(self.max_retries)
            .bind(self.current_phase)
            .bind(self.workflow)
            .bind(self.due_date)
            .bind(self.parent_task_id)
            .bind(self.tags)
            .bind(self.metadata)
            .bind(self.run_at)
            .bind(self.idempotency_key)
            .bind(self.plan_id)
            .bind(self.plan_subtask_id)
            .bind(self.pending_deps)
            .bind(note)
            .fetch_one(conn)
            .await?;
        rows::get(&row, "inserted", "tasks")
    }
}

const CLAIM: &str = concat!(
    "WITH picked AS ( \
         SELECT id, priority, seq FROM tasks \
         WHERE status = 'queued' AND pending_deps = 0 AND (run_at IS NULL OR run_at <= statement_timestamp()) \
           AND (cardinality($2::text[]) = 0 OR task_type = ANY($2::text[])) \
         ORDER BY priority DESC, seq \
         LIMIT $3::bigint \
         FOR UPDATE SKIP LOCKED \
     ), numbered AS ( \
         SELECT id, (row_number() OVER (ORDER BY priority DESC, seq))::int AS n FROM picked \
     ), claimed AS ( \
         UPDATE tasks t SET status = 'in_progress', assigned_worker = $1::text, \
             attempts = t.attempts + 1, run_count = t.run_count + 1, \
             current_run_id = ($4::uuid[])[k.n], updated_at = statement_timestamp() \
         FROM numbered k WHERE t.id = k.id \
         RETURNING t.*, ",
    task_dependencies!(),
    " ), opened AS ( \
         INSERT INTO runs (id, task_id, worker_id, run_number, status, phase, started_at, \
             lease_us, lease_expires_at) \
         SELECT c.current_run_id, c.id, $1::text, c.run_count, 'running', c.current_phase, statement_timestamp(), \
             $5::bigint, statement_timestamp() + $5::bigint * interval '1 microsecond' \
         FROM claimed c \
     ), started AS ( \
         UPDATE plans p SET status = 'in_progress', updated_at = statement_timestamp() \
         WHERE p.status = 'pending' \
           AND p.id IN (SELECT c.plan_id FROM claimed c WHERE c.plan_id IS NOT NULL) \
         RETURNING p.id \
     ), announced AS ( \
         SELECT count(pg_notify('hive_events:' || left(current_schema(), 50), json_build_object('origin', $6::uuid, \
             'kind', 'plan_status', 'plan_id', s.id, 'status', 'in_progress')::text)) AS n \
         FROM started s \
     ) \
     SELECT c.*, statement_timestamp() AS started_at, statement_timestamp() + $5::bigint * interval '1 microsecond' AS lease_until \
     FROM claimed c CROSS JOIN announced \
     ORDER BY c.priority DESC, c.seq"
);

/// Finishes a batch of successful runs in one statement when none of their tasks belongs to a
/// plan (plans need the ordered replay of [`effects`]); otherwise changes nothing and
/// reports `fast = false`. A run id given twice finishes once: the first occurrence wins.
/// Returns the dependents made ready, announced as `task_ready` when `$5` is true.
const FINISH_SUCCESSES: &str = concat!(
    "WITH input AS ( \
         SELECT * FROM unnest($1::uuid[], $2::jsonb[], $3::text[]) WITH ORDINALITY \
             AS x(run_id, result, log, ord) \
     ), locked AS ( \
         SELECT r.id AS run_id, t.id AS task_id, t.plan_id, \
             (r.status = 'running' AND t.current_run_id = r.id) AS live \
         FROM runs r JOIN tasks t ON t.id = r.task_id WHERE r.id = ANY($1::uuid[]) \
         ORDER BY t.id, r.id FOR UPDATE OF t, r \
     ), fast AS ( \
         SELECT NOT EXISTS (SELECT 1 FROM locked WHERE live AND plan_id IS NOT NULL) AS ok \
     ), go AS ( \
         SELECT l.run_id, l.task_id, f.result, f.log FROM locked l \
         JOIN (SELECT DISTINCT ON (run_id) run_id, result, log FROM input \
               ORDER BY run_id, ord) f ON f.run_id = l.run_id \
         WHERE l.live AND (SELECT ok FROM fast) \
     ), run_upd AS ( \
         UPDATE runs r SET status = 'success', completed_at = now(), lease_expires_at = NULL, \
             result_data = g.result, output_log = g.log \
         FROM go g WHERE r.id = g.run_id AND r.id = ANY($1::uuid[]) \
     ), dec AS ( \
         SELECT d.task_id AS id, count(*)::int AS n FROM task_dependencies d \
         WHERE d.depends_on = ANY(ARRAY(SELECT task_id FROM go)) GROUP BY d.task_id \
     ), task_upd AS ( \
         UPDATE tasks t SET status = 'completed', result = g.result, updated_at = now(), \
             pending_deps = greatest(t.pending_deps \
                 - coalesce((SELECT n FROM dec WHERE dec.id = t.id), 0), 0) \
         FROM go g WHERE t.id = g.task_id \
     ), dep_upd AS ( \
         UPDATE tasks t SET pending_deps = greatest(t.pending_deps - dec.n, 0) \
         FROM dec WHERE t.id = dec.id AND NOT (t.id = ANY(ARRAY(SELECT task_id FROM go))) \
         RETURNING t.id, t.pending_deps = 0 AND t.status = 'queued' AS ready \
     ), notes AS (",
    notify_rows!(
        "SELECT task_id FROM go",
        "json_build_object('origin', $4::uuid, 'kind', 'task_status', 'task_id', x.task_id, \
             'status', 'completed')"
    ),
    "), freed AS ( \
         SELECT array_agg(id) AS ids FROM dep_upd WHERE ready \
     ), ready_notes AS (",
    notify_rows!(
        "SELECT id FROM dep_upd WHERE ready AND $5::bool",
        "json_build_object('origin', $4::uuid, 'kind', 'task_ready', 'task_id', x.id)"
    ),
    ") \
     SELECT l.run_id, l.task_id, l.live, f.ok AS fast, n.n AS notified, rn.n AS ready_notified, \
         coalesce(r.ids, '{}') AS ready \
     FROM fast f CROSS JOIN notes n CROSS JOIN freed r CROSS JOIN ready_notes rn \
     LEFT JOIN locked l ON true"
);

/// Announces dependents a finish freed that the same transaction did not claim.
const ANNOUNCE_READY: &str = notify_rows!(
    "SELECT id FROM unnest($1::uuid[]) AS r(id)",
    "json_build_object('origin', $2::uuid, 'kind', 'task_ready', 'task_id', x.id)"
);

/// What finishing a batch did: one report per outcome, and the dependents made ready.
#[derive(Debug, Default)]
struct Finish {
    reports: Vec<FinishReport>,
    ready: Vec<TaskId>,
}

const LOCK_RUNS: &str = concat!(
    "SELECT ",
    locked_run_columns!(),
    " FROM runs r JOIN tasks t ON t.id = r.task_id WHERE r.id = ANY($1) \
     ORDER BY t.id, r.id FOR UPDATE OF t, r"
);

const EXPIRED_RUNS: &str = concat!(
    "SELECT ",
    locked_run_columns!(),
    " FROM runs r JOIN tasks t ON t.id = r.task_id \
     WHERE r.status = 'running' AND r.lease_expires_at < now() \
     ORDER BY r.lease_expires_at, r.id LIMIT $1 FOR UPDATE OF t, r SKIP LOCKED"
);

const WORKER_RUNS: &str = concat!(
    "SELECT ",
    locked_run_columns!(),
    " FROM runs r JOIN tasks t ON t.id = r.task_id \
     WHERE r.worker_id = $1 AND r.status = 'running' ORDER BY t.id, r.id FOR UPDATE OF t, r"
);

const LOCK_TASK: &str = "SELECT t.id AS task_id, t.status AS task_status, t.seq, \
     t.current_run_id, t.plan_id, t.attempts, t.max_retries, now() AS now \
     FROM tasks t WHERE t.id = $1 FOR UPDATE";

/// `$3`: the status changes; `$4`: recount pending dependencies (a requeue from a terminal
/// status); `$5`: metadata to merge (top-level keys replace, as `merge_metadata` does).
const UPDATE_STATUS: &str = concat!(
    "UPDATE tasks t SET status = $2::text, \
         updated_at = CASE WHEN $3::bool OR $5::jsonb IS NOT NULL THEN now() ELSE t.updated_at END, \
         pending_deps = CASE WHEN $4::bool THEN (SELECT count(*) FROM task_dependencies d \
             JOIN tasks x ON x.id = d.depends_on \
             WHERE d.task_id = t.id AND x.status <> 'completed')::int ELSE t.pending_deps END, \
         assigned_worker = CASE WHEN $3::bool AND $2::text = 'queued' THEN NULL \
             ELSE t.assigned_worker END, \
         run_at = CASE WHEN $3::bool AND $2::text = 'queued' THEN NULL ELSE t.run_at END, \
         metadata = CASE WHEN $5::jsonb IS NULL THEN t.metadata \
             WHEN jsonb_typeof(t.metadata) = 'object' AND jsonb_typeof($5::jsonb) = 'object' \
                 THEN t.metadata || $5::jsonb \
             ELSE $5::jsonb END \
     WHERE t.id = $1 RETURNING t.*, ",
    task_dependencies!()
);

const LOCK_PLAN_TASKS: &str = concat!(
    "SELECT t.id AS task_id, t.status AS task_status, t.seq, t.current_run_id, t.plan_id, \
         t.attempts, t.max_retries \
     FROM tasks t WHERE t.plan_id = $1 AND t.status NOT IN ",
    terminal_statuses!(),
    " ORDER BY t.id FOR UPDATE"
);

/// Turns locked `runs r JOIN tasks t` rows into the batch's view; returns each run's task.
fn load_locked(ch: &mut Changes<'_>, locked: &[PgRow]) -> R<HashMap<RunId, TaskId>> {
    let mut run_task = HashMap::with_capacity(locked.len());
    for row in locked {
        let (task_id, node) = Node::from_row(row)?;
        let run_id = RunId(rows::get(row, "run_id", "runs")?);
        let running = rows::run_status(row, "run_status")? == RunStatus::Running;
        ch.add_node(task_id, node);
        ch.set_running(task_id, run_id, running);
        run_task.insert(run_id, task_id);
    }
    Ok(run_task)
}

fn server_now(row: &PgRow) -> R<Timestamp> {
    rows::get(row, "now", "now()")
}

impl PostgresStore {
    async fn insert_tasks_once(&self, tasks: Vec<NewTask>) -> R<Vec<TaskId>> {
        let single = tasks.len() == 1;
        let mut ids = Vec::with_capacity(tasks.len());
        let mut first_of_key: HashMap<String, TaskId> = HashMap::new();
        let mut keyed = Vec::new();
        let mut batch = TaskRows::default();
        for t in tasks {
            if let Some(key) = &t.idempotency_key {
                // A key repeated within the batch names the batch's first task with it.
                if let Some(id) = first_of_key.get(key) {
                    ids.push(*id);
                    continue;
                }
                let id = TaskId::new();
                first_of_key.insert(key.clone(), id);
                keyed.push((key.clone(), id));
                ids.push(id);
                batch.push(id, t, None);
            } else {
                let id = TaskId::new();
                ids.push(id);
                batch.push(id, t, None);
            }
        }
        if keyed.is_empty() {
            let note = payload(
                &self
                    .notifier
                    .task_created(ids.first().copied().filter(|_| single)),
            )?;
            let mut conn = self.pool.acquire().await?;
            batch.insert(&mut conn, Some(note)).await?;
            return Ok(ids);
        }
        let mut tx = self.pool.begin().await?;
        let inserted: HashSet<Uuid> = batch.insert(&mut tx, None).await?.into_iter().collect();
        let lost: Vec<(String, TaskId)> = keyed
            .into_iter()
            .filter(|(_, id)| !inserted.contains(&id.0))
            .collect();
        if !lost.is_empty() {
            let keys: Vec<&str> = lost.iter().map(|(k, _)| k.as_str()).collect();
            let found = sqlx::query(
                "SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
            let mut existing = HashMap::with_capacity(found.len());
            for row in &found {
                let key: String = rows::get(row, "idempotency_key", "tasks")?;
                existing.insert(key, TaskId(rows::get(row, "id", "tasks")?));
            }
            for (key, generated) in lost {
                // The conflicting task was deleted after it blocked ours: try again.
                let Some(id) = existing.get(&key) else {
                    return Err(Error::Conflict(format!(
                        "idempotency key `{key}` changed concurrently"
                    ))
                    .into());
                };
                for slot in ids.iter_mut().filter(|i| **i == generated) {
                    *slot = *id;
                }
            }
        }
        let note = payload(
            &self
                .notifier
                .task_created(ids.first().copied().filter(|_| single)),
        )?;
        sqlx::query("SELECT pg_notify('hive_events:' || left(current_schema(), 50), $1)")
            .bind(note)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn claim_chunk(
        &self,
        conn: &mut PgConnection,
        p: &ClaimParams,
        limit: u32,
    ) -> R<Vec<Claim>> {
        let run_ids: Vec<Uuid> = (0..limit).map(|_| RunId::new().0).collect();
        let found = sqlx::query(CLAIM)
            .bind(p.worker_id.as_str())
            .bind(&p.task_types)
            .bind(i64::from(limit))
            .bind(run_ids)
            .bind(micros(p.lease))
            .bind(self.notifier.origin())
            .fetch_all(conn)
            .await?;
        let mut claims = Vec::with_capacity(found.len());
        for row in &found {
            let task = rows::task(row)?;
            let run_id = task
                .current_run_id
                .ok_or_else(|| rows::corrupt("tasks", "claimed task without a run"))?;
            let run = Run::claimed(
                run_id,
                &task,
                p.worker_id.clone(),
                rows::count(row, "run_count", "tasks")?,
                rows::get(row, "started_at", "runs")?,
                rows::get(row, "lease_until", "runs")?,
            );
            claims.push(Claim { task, run });
        }
        Ok(claims)
    }

    async fn claim_once(&self, p: &ClaimParams) -> R<Vec<Claim>> {
        if p.limit <= CLAIM_CHUNK {
            let mut conn = self.pool.acquire().await?;
            return self.claim_chunk(&mut conn, p, p.limit).await;
        }
        let mut tx = self.pool.begin().await?;
        let claims = self.claim_in(&mut tx, p).await?;
        tx.commit().await?;
        Ok(claims)
    }

    /// Claims on a connection the caller holds (in a transaction when the limit needs more
    /// than one statement's worth of run ids, which go in chunks).
    async fn claim_in(&self, conn: &mut PgConnection, p: &ClaimParams) -> R<Vec<Claim>> {
        let mut claims = Vec::new();
        let mut left = p.limit;
        while left > 0 {
            let n = left.min(CLAIM_CHUNK);
            let got = self.claim_chunk(conn, p, n).await?;
            let done = got.len() < n as usize;
            left -= n;
            claims.extend(got);
            if done {
                break;
            }
        }
        Ok(claims)
    }

    /// The one-statement finish of a batch of successes; `None` when a task of the batch
    /// belongs to a plan (nothing was changed then). Also returns the dependents made ready
    /// (announced when `announce`).
    async fn finish_successes(
        &self,
        conn: &mut PgConnection,
        outcomes: &[RunOutcome],
        announce: bool,
    ) -> R<Option<Finish>> {
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut results: Vec<Option<Json>> = Vec::with_capacity(n);
        let mut logs: Vec<Option<&str>> = Vec::with_capacity(n);
        for o in outcomes {
            ids.push(o.run_id.0);
            results.push(match &o.outcome {
                Outcome::Success { result } => result.clone(),
                Outcome::Failure { .. } => None,
            });
            logs.push(o.output_log.as_deref());
        }
        let found = sqlx::query(FINISH_SUCCESSES)
            .bind(&ids)
            .bind(results)
            .bind(logs)
            .bind(self.notifier.origin())
            .bind(announce)
            .fetch_all(conn)
            .await?;
        let mut run_task = HashMap::with_capacity(found.len());
        let mut live = HashSet::with_capacity(found.len());
        let mut ready = Vec::new();
        for row in &found {
            if !rows::get::<bool>(row, "fast", "tasks")? {
                return Ok(None);
            }
            if ready.is_empty() {
                let ids: Vec<Uuid> = rows::get(row, "ready", "tasks")?;
                ready = ids.into_iter().map(TaskId).collect();
            }
            let Some(run_id) = rows::get::<Option<Uuid>>(row, "run_id", "runs")? else {
                continue;
            };
            let task_id: Uuid = rows::get(row, "task_id", "tasks")?;
            run_task.insert(RunId(run_id), TaskId(task_id));
            if rows::get::<bool>(row, "live", "runs")? {
                live.insert(RunId(run_id));
            }
        }
        let reports = outcomes
            .iter()
            .map(|o| {
                let task_id = run_task.get(&o.run_id).copied();
                // `remove`: a run given twice finished once; the repeat is stale.
                let finished = if live.remove(&o.run_id) {
                    Finished::Completed
                } else {
                    Finished::Stale
                };
                FinishReport {
                    run_id: o.run_id,
                    task_id,
                    finished,
                    plan_id: None,
                    cancelled_dependents: Vec::new(),
                    plan_transition: None,
                }
            })
            .collect();
        Ok(Some(Finish { reports, ready }))
    }

    /// Finishes a batch of any outcomes through the ordered replay of [`effects`]; the caller
    /// holds the transaction.
    async fn finish_replayed(
        &self,
        tx: &mut PgConnection,
        outcomes: &[RunOutcome],
        announce: bool,
    ) -> R<Finish> {
        let ids: Vec<Uuid> = outcomes.iter().map(|o| o.run_id.0).collect();
        let locked = sqlx::query(LOCK_RUNS)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        let stale = |run_id: RunId, task_id: Option<TaskId>| FinishReport {
            run_id,
            task_id,
            finished: Finished::Stale,
            plan_id: None,
            cancelled_dependents: Vec::new(),
            plan_transition: None,
        };
        let Some(first) = locked.first() else {
            return Ok(Finish {
                reports: outcomes.iter().map(|o| stale(o.run_id, None)).collect(),
                ready: Vec::new(),
            });
        };
        let mut ch = Changes::new(&self.notifier, server_now(first)?);
        let run_task = load_locked(&mut ch, &locked)?;

        // Failures that would fail their task for good may cancel dependents: load those.
        let roots: Vec<TaskId> = outcomes
            .iter()
            .filter_map(|o| match &o.outcome {
                Outcome::Failure { retry, .. } => {
                    let task_id = *run_task.get(&o.run_id)?;
                    (ch.is_live(task_id, o.run_id) && ch.fails_for_good(task_id, *retry))
                        .then_some(task_id)
                }
                Outcome::Success { .. } => None,
            })
            .collect();
        ch.load_cascade(&mut *tx, &roots).await?;
        ch.load_plans(&mut *tx).await?;

        let mut reports = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let task_id = run_task.get(&o.run_id).copied();
            let Some(task_id) = task_id.filter(|t| ch.is_live(*t, o.run_id)) else {
                reports.push(stale(o.run_id, task_id));
                continue;
            };
            let plan_id = ch.node(task_id).and_then(|n| n.plan_id);
            let log = Some(o.output_log.clone());
            let (finished, fx) = match &o.outcome {
                Outcome::Success { result } => {
                    ch.close_run(task_id, |r| RunPatch {
                        result: Some(result.clone()),
                        log,
                        ..RunPatch::close(r, RunStatus::Success)
                    });
                    ch.set_status(task_id, TaskStatus::Completed);
                    ch.set_result(task_id, result.clone());
                    ch.note(self.notifier.task_status(task_id, TaskStatus::Completed));
                    (Finished::Completed, ch.on_terminal(task_id))
                }
                Outcome::Failure { error, retry } => {
                    ch.close_run(task_id, |r| RunPatch {
                        error: Some(Some(error.clone())),
                        log,
                        ..RunPatch::close(r, RunStatus::Failure)
                    });
                    ch.fail_attempt(task_id, error, *retry)
                }
            };
            reports.push(FinishReport {
                run_id: o.run_id,
                task_id: Some(task_id),
                finished,
                plan_id,
                cancelled_dependents: fx.cancelled,
                plan_transition: fx.plan_transition.map(|(_, s)| s),
            });
        }
        let ready = ch.apply_announcing(tx, announce).await?;
        Ok(Finish { reports, ready })
    }

    /// Finishes runs, by one statement when the batch is all successes outside plans.
    async fn finish_in(
        &self,
        tx: &mut PgConnection,
        outcomes: &[RunOutcome],
        announce: bool,
    ) -> R<Finish> {
        if outcomes.is_empty() {
            return Ok(Finish::default());
        }
        if outcomes
            .iter()
            .all(|o| matches!(o.outcome, Outcome::Success { .. }))
            && let Some(done) = self.finish_successes(tx, outcomes, announce).await?
        {
            return Ok(done);
        }
        self.finish_replayed(tx, outcomes, announce).await
    }

    async fn finish_once(&self, outcomes: &[RunOutcome]) -> R<Vec<FinishReport>> {
        if outcomes
            .iter()
            .all(|o| matches!(o.outcome, Outcome::Success { .. }))
        {
            // One statement needs no explicit transaction: saves BEGIN and COMMIT trips.
            let mut conn = self.pool.acquire().await?;
            if let Some(done) = self.finish_successes(&mut conn, outcomes, true).await? {
                return Ok(done.reports);
            }
        }
        let mut tx = self.pool.begin().await?;
        let done = self.finish_replayed(&mut tx, outcomes, true).await?;
        tx.commit().await?;
        Ok(done.reports)
    }

    /// Finishes, then claims in the same transaction; announces the freed dependents it did
    /// not take.
    async fn finish_and_claim_once(
        &self,
        outcomes: &[RunOutcome],
        p: &ClaimParams,
    ) -> R<(Vec<FinishReport>, Vec<Claim>)> {
        let mut tx = self.pool.begin().await?;
        let done = self.finish_in(&mut tx, outcomes, false).await?;
        let claims = self.claim_in(&mut tx, p).await?;
        let claimed: HashSet<TaskId> = claims.iter().map(|c| c.task.id).collect();
        let unclaimed: Vec<Uuid> = done
            .ready
            .iter()
            .filter(|t| !claimed.contains(t))
            .map(|t| t.0)
            .collect();
        if !unclaimed.is_empty() {
            sqlx::query(ANNOUNCE_READY)
                .bind(unclaimed)
                .bind(self.notifier.origin())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((done.reports, claims))
    }

    /// Releases the locked runs that are live, in the given order; returns their tasks.
    fn release(ch: &mut Changes<'_>, n: &Notifier, runs: &[(RunId, TaskId)]) -> Vec<TaskId> {
        let mut released = Vec::new();
        for &(run_id, task_id) in runs {
            if !ch.is_live(task_id, run_id) {
                continue;
            }
            ch.close_run(task_id, |r| RunPatch::close(r, RunStatus::Cancelled));
            ch.add_attempts(task_id, -1);
            ch.requeue(task_id, None);
            ch.note(n.task_status(task_id, TaskStatus::Queued));
            released.push(task_id);
        }
        released
    }

    async fn release_once(&self, run_ids: &[RunId]) -> R<Vec<TaskId>> {
        let ids: Vec<Uuid> = run_ids.iter().map(|r| r.0).collect();
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query(LOCK_RUNS)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        let Some(first) = locked.first() else {
            return Ok(Vec::new());
        };
        let mut ch = Changes::new(&self.notifier, server_now(first)?);
        let run_task = load_locked(&mut ch, &locked)?;
        let order: Vec<(RunId, TaskId)> = run_ids
            .iter()
            .filter_map(|r| run_task.get(r).map(|t| (*r, *t)))
            .collect();
        let released = Self::release(&mut ch, &self.notifier, &order);
        ch.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(released)
    }

    async fn reap_once(&self, p: &ReapParams) -> R<ReapReport> {
        let mut tx = self.pool.begin().await?;
        let offline = sqlx::query(
            "WITH off AS ( \
                 UPDATE workers SET status = 'offline', current_task_id = NULL \
                 WHERE status IN ('active', 'idle') \
                   AND last_heartbeat < now() - $1::bigint * interval '1 microsecond' \
                 RETURNING id) \
             SELECT now() AS now, ARRAY(SELECT id FROM off ORDER BY id COLLATE \"C\") AS ids",
        )
        .bind(micros(p.heartbeat_timeout))
        .fetch_one(&mut *tx)
        .await?;
        let mut ch = Changes::new(&self.notifier, server_now(&offline)?);
        let expired = sqlx::query(EXPIRED_RUNS)
            .bind(i64::from(p.limit))
            .fetch_all(&mut *tx)
            .await?;
        let run_task = load_locked(&mut ch, &expired)?;
        let mut order = Vec::with_capacity(expired.len());
        for row in &expired {
            let run_id = RunId(rows::get(row, "run_id", "runs")?);
            if let Some(&task_id) = run_task.get(&run_id) {
                order.push((run_id, task_id));
            }
        }
        let live: Vec<TaskId> = order
            .iter()
            .filter(|(r, t)| ch.is_live(*t, *r))
            .map(|(_, t)| *t)
            .collect();
        let roots: Vec<TaskId> = live
            .iter()
            .copied()
            .filter(|t| ch.fails_for_good(*t, Some(p.retry)))
            .collect();
        ch.load_cascade(&mut tx, &roots).await?;
        ch.load_plans(&mut tx).await?;

        let mut report = ReapReport::default();
        for (run_id, task_id) in order {
            if !ch.is_live(task_id, run_id) {
                continue;
            }
            ch.close_run(task_id, |r| RunPatch {
                error: Some(Some("lease expired".into())),
                ..RunPatch::close(r, RunStatus::Timeout)
            });
            let (finished, fx) = ch.fail_attempt(task_id, "lease expired", Some(p.retry));
            match finished {
                Finished::Retrying { .. } => report.requeued.push((task_id, run_id)),
                _ => report.failed.push(task_id),
            }
            report.plan_transitions.extend(fx.plan_transition);
        }
        let ids: Vec<String> = rows::get(&offline, "ids", "workers")?;
        for id in ids {
            let id = WorkerId(id);
            ch.note(self.notifier.worker(id.clone(), WorkerStatus::Offline));
            report.offline_workers.push(id);
        }
        ch.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn set_status_once(&self, id: TaskId, change: &StatusChange) -> R<Option<StatusChanged>> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(LOCK_TASK)
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let (_, node) = Node::from_row(&row)?;
        let mut ch = Changes::new(&self.notifier, server_now(&row)?);
        let previous = node.status;
        let to = change.status;
        let requeue = change.requeue && to == TaskStatus::Queued && previous.can_requeue();
        if !requeue {
            previous.check_transition(to)?;
        }
        let changed = previous != to;
        let current_run = node.current_run;
        ch.add_node(id, node);
        let task_row = if changed || change.metadata.is_some() {
            sqlx::query(UPDATE_STATUS)
                .bind(id.0)
                .bind(to.as_str())
                .bind(changed)
                .bind(changed && requeue && previous.is_terminal())
                .bind(change.metadata.clone())
                .fetch_one(&mut *tx)
                .await?
        } else {
            sqlx::query(concat!(select_tasks!(), "WHERE t.id = $1"))
                .bind(id.0)
                .fetch_one(&mut *tx)
                .await?
        };
        let task = rows::task(&task_row)?;
        let mut fx = Effects::default();
        if changed {
            if let Some(run) = current_run.filter(|_| previous.is_active()) {
                // Closed only if still running; the worker's late finish is then stale.
                ch.close_known_run(RunPatch::close(run, run_status_on_leave(to)));
            }
            ch.note_status(id, to);
            ch.note(self.notifier.task_status(id, to));
            if to.is_terminal() {
                if to != TaskStatus::Completed {
                    ch.load_cascade(&mut tx, &[id]).await?;
                }
                ch.load_plans(&mut tx).await?;
                fx = ch.on_terminal(id);
            }
        }
        ch.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(StatusChanged {
            previous,
            task,
            cancelled_dependents: fx.cancelled,
            plan_transition: fx.plan_transition,
        }))
    }

    async fn unregister_once(&self, id: &WorkerId) -> R<Option<Vec<TaskId>>> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query("DELETE FROM workers WHERE id = $1 RETURNING now() AS now")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut ch = Changes::new(&self.notifier, server_now(&row)?);
        let locked = sqlx::query(WORKER_RUNS)
            .bind(id.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let run_task = load_locked(&mut ch, &locked)?;
        let mut order: Vec<(RunId, TaskId)> = run_task.into_iter().collect();
        order.sort_by_key(|(r, t)| (*t, *r));
        let released = Self::release(&mut ch, &self.notifier, &order);
        ch.note(self.notifier.worker(id.clone(), WorkerStatus::Offline));
        ch.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(released))
    }

    async fn materialize_once(&self, id: PlanId) -> R<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT materialized, subtasks, parent_task_id FROM plans WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        if rows::get::<bool>(&row, "materialized", "plans")? {
            return Ok(Some(0));
        }
        let subtasks: Json = rows::get(&row, "subtasks", "plans")?;
        let subtasks: Vec<SubTask> = serde_json::from_value(subtasks)
            .map_err(|e| rows::corrupt("plans", format!("column `subtasks`: {e}")))?;
        let parent = rows::get::<Option<Uuid>>(&row, "parent_task_id", "plans")?.map(TaskId);
        let ids: HashMap<&str, TaskId> = subtasks
            .iter()
            .map(|st| (st.id.as_str(), TaskId::new()))
            .collect();
        let mut batch = TaskRows::default();
        let (mut child, mut parent_of, mut position) = (Vec::new(), Vec::new(), Vec::new());
        for st in &subtasks {
            let Some(&tid) = ids.get(st.id.as_str()) else {
                continue;
            };
            let deps: Vec<TaskId> = hive_models::unique_dependencies(st)
                .into_iter()
                .filter_map(|d| ids.get(d).copied())
                .collect();
            for (i, d) in deps.iter().enumerate() {
                child.push(tid.0);
                parent_of.push(d.0);
                position.push(i32::try_from(i).unwrap_or(i32::MAX));
            }
            let new = st.to_new_task(parent);
            batch.push(tid, new, Some((id, st.id.clone(), deps.len())));
        }
        let created = batch.id.len() as u64;
        let note = payload(&self.notifier.task_created(None))?;
        batch.insert(&mut tx, Some(note)).await?;
        sqlx::query(
            "WITH deps AS ( \
                 INSERT INTO task_dependencies (task_id, depends_on, position) \
                 SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::int[])) \
             UPDATE plans SET materialized = true, updated_at = now() WHERE id = $1",
        )
        .bind(id.0)
        .bind(child)
        .bind(parent_of)
        .bind(position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    async fn cancel_plan_once(&self, id: PlanId) -> R<Option<Vec<TaskId>>> {
        let mut tx = self.pool.begin().await?;
        // Tasks before the plan: the order every other writer locks them in.
        sqlx::query(LOCK_PLAN_TASKS)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        let Some(plan) =
            sqlx::query("SELECT status, now() AS now FROM plans WHERE id = $1 FOR UPDATE")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        if rows::plan_status(&plan, "status")?.is_terminal() {
            return Ok(Some(Vec::new()));
        }
        let mut ch = Changes::new(&self.notifier, server_now(&plan)?);
        ch.load_plan_ids(&mut tx, &[id]).await?;
        // Again, now that the plan is locked: tasks materialized meanwhile are included.
        let open = sqlx::query(LOCK_PLAN_TASKS)
            .bind(id.0)
            .fetch_all(&mut *tx)
            .await?;
        let mut tasks = Vec::with_capacity(open.len());
        for row in &open {
            let (tid, node) = Node::from_row(row)?;
            tasks.push((node.seq, tid, node.status, node.current_run));
            ch.add_node(tid, node);
        }
        tasks.sort_by_key(|(seq, ..)| *seq);
        ch.note(self.notifier.plan_status(id, PlanStatus::Cancelled));
        let mut cancelled = Vec::with_capacity(tasks.len());
        for (_, tid, status, run) in tasks {
            if let Some(run) = run.filter(|_| status.is_active()) {
                ch.close_known_run(RunPatch::close(run, RunStatus::Cancelled));
            }
            ch.set_status(tid, TaskStatus::Cancelled);
            ch.note(self.notifier.task_status(tid, TaskStatus::Cancelled));
            cancelled.push(tid);
        }
        ch.cancel_plan(id, cancelled.len());
        ch.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(Some(cancelled))
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
        if !listener.as_ref().is_some_and(listen::Handle::is_running) {
            let handle = listen::start(self.listen_options.clone(), self.notifier.clone())
                .await
                .map_err(|e| map_sqlx(e, &self.target))?;
            *listener = Some(handle);
        }
        Ok(self.notifier.subscribe())
    }

    async fn insert_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        // One statement (or, with idempotency keys, one short transaction): no retry loop,
        // which would have to keep a copy of the whole batch.
        self.run(self.insert_tasks_once(tasks)).await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>> {
        self.run(async {
            let row = sqlx::query(concat!(select_tasks!(), "WHERE t.id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(rows::task).transpose()
        })
        .await
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>> {
        self.run(async {
            let found = sqlx::query(concat!(
                select_tasks!(),
                "WHERE ($1::text IS NULL OR t.status = $1::text) \
                   AND ($2::text IS NULL OR t.task_type = $2::text) \
                   AND ($3::uuid IS NULL OR t.plan_id = $3::uuid) \
                   AND (NOT $4::bool OR (t.status = 'queued' AND t.pending_deps = 0 \
                        AND (t.run_at IS NULL OR t.run_at <= now()))) \
                 ORDER BY t.priority DESC, t.seq LIMIT $5::bigint"
            ))
            .bind(f.status.map(TaskStatus::as_str))
            .bind(f.task_type.as_deref())
            .bind(f.plan_id.map(|p| p.0))
            .bind(f.ready_only)
            .bind(f.limit.map(i64::from))
            .fetch_all(&self.pool)
            .await?;
            found.iter().map(rows::task).collect()
        })
        .await
    }

    async fn count_tasks(&self, plan_id: Option<PlanId>) -> Result<StatusCounts> {
        self.run(async {
            let found = sqlx::query(
                "SELECT status, count(*) AS n FROM tasks \
                 WHERE ($1::uuid IS NULL OR plan_id = $1::uuid) GROUP BY status",
            )
            .bind(plan_id.map(|p| p.0))
            .fetch_all(&self.pool)
            .await?;
            let mut counts = StatusCounts::new();
            for row in &found {
                let n: i64 = rows::get(row, "n", "tasks")?;
                counts.insert(rows::task_status(row, "status")?, n.unsigned_abs());
            }
            Ok(counts)
        })
        .await
    }

    async fn set_task_status(
        &self,
        id: TaskId,
        change: StatusChange,
    ) -> Result<Option<StatusChanged>> {
        self.retrying(|| self.set_status_once(id, &change)).await
    }

    async fn delete_task(&self, id: TaskId) -> Result<bool> {
        self.retrying(|| async move {
            let mut tx = self.pool.begin().await?;
            let Some(row) = sqlx::query(concat!(select_tasks!(), "WHERE t.id = $1 FOR UPDATE"))
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(false);
            };
            let task = rows::task(&row)?;
            let check = sqlx::query(concat!(
                "SELECT (SELECT p.status FROM plans p WHERE p.id = $2) AS plan_status, \
                        (SELECT count(*) FROM task_dependencies d JOIN tasks x ON x.id = d.task_id \
                         WHERE d.depends_on = $1 AND x.status NOT IN ",
                terminal_statuses!(),
                ") AS open_dependents"
            ))
            .bind(id.0)
            .bind(task.plan_id.map(|p| p.0))
            .fetch_one(&mut *tx)
            .await?;
            let plan_status = rows::get::<Option<String>>(&check, "plan_status", "plans")?
                .map(|s| s.parse::<PlanStatus>())
                .transpose()
                .map_err(|e| rows::corrupt("plans", e.to_string()))?;
            let open: i64 = rows::get(&check, "open_dependents", "tasks")?;
            task.check_deletable(plan_status, usize::try_from(open).unwrap_or(usize::MAX))?;
            let n: i64 = sqlx::query_scalar(
                "WITH gone AS (DELETE FROM tasks WHERE id = $1 RETURNING id, status), \
                 unblocked AS ( \
                     UPDATE tasks t SET pending_deps = greatest(t.pending_deps - 1, 0) \
                     FROM task_dependencies d, gone g \
                     WHERE d.depends_on = g.id AND t.id = d.task_id AND g.status <> 'completed') \
                 SELECT count(*) FROM gone",
            )
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    async fn prune_tasks(&self, p: &PruneParams) -> Result<u64> {
        if let Some(bad) = p.statuses.iter().find(|s| !s.is_terminal()) {
            return Err(invalid(
                "statuses",
                format!("only terminal tasks can be pruned, not `{bad}`"),
            ));
        }
        let statuses: Vec<&str> = p.statuses.iter().map(|s| s.as_str()).collect();
        self.retrying(|| {
            let statuses = &statuses;
            async move {
                let n: i64 = sqlx::query_scalar(concat!(
                    "WITH old AS ( \
                         SELECT id, status FROM tasks \
                         WHERE status = ANY($1::text[]) AND status IN ",
                    terminal_statuses!(),
                    "      AND updated_at < now() - $2::bigint * interval '1 microsecond' \
                         ORDER BY updated_at, id LIMIT $3::bigint \
                         FOR UPDATE SKIP LOCKED \
                     ), waiting AS ( \
                         SELECT d.task_id, count(*)::int AS n FROM task_dependencies d \
                         JOIN old o ON o.id = d.depends_on WHERE o.status <> 'completed' \
                         GROUP BY d.task_id \
                     ), unblocked AS ( \
                         UPDATE tasks t SET pending_deps = greatest(t.pending_deps - w.n, 0) \
                         FROM waiting w \
                         WHERE t.id = w.task_id AND t.id NOT IN (SELECT id FROM old) \
                     ), gone AS ( \
                         DELETE FROM tasks WHERE id IN (SELECT id FROM old) RETURNING 1 \
                     ) \
                     SELECT count(*) FROM gone"
                ))
                .bind(statuses)
                .bind(micros(p.older_than))
                .bind(i64::from(p.limit))
                .fetch_one(&self.pool)
                .await?;
                Ok(n.unsigned_abs())
            }
        })
        .await
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
        let until: Option<Timestamp> = self
            .run(async {
                Ok(sqlx::query_scalar(
                    "UPDATE runs r SET lease_us = $2::bigint, \
                         lease_expires_at = now() + $2::bigint * interval '1 microsecond' \
                     FROM tasks t \
                     WHERE r.id = $1 AND r.status = 'running' AND t.id = r.task_id \
                       AND t.current_run_id = r.id \
                     RETURNING r.lease_expires_at",
                )
                .bind(run_id.0)
                .bind(micros(lease))
                .fetch_optional(&self.pool)
                .await?)
            })
            .await?;
        until.ok_or(Error::StaleRun { run_id })
    }

    async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<TaskId>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.retrying(|| self.release_once(run_ids)).await
    }

    async fn reap(&self, params: &ReapParams) -> Result<ReapReport> {
        self.retrying(|| self.reap_once(params)).await
    }

    async fn get_run(&self, id: RunId) -> Result<Option<Run>> {
        self.run(async {
            let row = sqlx::query("SELECT * FROM runs WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(rows::run).transpose()
        })
        .await
    }

    async fn list_runs(&self, task_id: TaskId) -> Result<Vec<Run>> {
        self.run(async {
            let found = sqlx::query("SELECT * FROM runs WHERE task_id = $1 ORDER BY run_number")
                .bind(task_id.0)
                .fetch_all(&self.pool)
                .await?;
            found.iter().map(rows::run).collect()
        })
        .await
    }

    async fn register_worker(&self, r: &WorkerRegistration) -> Result<Worker> {
        self.run(async {
            let note = payload(&self.notifier.worker(r.id.clone(), WorkerStatus::Active))?;
            let row = sqlx::query(
                "WITH up AS ( \
                     INSERT INTO workers (id, role, status, last_heartbeat, capabilities, \
                         current_task_id, registered_at, metadata) \
                     VALUES ($1, $2, 'active', now(), $3, NULL, now(), $4) \
                     ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
                         capabilities = excluded.capabilities, metadata = excluded.metadata, \
                         status = 'active', last_heartbeat = excluded.last_heartbeat \
                     RETURNING *) \
                 SELECT up.*, (SELECT count(pg_notify('hive_events:' || left(current_schema(), 50), $5::text))) AS notified \
                 FROM up",
            )
            .bind(r.id.as_str())
            .bind(&r.role)
            .bind(&r.capabilities)
            .bind(&r.metadata)
            .bind(note)
            .fetch_one(&self.pool)
            .await?;
            rows::worker(&row)
        })
        .await
    }

    async fn heartbeat(
        &self,
        id: &WorkerId,
        status: Option<WorkerStatus>,
    ) -> Result<Option<HeartbeatReport>> {
        self.run(async {
            let row = sqlx::query(
                "WITH w AS ( \
                     UPDATE workers SET last_heartbeat = now(), \
                         status = coalesce($2::text, status) \
                     WHERE id = $1 RETURNING id \
                 ), r AS ( \
                     UPDATE runs SET lease_expires_at = now() + lease_us * interval '1 microsecond' \
                     WHERE worker_id = $1 AND status = 'running' AND lease_us IS NOT NULL \
                       AND EXISTS (SELECT 1 FROM w) \
                     RETURNING 1 \
                 ) \
                 SELECT (SELECT count(*) FROM w) AS known, (SELECT count(*) FROM r) AS extended",
            )
            .bind(id.as_str())
            .bind(status.map(WorkerStatus::as_str))
            .fetch_one(&self.pool)
            .await?;
            let known: i64 = rows::get(&row, "known", "workers")?;
            let extended: i64 = rows::get(&row, "extended", "runs")?;
            Ok((known > 0).then(|| HeartbeatReport { extended: extended.unsigned_abs() }))
        })
        .await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<Worker>> {
        self.run(async {
            let row = sqlx::query("SELECT * FROM workers WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(rows::worker).transpose()
        })
        .await
    }

    async fn list_workers(&self, f: &WorkerFilter) -> Result<Vec<Worker>> {
        self.run(async {
            let found = sqlx::query(
                "SELECT * FROM workers \
                 WHERE ($1::text IS NULL OR role = $1::text) \
                   AND ($2::bigint IS NULL OR (status IN ('active', 'idle') \
                        AND last_heartbeat >= now() - $2::bigint * interval '1 microsecond')) \
                 ORDER BY id COLLATE \"C\"",
            )
            .bind(f.role.as_deref())
            .bind(f.alive_within.map(micros))
            .fetch_all(&self.pool)
            .await?;
            found.iter().map(rows::worker).collect()
        })
        .await
    }

    async fn unregister_worker(&self, id: &WorkerId) -> Result<Option<Vec<TaskId>>> {
        self.retrying(|| self.unregister_once(id)).await
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<PlanId> {
        let id = PlanId::new();
        self.run(async {
            let subtasks = serde_json::to_value(&plan.subtasks)
                .map_err(|e| Fail::Store(Error::Database(format!("subtasks: {e}"))))?;
            let total = i64::try_from(plan.subtasks.len()).unwrap_or(i64::MAX);
            sqlx::query(
                "INSERT INTO plans (id, title, description, parent_task_id, status, \
                     total_subtasks, subtasks, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5, $6, now(), now())",
            )
            .bind(id.0)
            .bind(&plan.title)
            .bind(&plan.description)
            .bind(plan.parent_task_id.map(|p| p.0))
            .bind(total)
            .bind(subtasks)
            .execute(&self.pool)
            .await?;
            Ok(id)
        })
        .await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Option<ExecutionPlan>> {
        self.run(async {
            let row = sqlx::query("SELECT * FROM plans WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(rows::plan).transpose()
        })
        .await
    }

    async fn list_plans(
        &self,
        status: Option<PlanStatus>,
        limit: Option<u32>,
    ) -> Result<Vec<ExecutionPlan>> {
        self.run(async {
            let found = sqlx::query(
                "SELECT * FROM plans WHERE ($1::text IS NULL OR status = $1::text) \
                 ORDER BY created_at DESC, id DESC LIMIT $2::bigint",
            )
            .bind(status.map(PlanStatus::as_str))
            .bind(limit.map(i64::from))
            .fetch_all(&self.pool)
            .await?;
            found.iter().map(rows::plan).collect()
        })
        .await
    }

    async fn materialize_plan(&self, id: PlanId) -> Result<Option<u64>> {
        self.retrying(|| self.materialize_once(id)).await
    }

    async fn transition_plan(&self, id: PlanId, from: PlanStatus, to: PlanStatus) -> Result<bool> {
        self.run(async {
            let note = payload(&self.notifier.plan_status(id, to))?;
            let n: i64 = sqlx::query_scalar(
                "WITH moved AS ( \
                     UPDATE plans SET status = $3, updated_at = now() \
                     WHERE id = $1 AND status = $2 RETURNING id) \
                 SELECT count(pg_notify('hive_events:' || left(current_schema(), 50), $4::text)) FROM moved",
            )
            .bind(id.0)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(note)
            .fetch_one(&self.pool)
            .await?;
            Ok(n > 0)
        })
        .await
    }

    async fn cancel_plan(&self, id: PlanId) -> Result<Option<Vec<TaskId>>> {
        self.retrying(|| self.cancel_plan_once(id)).await
    }

    async fn dependencies_met(&self, ids: &[TaskId]) -> Result<HashMap<TaskId, bool>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<Uuid> = ids.iter().map(|t| t.0).collect();
        self.run(async {
            let found = sqlx::query(
                "SELECT t.id, NOT EXISTS ( \
                     SELECT 1 FROM task_dependencies d JOIN tasks x ON x.id = d.depends_on \
                     WHERE d.task_id = t.id AND x.status <> 'completed') AS met \
                 FROM tasks t WHERE t.id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
            let mut met = HashMap::with_capacity(found.len());
            for row in &found {
                met.insert(
                    TaskId(rows::get(row, "id", "tasks")?),
                    rows::get(row, "met", "tasks")?,
                );
            }
            Ok(met)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_settings_are_stripped() {
        let url = DatabaseUrl::new(
            "postgres://u:p%40ss@db:6543/hive?max_connections=3&sslmode=disable&acquire_timeout_secs=2.5",
        );
        let s = split_url(&url).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.max_connections, Some(3));
        assert_eq!(s.acquire_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.url, "postgres://u:p%40ss@db:6543/hive?sslmode=disable");
        assert_eq!(s.password.as_deref(), Some("p@ss"));
        let bare = split_url(&DatabaseUrl::new("postgres://db/hive?max_connections=4"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bare.url, "postgres://db/hive");
        for bad in [
            "max_connections=0",
            "max_connections=x",
            "acquire_timeout_secs=-1",
        ] {
            let url = DatabaseUrl::new(format!("postgres://db/hive?{bad}"));
            assert!(matches!(split_url(&url), Err(Error::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn scrub_hides_the_password() {
        assert_eq!(
            scrub("auth failed for s3cret".into(), Some("s3cret")),
            "auth failed for ***"
        );
        assert_eq!(scrub("fine".into(), None), "fine");
    }

    #[test]
    fn micros_caps() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), MAX_MICROS);
    }

    #[test]
    fn terminal_list_matches_the_model() {
        for s in TaskStatus::ALL {
            assert_eq!(
                terminal_statuses!().contains(&format!("'{s}'")),
                s.is_terminal(),
                "{s}"
            );
        }
    }
}
