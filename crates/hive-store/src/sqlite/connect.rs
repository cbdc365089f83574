//! Opening an SQLite database: the URL, the two pools, read-only files, the schema policy,
//! and the guard that keeps a panicking connection thread from holding the write lock.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, SqliteConnection};

use super::db;
use crate::schema::{self, Action, MIGRATIONS_TABLE};
use crate::{ConnectOptions, DatabaseUrl, Error, Result, SchemaPolicy};

/// Readers when neither the URL nor the options say.
const DEFAULT_READERS: u32 = 4;
/// How long a write waits for another process's write lock before `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The name prefix of every SQLite connection thread Hive opens (see [`abort_on_panic`]).
const THREAD_PREFIX: &str = "hive-sqlite-";
/// The tables Hive's schema creates, to tell them from an app's own.
const HIVE_TABLES: &[&str] = &["plans", "tasks", "task_dependencies", "runs", "workers"];

fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("migrations/sqlite");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

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
        let path = if in_memory {
            path.to_owned()
        } else {
            file_path(path).ok_or_else(unsupported)?
        };
        let kept = kept.finish();
        // `sqlite://` + the path keeps an absolute path absolute when sqlx strips the scheme;
        // sqlx decodes it, so it gets the path encoded.
        let encoded = percent_encoding::utf8_percent_encode(&path, SQLX_PATH_ESCAPES);
        let sqlx_url = if kept.is_empty() {
            format!("sqlite://{encoded}")
        } else {
            format!("sqlite://{encoded}?{kept}")
        };
        Ok(ParsedUrl {
            sqlx_url,
            path: if path.is_empty() {
                ":memory:".into()
            } else {
                path
            },
            in_memory,
            max_connections,
            acquire_timeout,
        })
    }
}

/// What sqlx would read as other than a path's own characters once it decodes it.
const SQLX_PATH_ESCAPES: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%').add(b'?').add(b'#');

/// The file a URL's path names: percent-decoded (as sqlx reads it, so the checks here look
/// at the file sqlx opens) and absolute, so a process that changes its directory later
/// still reopens the same file when its pools reconnect. `None` when not UTF-8 once decoded.
fn file_path(raw: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    let absolute = std::path::absolute(Path::new(&*decoded)).ok()?;
    absolute.to_str().map(str::to_owned)
}

/// The pools an opened database is used through.
#[derive(Debug)]
pub(super) struct Opened {
    pub reader: SqlitePool,
    pub writer: SqlitePool,
    /// The database path, for errors.
    pub target: String,
    /// The file opened, to notice it being removed or replaced (`None` in memory).
    pub file: Option<FileId>,
}

/// Which file a path named when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[cfg(unix)]
    fn of(path: &str) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    #[cfg(not(unix))]
    fn of(_path: &str) -> Option<FileId> {
        None
    }

    /// Fails when `path` no longer names this file. An open connection keeps working on a
    /// removed (or replaced) file, so without this check a worker would go on writing
    /// where no other process can see it.
    pub fn check(self, path: &str) -> Result<()> {
        let reason = match FileId::of(path) {
            Some(now) if now == self => return Ok(()),
            Some(_) => "the database file was replaced while this process had it open",
            None => "the database file was removed while this process had it open",
        };
        Err(Error::Misconfigured {
            target: path.to_owned(),
            reason: reason.into(),
        })
    }
}

