//! [`Client`]: the facade apps hold, over the operations of one store.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use hive_ops::{Ops, OpsConfig};
use hive_store::{ConnectOptions, Store};

use crate::Result;

/// The environment variable naming the database.
pub const DATABASE_URL_ENV: &str = "HIVE_DATABASE_URL";
/// The database used when `HIVE_DATABASE_URL` is unset: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:hive.db";

/// A handle on one Hive store. Cheap to clone; clones share the connection pool and the
/// event bus. Every [`Ops`] method is callable on it directly; the original SDK's own names
/// are in [`crate::compat`].
#[derive(Debug, Clone)]
pub struct Client {
    ops: Ops<dyn Store>,
}

impl Deref for Client {
    type Target = Ops<dyn Store>;

    fn deref(&self) -> &Self::Target {
        &self.ops
    }
}

impl Client {
    /// Opens `memory:`, `sqlite:PATH` or `postgres://…`, applying migrations.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, &ConnectOptions::default(), OpsConfig::default()).await
    }

    /// [`Client::connect`] with pool and operation settings.
    pub async fn connect_with(
        url: &str,
        options: &ConnectOptions,
        config: OpsConfig,
    ) -> Result<Client> {
        let store = hive_store::connect_with(url, options).await?;
        Ok(Self::from_store(store, config))
    }

    /// [`Client::connect`] that waits for a database that cannot be reached yet: while
    /// connecting fails with [`hive_store::Error::Unavailable`] (server down, port closed,
    /// host not resolving), it logs a warning naming `host:port` (never the password) and
    /// tries again under `retry`'s capped exponential backoff. Any other error (a bad URL,
    /// a failed migration, a rejected login) returns at once. Pool settings ride on the
    /// URL (`?max_connections=N&acquire_timeout_secs=S`); for explicit options use
    /// [`ConnectRetry::connect_with`]. `hive worker run` connects this way.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use hive_client::{Client, ConnectRetry};
    ///
    /// # async fn demo() -> Result<(), hive_client::Error> {
    /// // Wait up to a minute for Postgres to come up, then give the last error back.
    /// let retry = ConnectRetry::default().give_up_after(Duration::from_secs(60));
    /// let client = Client::connect_with_retry("postgres://hive@db:5432/hive", &retry).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with_retry(url: &str, retry: &ConnectRetry) -> Result<Client> {
        retry
            .connect_with(url, &ConnectOptions::default(), OpsConfig::default())
            .await
    }

    /// `HIVE_DATABASE_URL`, else `sqlite:hive.db` (created and migrated on first use). A
    /// value that is not UTF-8 is refused ([`hive_store::Error::Misconfigured`]), not
    /// taken for unset: the process would work on another database than the one given.
    pub async fn from_env() -> Result<Client> {
        let url = database_url(std::env::var_os(DATABASE_URL_ENV))?;
        Self::connect(&url).await
    }

    /// A client over a store you opened yourself.
    pub fn from_store(store: Arc<dyn Store>, config: OpsConfig) -> Client {
        Client {
            ops: Ops::with_config(store, config),
        }
    }

    /// The operations, for code generic over them.
    pub fn ops(&self) -> &Ops<dyn Store> {
        &self.ops
    }

    /// Ends the connections (and this client's clones' too: they share them), waiting a
    /// few seconds at most; calls made after it fail. Call it before the process exits: on
    /// SQLite the last connection's close folds the write-ahead log into the database file
    /// and removes it ([`Store::close`]).
    pub async fn close(&self) {
        self.ops.store().close().await;
    }
}

/// How [`Client::connect_with_retry`] waits for a database that cannot be reached: the
/// first retry after `first_delay`, each next wait doubled up to `max_delay` (never under
/// [`ConnectRetry::SHORTEST`]), until it connects or `give_up_after` has passed since the
/// first attempt.
///
/// The default (100 ms doubling to 5 s, never giving up) suits a worker process: started
/// before its database, or during an outage, it starts working once the server is back,
/// just as a running worker rides out an outage by retrying its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRetry {
    /// The wait after the first failed attempt.
    pub first_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// Stop retrying, returning the last error, once this much time has passed since the
    /// first attempt; `None` retries until the database answers.
    pub give_up_after: Option<Duration>,
}

impl Default for ConnectRetry {
    fn default() -> Self {
        ConnectRetry {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            give_up_after: None,
        }
    }
}

impl ConnectRetry {
    /// The shortest wait between two attempts, whatever the delays say.
    pub const SHORTEST: Duration = Duration::from_millis(10);

