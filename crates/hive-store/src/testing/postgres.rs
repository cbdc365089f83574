//! Fresh Postgres stores for tests: each in a schema of its own, dropped afterwards.

use std::sync::Arc;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

use super::TestStore;
use crate::{ConnectOptions, DatabaseUrl, PostgresStore};

/// The server URL tests run against; `None` when the variable is unset or empty.
fn server_url() -> Option<String> {
    std::env::var(super::POSTGRES_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// `url` with every connection's `search_path` set to `schema` (a libpq `options`
/// parameter, which sqlx honours), so the store, its migrations and any second store opened
/// on the same URL all live in that schema.
fn url_with_schema(url: &str, schema: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.query_pairs_mut()
                .append_pair("options", &format!("-c search_path={schema}"));
            u.into()
        }
        // Not a URL we can extend; connecting to it will fail with a clear message anyway.
        Err(_) => url.to_owned(),
    }
}

async fn admin(url: &str) -> PgConnection {
    let target = DatabaseUrl::new(url).target();
    match PgConnection::connect(url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "{} is set but the Postgres server at {target} cannot be reached: {}",
            super::POSTGRES_URL_ENV,
            // The driver's message names the failure, not the URL; never print the password.
            e.to_string()
                .replace(url, &DatabaseUrl::new(url).redacted()),
        ),
    }
}

/// A new schema `hive_test_<uuid>` holding a migrated store; `None` when
/// `HIVE_TEST_POSTGRES_URL` is unset. Panics when it is set but unusable.
pub(super) async fn fresh() -> Option<TestStore> {
    let url = server_url()?;
    let schema = format!("hive_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin(&url).await;
    conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create test schema {schema} at {}: {e}",
                DatabaseUrl::new(&url).target()
            )
        });
    let _ = conn.close().await;
    let store_url = url_with_schema(&url, &schema);
    let store = PostgresStore::connect(&DatabaseUrl::new(&store_url), &ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot open a Postgres store in schema {schema}: {e}"));
    let cleanup = async move {
        let mut conn = admin(&url).await;
        if let Err(e) = conn
            .execute(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .await
        {
            eprintln!("could not drop test schema {schema}: {e}");
        }
        let _ = conn.close().await;
    };
    Some(
        TestStore::new(Arc::new(store))
            .with_url(store_url)
            .with_cleanup(cleanup),
    )
}