/// Opens the database a URL names under the schema policy: creating the file only when the
/// policy may create the schema, falling back to reading only when the file cannot be
/// written, then migrating, using or refusing it as [`schema::decide`] says.
pub(super) async fn open(url: &DatabaseUrl, options: &ConnectOptions) -> Result<Opened> {
    let parsed = ParsedUrl::parse(url)?;
    // The URL's settings are checked as the options' are.
    ConnectOptions {
        max_connections: options.max_connections.or(parsed.max_connections),
        acquire_timeout: options.acquire_timeout.or(parsed.acquire_timeout),
        ..options.clone()
    }
    .check()?;
    let target = parsed.path.clone();
    let creates = options.schema != SchemaPolicy::Existing;
    let misconfigured = |reason: &str| Error::Misconfigured {
        target: target.clone(),
        reason: reason.to_owned(),
    };
    if !parsed.in_memory && !creates && !Path::new(&parsed.path).exists() {
        return Err(misconfigured(
            "the database file does not exist (is the path right? `hive migrate`, \
             `hive task create` or `hive plan submit` create it)",
        ));
    }
    if !parsed.in_memory
        && let Some(dir) = Path::new(&parsed.path).parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(misconfigured(&format!(
            "the directory {} does not exist",
            dir.display()
        )));
    }
    abort_on_panic();
    if creates && !parsed.in_memory {
        create_private(Path::new(&parsed.path));
    }
    // Processes opening a new file at once race for it: switching it to WAL needs it alone
    // (SQLite answers "database is locked" at once, not after the busy timeout), and its
    // schema is inspected while another creates it. Only a file missing or empty before
    // the first attempt is tried again: an existing one that is locked reports so at once.
    // Each attempt closes what it opened.
    let new_file = creates
        && !parsed.in_memory
        && std::fs::metadata(&parsed.path)
            .ok()
            .is_none_or(|m| m.len() == 0);
    let mut attempt = 1;
    loop {
        match open_once(url, &parsed, options, creates).await {
            Err(Error::Unavailable { .. }) if new_file && attempt < OPEN_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            opened => return opened,
        }
    }
}

/// Creates a missing database file readable and writable by its owner only: tasks'
/// payloads and results live in it, and SQLite gives its `-wal` and `-shm` files the same
/// mode. A file that exists (or that another process creates at the same moment) is left
/// as it is; a failure here is left to SQLite's own open, which reports it.
fn create_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Attempts at opening a file other processes may be creating too.
const OPEN_ATTEMPTS: u32 = 20;

/// One attempt of [`open`], its checks done.
async fn open_once(
    url: &DatabaseUrl,
    parsed: &ParsedUrl,
    options: &ConnectOptions,
    creates: bool,
) -> Result<Opened> {
    let target = parsed.path.clone();
    let sql_err = |e: sqlx::Error| match e {
        sqlx::Error::Configuration(_) => Error::UnsupportedUrl(url.redacted()),
        e => db::map_opening(&target, e),
    };
    // The options win over the URL, as on Postgres.
    let acquire = options
        .acquire_timeout
        .or(parsed.acquire_timeout)
        .unwrap_or(DEFAULT_ACQUIRE_TIMEOUT);
    let readers = options
        .max_connections
        .or(parsed.max_connections)
        .unwrap_or(DEFAULT_READERS)
        .max(1);
    let base = SqliteConnectOptions::from_str(&parsed.sqlx_url)
        .map_err(sql_err)?
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // A statement that changes many rows keeps a journal of the pages it changed (to
        // undo itself alone); past 64 KiB that journal went to a temporary file, which a
        // claim or finish of a few dozen tasks reached: 6% of the writer's time was those
        // file writes.
        .pragma("temp_store", "memory")
        .thread_name(|id| format!("{THREAD_PREFIX}{id}"));
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
        // In WAL mode NORMAL loses nothing when the application crashes, only possibly the
        // last commits when the machine loses power.
        let mut opts = base
            .create_if_missing(creates)
            .synchronous(SqliteSynchronous::Normal)
            .pragma("wal_autocheckpoint", "16384")
            // The log is cut back to this once a checkpoint has emptied it: after a large
            // submit or prune it would otherwise keep its largest size while any process
            // holds the database open, which workers always do.
            .pragma("journal_size_limit", "67108864");
        if creates {
            // Switching to WAL writes the file: only where the schema may be created. WAL
            // is a property of the file, so a database Hive created is in WAL already.
            opts = opts.journal_mode(SqliteJournalMode::Wal);
        }
        let opts = if creates {
            opts
        } else {
            readable(opts, &parsed.path).await?
        };
        // The writer connects first: it creates the file and switches it to WAL.
        // The one writer is kept for the store's life, as the in-memory one is: a pool
        // reconnecting it for idleness or age would only risk a failed open mid-work.
        let writer = pool(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await
            .map_err(sql_err)?;
        let reader = pool(readers).connect_with(opts).await.map_err(sql_err)?;
        (reader, writer)
    };
    apply_policy(&writer, options.schema, &target).await?;
    let file = if parsed.in_memory {
        None
    } else {
        FileId::of(&parsed.path)
    };
    Ok(Opened {
        reader,
        writer,
        target,
        file,
    })
}