    /// The waits between attempts, for ever: a zero first delay would double to zero, and
    /// retry without pause.
    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let most = self.max_delay.max(self.first_delay).max(Self::SHORTEST);
        std::iter::successors(Some(self.first_delay.max(Self::SHORTEST)), move |d| {
            Some(d.saturating_mul(2).min(most))
        })
    }

    /// This policy, giving up once `limit` has passed since the first attempt.
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = Some(limit);
        self
    }

    /// [`Client::connect_with`] under this policy.
    pub async fn connect_with(
        &self,
        url: &str,
        options: &ConnectOptions,
        config: OpsConfig,
    ) -> Result<Client> {
        let started = tokio::time::Instant::now();
        let mut delays = self.delays();
        let mut attempt: u32 = 1;
        loop {
            let error = match Client::connect_with(url, options, config.clone()).await {
                Ok(client) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "hive: connected to the database");
                    }
                    return Ok(client);
                }
                Err(e) if is_unreachable(&e) => e,
                Err(e) => return Err(e),
            };
            let delay = delays.next().unwrap_or(self.max_delay);
            let out_of_time = self
                .give_up_after
                .is_some_and(|limit| started.elapsed().saturating_add(delay) > limit);
            if out_of_time {
                tracing::warn!(attempt, error = %error, "hive: cannot connect to the database; giving up");
                return Err(error);
            }
            // The error names `host:port` and the driver's reason, never the password.
            tracing::warn!(attempt, error = %error, retry_in = ?delay, "hive: cannot connect to the database; retrying");
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

/// Whether connecting failed because the server could not be reached (worth retrying),
/// rather than because of what was asked of it.
fn is_unreachable(e: &crate::Error) -> bool {
    matches!(
        e,
        crate::Error::Ops(hive_ops::Error::Store(
            hive_store::Error::Unavailable { .. }
        ))
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ConnectRetry;

    /// Delays at the edge of what a `Duration` holds give up or wait; they never overflow.
    #[tokio::test]
    async fn huge_delays_give_up_instead_of_overflowing() {
        let retry = ConnectRetry {
            first_delay: Duration::MAX,
            max_delay: Duration::MAX,
            give_up_after: Some(Duration::from_secs(60)),
        };
        let e = retry
            .connect_with(
                "postgres://root@127.0.0.1:1/none",
                &Default::default(),
                Default::default(),
            )
            .await
            .expect_err("nothing listens on port 1");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }

    /// Zero delays still pause between attempts, doubling from the shortest wait.
    #[test]
    fn zero_delays_still_pause_between_attempts() {
        let ms = Duration::from_millis;
        let zero = ConnectRetry {
            first_delay: Duration::ZERO,
            max_delay: ms(50),
            give_up_after: None,
        };
        let waits: Vec<Duration> = zero.delays().take(5).collect();
        assert_eq!(waits, [ms(10), ms(20), ms(40), ms(50), ms(50)]);
        let flat = ConnectRetry {
            max_delay: Duration::ZERO,
            ..zero
        };
        assert!(flat.delays().take(3).all(|d| d == ConnectRetry::SHORTEST));
        let default: Vec<Duration> = ConnectRetry::default().delays().take(2).collect();
        assert_eq!(default, [ms(100), ms(200)], "the documented policy");
    }
}

/// The database URL `HIVE_DATABASE_URL` gives (`value`), else the default.
fn database_url(value: Option<std::ffi::OsString>) -> Result<String> {
    match value.map(std::ffi::OsString::into_string) {
        None => Ok(DEFAULT_DATABASE_URL.to_owned()),
        Some(Ok(url)) => Ok(url),
        Some(Err(_)) => Err(hive_ops::Error::from(hive_store::Error::Misconfigured {
            target: DATABASE_URL_ENV.to_owned(),
            reason: "the value is not valid UTF-8".to_owned(),
        })
        .into()),
    }
}

#[cfg(all(test, unix))]
mod env_tests {
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_database_url_that_is_not_utf8_is_refused_not_taken_for_unset() {
        assert_eq!(
            super::database_url(None).unwrap(),
            super::DEFAULT_DATABASE_URL
        );
        assert_eq!(
            super::database_url(Some("postgres://db/hive".into())).unwrap(),
            "postgres://db/hive"
        );
        let bad = std::ffi::OsString::from_vec(b"sqlite:/data/\xff.db".to_vec());
        let err = super::database_url(Some(bad)).unwrap_err().to_string();
        assert!(err.contains("HIVE_DATABASE_URL"), "{err}");
    }
}
