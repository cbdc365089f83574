//! [`connect`]: open the backend a URL names.

use std::sync::Arc;
use std::time::Duration;

use crate::{DatabaseUrl, Error, MemoryStore, Result, SchemaPolicy, Store};

/// How to open a store. Pool settings may also come from the URL
/// (`?max_connections=N&acquire_timeout_secs=S` on Postgres and SQLite URLs).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// What connecting may do to the schema (default: create or upgrade it).
    pub schema: SchemaPolicy,
    /// Pool size; the backend's default when `None`.
    pub max_connections: Option<u32>,
    /// How long to wait for a pooled connection before `Unavailable`.
    pub acquire_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            schema: SchemaPolicy::Migrate,
            max_connections: None,
            acquire_timeout: None,
        }
    }
}

/// Opens `memory:`, `sqlite:PATH` (created if missing), `sqlite::memory:` or
/// `postgres://…`, applying migrations (see [`ConnectOptions::schema`] for the others).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, &ConnectOptions::default()).await
}

/// [`connect`] with explicit options.
pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Arc<dyn Store>> {
    let url = DatabaseUrl::new(url.trim());
    let text = url.expose();
    if text == "memory:" || text == "memory://" || text == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if text.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(Arc::new(crate::SqliteStore::connect(&url, options).await?));
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(
            crate::PostgresStore::connect(&url, options).await?,
        ));
    }
    let _ = options;
    Err(Error::UnsupportedUrl(url.redacted()))
}