/// The options that can read the file: as given when it opens for writing or (a file this
/// user cannot write) for reading. A file in a directory this user cannot write either has
/// no shared-memory file SQLite could create; it is read as an immutable snapshot, without
/// locks, but only when its write-ahead log is empty: otherwise the snapshot would miss the
/// latest commits, and the error says what to do.
async fn readable(opts: SqliteConnectOptions, path: &str) -> Result<SqliteConnectOptions> {
    let target = path.to_owned();
    let works = |o: SqliteConnectOptions| async move {
        let mut c = SqliteConnection::connect_with(&o).await?;
        let r = sqlx::query("SELECT count(*) FROM sqlite_master")
            .fetch_one(&mut c)
            .await;
        let _ = c.close().await;
        r.map(drop)
    };
    match works(opts.clone()).await {
        Ok(()) => Ok(opts),
        Err(e) if db::is_read_only(&e) => {
            let wal = std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len());
            if wal > 0 {
                return Err(Error::Misconfigured {
                    target,
                    reason: "the file is read-only and its directory too, and its write-ahead \
                             log holds commits that cannot be read without a shared-memory \
                             file there: let a writer checkpoint it (or make the directory \
                             writable)"
                        .into(),
                });
            }
            let immutable = opts.read_only(true).immutable(true);
            works(immutable.clone())
                .await
                .map_err(|e| db::map_opening(&target, e))?;
            tracing::info!(
                "the SQLite database and its directory are read-only: reading it as an \
                 immutable snapshot"
            );
            Ok(immutable)
        }
        Err(e) => Err(db::map_opening(&target, e)),
    }
}

/// Inspects the schema and migrates, uses or refuses the database as the policy says.
async fn apply_policy(pool: &SqlitePool, policy: SchemaPolicy, target: &str) -> Result<()> {
    let err = |e: sqlx::Error| db::map_opening(target, e);
    let migrator = migrator();
    let mut conn = pool.acquire().await.map_err(err)?;
    let action = schema::resolve(
        &mut schema::SqlCatalog {
            conn: &mut *conn,
            tables_sql: "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        },
        policy,
        &migrator,
        HIVE_TABLES,
        target,
        err,
    )
    .await?;
    drop(conn);
    match action {
        Action::Use => Ok(()),
        Action::Migrate => migrate(pool, &migrator).await,
    }
}

/// Attempts at migrating a file other processes may be migrating too.
const MIGRATE_ATTEMPTS: u32 = 20;

/// Applies the embedded migrations. Processes opening a new file at once race (sqlx takes
/// no lock on SQLite): each migration runs in its own transaction, so a process that
/// collides with one another applied (a column that exists by then, say) rolls it back,
/// and its next attempt starts after the last one recorded. Every attempt gets further, so
/// a few, spaced out, outlast a racing process however many migrations it applies; an
/// error that stays is reported, and one no race causes (a migration changed or missing)
/// at once.
async fn migrate(pool: &SqlitePool, migrator: &sqlx::migrate::Migrator) -> Result<()> {
    use sqlx::migrate::MigrateError;
    let mut attempt = 1;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e @ (MigrateError::Execute(_) | MigrateError::ExecuteMigration(..)))
                if attempt < MIGRATE_ATTEMPTS =>
            {
                tracing::debug!(error = %e, attempt, "migrating raced another process; again");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(Error::Migration(e.to_string())),
        }
    }
}

/// Makes a panic on one of Hive's SQLite connection threads abort the process.
///
/// Such a thread owns its connection; a panic there (a logger writing to a closed stderr,
/// say) can leave that connection open inside a transaction, holding the database's write
/// lock while every other writer, in this process and others, waits for it forever. Ending
/// the process releases the lock at once (the operating system closes the file), and a
/// worker's leases bring its tasks back. Panics on any other thread keep the hook that was
/// installed before.
fn abort_on_panic() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_connection = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(THREAD_PREFIX));
            if !on_connection {
                previous(info);
                return;
            }
            let message = format!(
                "hive: an SQLite connection thread panicked ({info}); aborting so that its \
                 write lock is released\n"
            );
            // Printed from another thread, and not waited for long: stderr may be a pipe
            // nobody drains, and the abort must not wait on it.
            let (done, wait) = std::sync::mpsc::channel();
            let _ = std::thread::Builder::new().spawn(move || {
                use std::io::Write;
                let _ = std::io::stderr().write_all(message.as_bytes());
                let _ = done.send(());
            });
            let _ = wait.recv_timeout(Duration::from_millis(200));
            std::process::abort();
        }));
    });
}
