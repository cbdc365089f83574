//! The SQLite and Postgres migrations declare the same tables with the same columns, so a
//! column added to one backend cannot be forgotten in the other (Postgres adds the plan
//! tallies only it needs).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hive_store::testing::{POSTGRES_URL_ENV, report_skip};

type Schema = BTreeMap<String, Vec<String>>;

async fn sqlite_schema() -> Schema {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hive.db").display());
    hive_store::connect(&url).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    group(rows)
}

fn group(rows: Vec<(String, String)>) -> Schema {
    let mut schema = Schema::new();
    for (table, column) in rows {
        schema.entry(table).or_default().push(column);
    }
    schema
}

#[tokio::test]
async fn sqlite_and_postgres_declare_the_same_tables_and_columns() {
    let sqlite = sqlite_schema().await;
    assert!(sqlite.contains_key("tasks") && sqlite.contains_key(hive_store::MIGRATIONS_TABLE));
    let Some(ts) = hive_store::testing::postgres().await else {
        return report_skip("schema::sqlite_and_postgres_declare_the_same_tables_and_columns");
    };
    let url = ts.url.clone().unwrap();
    ts.run(|_| async move {
        let server = std::env::var(POSTGRES_URL_ENV).unwrap();
        let schema_name = url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "options")
            .map(|(_, v)| v.trim_start_matches("-c search_path=").to_owned())
            .unwrap();
        let pool = sqlx::PgPool::connect(&server).await.unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 ORDER BY 1, 2",
        )
        .bind(&schema_name)
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut postgres = group(rows);
        // Postgres counts a plan's finished subtasks in per-connection shards, so that
        // workers finishing one plan's subtasks do not queue on its row; SQLite has one
        // writer at a time and keeps the counts in the plan's row alone. For the same
        // reason a finish that finds a dependent locked credits it instead of waiting.
        // And many workers share one Postgres, so the chores one of them does for all are
        // claimed in a table of their own.
        for only_postgres in [
            "plan_tallies",
            "plans_counted",
            "dependency_credits",
            "chores",
        ] {
            assert!(postgres.remove(only_postgres).is_some(), "{only_postgres}");
        }
        // And a running task a spawn made a dependency of is marked for its finish, whose
        // one statement could otherwise miss the new dependent: SQLite's finish and spawn
        // never overlap.
        let tasks = postgres.get_mut("tasks").unwrap();
        let before = tasks.len();
        tasks.retain(|c| c != "late_dependents");
        assert_eq!(tasks.len(), before - 1, "tasks.late_dependents");
        assert_eq!(postgres, sqlite);
    })
    .await;
}
