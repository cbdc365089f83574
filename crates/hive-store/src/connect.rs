//! [`connect`]: open the backend a URL names.

use std::sync::Arc;
use std::time::Duration;

use crate::{DatabaseUrl, Error, MemoryStore, Result, SchemaPolicy, Store};

/// How to open a store. Pool settings may also come from the URL
/// (`?max_connections=N&acquire_timeout_secs=S` on Postgres and SQLite URLs); a setting
/// given here wins over the URL's.
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

impl ConnectOptions {
    /// Refuses settings no pool can work with: no connections, or no wait for one (every
    /// call would fail `Unavailable`, which callers retry for ever).
    pub fn check(&self) -> Result<()> {
        let invalid = |field: &str, reason: &str| {
            Err(Error::Invalid(hive_models::Error::InvalidField {
                field: field.into(),
                reason: reason.into(),
            }))
        };
        if self.max_connections == Some(0) {
            return invalid("max_connections", "a pool needs at least one connection");
        }
        if self.acquire_timeout == Some(Duration::ZERO) {
            return invalid(
                "acquire_timeout",
                "a zero wait for a connection fails every call",
            );
        }
        Ok(())
    }
}

/// Opens `memory:`, `sqlite:PATH` (created if missing), `sqlite::memory:` or
/// `postgres://…`, applying migrations (see [`ConnectOptions::schema`] for the others).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, &ConnectOptions::default()).await
}

/// [`connect`] with explicit options.
pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Arc<dyn Store>> {
    options.check()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool without connections, or without a wait for one, is refused naming the
    /// setting, on every backend, before anything is opened.
    #[tokio::test]
    async fn unworkable_pool_settings_are_refused() {
        let none = ConnectOptions {
            max_connections: Some(0),
            ..ConnectOptions::default()
        };
        let no_wait = ConnectOptions {
            acquire_timeout: Some(Duration::ZERO),
            ..ConnectOptions::default()
        };
        for url in [
            "memory:",
            "sqlite::memory:",
            "postgres://root@127.0.0.1:1/none",
        ] {
            for (options, field) in [(&none, "max_connections"), (&no_wait, "acquire_timeout")] {
                let Err(e) = connect_with(url, options).await else {
                    panic!("{url}: {field} accepted");
                };
                assert!(
                    matches!(e, Error::Invalid(_)) && e.to_string().contains(field),
                    "{url}: {e}"
                );
            }
        }
        // The same settings in a URL.
        for url in [
            "sqlite::memory:?max_connections=0",
            "sqlite::memory:?acquire_timeout_secs=0",
            "postgres://root@127.0.0.1:1/none?acquire_timeout_secs=0",
        ] {
            let refused = connect_with(url, &ConnectOptions::default()).await;
            assert!(matches!(refused, Err(Error::Invalid(_))), "{url}");
        }
        assert!(
            connect_with("memory:", &ConnectOptions::default())
                .await
                .is_ok()
        );
    }
}
