//! Fresh databases per scenario: a new SQLite file in a temp dir, or a new Postgres schema
//! (dropped afterwards), plus direct sqlx pools on the same database for raw SQL.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Executor};

/// The backends the benchmark runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// One scenario's database. Call [`FreshDb::cleanup`] when done; a Postgres schema left
/// behind by a crash is named `hive_bench_*` so it is easy to find and drop.
#[derive(Debug)]
pub struct FreshDb {
    /// What `hive_client::Client::connect` takes.
    pub url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Memory,
    Sqlite {
        path: std::path::PathBuf,
        // Held so the directory lives as long as the database.
        _dir: tempfile::TempDir,
    },
    Postgres {
        server_url: String,
        schema: String,
    },
}

/// A direct pool on a fresh database, for raw baselines and fast fixture loading.
#[derive(Debug, Clone)]
pub enum RawPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl FreshDb {
    pub async fn new(backend: Backend, server_url: &str) -> Result<FreshDb> {
        match backend {
            Backend::Memory => Ok(FreshDb {
                url: "memory:".into(),
                kind: Kind::Memory,
            }),
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("hive-bench-")
                    .tempdir()
                    .context("creating a temp dir for SQLite")?;
                let path = dir.path().join("bench.db");
                Ok(FreshDb {
                    url: format!("sqlite:{}", path.display()),
                    kind: Kind::Sqlite { path, _dir: dir },
                })
            }
            Backend::Postgres => {
                let schema = format!("hive_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = admin(server_url).await?;
                conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .await
                    .with_context(|| format!("creating schema {schema}"))?;
                let _ = conn.close().await;
                Ok(FreshDb {
                    url: url_with_schema(server_url, &schema)?,
                    kind: Kind::Postgres {
                        server_url: server_url.to_owned(),
                        schema,
                    },
                })
            }
        }
    }

    /// A pool of `connections` straight onto this database (`None` for memory). SQLite
    /// gets the store's own settings (WAL, synchronous=NORMAL) so the baseline pays the
    /// same durability cost.
    pub async fn raw_pool(&self, connections: u32) -> Result<Option<RawPool>> {
        match &self.kind {
            Kind::Memory => Ok(None),
            Kind::Sqlite { path, .. } => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(options)
                    .await
                    .context("opening SQLite directly")?;
                Ok(Some(RawPool::Sqlite(pool)))
            }
            Kind::Postgres { .. } => {
                let pool = PgPoolOptions::new().max_connections(connections);
                let pool = pool.connect(&self.url).await;
                Ok(Some(RawPool::Postgres(
                    pool.context("opening Postgres directly")?,
                )))
            }
        }
    }

    /// Drops the schema or deletes the file.
    pub async fn cleanup(self) -> Result<()> {
        if let Kind::Postgres { server_url, schema } = self.kind {
            let mut conn = admin(&server_url).await?;
            conn.execute(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .await
            .with_context(|| format!("dropping schema {schema}"))?;
            let _ = conn.close().await;
        }
        Ok(())
    }
}

impl RawPool {
    /// Runs one statement without parameters (DDL, bulk updates).
    pub async fn execute(&self, sql: &str) -> Result<u64> {
        let sql = AssertSqlSafe(sql.to_owned());
        Ok(match self {
            RawPool::Sqlite(p) => p.execute(sql).await?.rows_affected(),
            RawPool::Postgres(p) => p.execute(sql).await?.rows_affected(),
        })
    }

    pub async fn close(&self) {
        match self {
            RawPool::Sqlite(p) => p.close().await,
            RawPool::Postgres(p) => p.close().await,
        }
    }
}

async fn admin(server_url: &str) -> Result<PgConnection> {
    let shown = hive_store::DatabaseUrl::new(server_url).redacted();
    PgConnection::connect(server_url)
        .await
        .with_context(|| format!("connecting to Postgres at {shown}"))
}

/// `url` with every connection's `search_path` set to `schema` (a libpq `options`
/// parameter, which sqlx and the store honour), so migrations, queries and raw SQL all
/// land in the scenario's own schema.
fn url_with_schema(url: &str, schema: &str) -> Result<String> {
    let mut u = url::Url::parse(url).context("parsing the Postgres URL")?;
    u.query_pairs_mut()
        .append_pair("options", &format!("-c search_path={schema}"));
    Ok(u.into())
}
