//! Opening a Postgres store: the URL and its pool settings, the pool, and the schema
//! policy's migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::{PostgresStore, map_sqlx};
use crate::notify::Notifier;
use crate::{ConnectOptions, DatabaseUrl, Error, Result};

const DEFAULT_MAX_CONNECTIONS: u32 = 10;
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection idle longer than this is pinged before use.
const IDLE_PING_AFTER: Duration = Duration::from_secs(30);
/// The tables Hive's schema creates, to tell them from an app's own.
const HIVE_TABLES: &[&str] = &["plans", "tasks", "task_dependencies", "runs", "workers"];

fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("migrations/postgres");
    m.dangerous_set_table_name(crate::MIGRATIONS_TABLE);
    m
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
        password: url.password(),
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
        options.check()?;
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
        let jit_off = !pg.get_options().is_some_and(|o| o.contains("jit"));
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS))
            .acquire_timeout(options.acquire_timeout.unwrap_or(DEFAULT_ACQUIRE_TIMEOUT))
            // sqlx pings every connection it hands out by default: a round trip per
            // operation. Only a connection idle for a while is worth checking.
            .test_before_acquire(false)
            // Hive's statements are short and prepared; the generic plan of a keyed claim's
            // read over a large queue is costed above `jit_above_cost`, and compiling it
            // took about 70 ms of a read that runs in 2. A URL whose `options` set `jit`
            // keeps its own.
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if jit_off {
                        sqlx::Executor::execute(&mut *conn, "SET jit = off").await?;
                    }
                    Ok(())
                })
            })
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
            folds: Default::default(),
        }
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
}
