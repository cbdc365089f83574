//! What connecting does about Hive's tables: the policy a caller chooses, and the one rule
//! that decides, from what a backend found in the database, whether to migrate, to use the
//! database as it is, or to refuse it.
//!
//! Hive records its applied migrations in its own table, [`MIGRATIONS_TABLE`], so an app
//! that keeps its own sqlx migrations in the same database is never mistaken for Hive (or
//! the other way round). A database migrated before that table existed recorded Hive's
//! migrations in sqlx's default table; [`Found::legacy_is_hive`] lets a backend adopt it.

// Only the SQL backends inspect a schema; memory has none.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use crate::{Error, Result};

/// Hive's migration bookkeeping table.
pub const MIGRATIONS_TABLE: &str = "_hive_migrations";

/// sqlx's default bookkeeping table, where databases migrated by earlier Hive builds
/// recorded Hive's migrations.
pub(crate) const LEGACY_MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// What connecting may do to the database's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaPolicy {
    /// Create or upgrade Hive's tables whatever else the database holds (an SQLite file is
    /// created if missing). The SDK's default, and `hive migrate`.
    #[default]
    Migrate,
    /// Create Hive's tables only in an empty database, or use a database whose Hive schema
    /// is up to date; refuse one that holds other tables and no Hive schema, and one whose
    /// Hive schema is out of date (upgrading a shared database is `hive migrate`'s, not a
    /// side effect of an operator's newer `hive` creating a task). An SQLite file is created
    /// if missing. For commands that create work.
    MigrateIfOwned,
    /// Create and change nothing: the database must exist and hold Hive's schema, up to
    /// date. An SQLite file this user cannot write is opened for reading only. For commands
    /// that read or change existing work.
    Existing,
}

/// What a backend found in the database before deciding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// Every table in the database (the connection's schema on Postgres), bookkeeping tables
    /// included.
    pub tables: Vec<String>,
    /// The versions recorded in [`MIGRATIONS_TABLE`]; `None` when it does not exist.
    pub applied: Option<Vec<i64>>,
}

/// What to do with the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run the migrations (which create or upgrade the schema).
    Migrate,
    /// The schema is there and current: use it as it is.
    Use,
}

impl Found {
    fn has(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }

    /// Whether sqlx's default table exists while Hive's does not: a database migrated by an
    /// earlier Hive build (its rows are checked to be Hive's before it is adopted).
    pub fn legacy_only(&self) -> bool {
        self.applied.is_none() && self.has(LEGACY_MIGRATIONS_TABLE)
    }

    /// Whether a legacy table's rows, `(version, checksum)`, are exactly a prefix of Hive's
    /// own migrations: then the table is Hive's and can be renamed to [`MIGRATIONS_TABLE`].
    pub fn legacy_is_hive(rows: &[(i64, Vec<u8>)], known: &[(i64, Vec<u8>)]) -> bool {
        !rows.is_empty() && rows.iter().all(|r| known.contains(r))
    }

    /// Tables that are neither Hive's nor bookkeeping, for the refusal message.
    fn foreign(&self, hive_tables: &[&str]) -> Vec<&str> {
        self.tables
            .iter()
            .map(String::as_str)
            .filter(|t| {
                !hive_tables.contains(t)
                    && *t != MIGRATIONS_TABLE
                    && *t != LEGACY_MIGRATIONS_TABLE
                    && !t.starts_with("sqlite_")
            })
            .collect()
    }
}

/// Decides what connecting does. `latest` is the newest migration this build knows;
/// `hive_tables` the tables Hive's schema creates; `target` names the database in errors.
pub(crate) fn decide(
    policy: SchemaPolicy,
    found: &Found,
    latest: i64,
    hive_tables: &[&str],
    target: &str,
) -> Result<Action> {
    let refuse = |reason: String| {
        Err(Error::Misconfigured {
            target: target.to_owned(),
            reason,
        })
    };
    let newest_applied = found.applied.as_ref().and_then(|v| v.iter().copied().max());
    if let Some(v) = newest_applied
        && v > latest
    {
        return refuse(format!(
            "its Hive schema is version {v}, newer than this build knows ({latest}); \
             upgrade hive"
        ));
    }
    match policy {
        SchemaPolicy::Migrate => Ok(Action::Migrate),
        SchemaPolicy::MigrateIfOwned => {
            let foreign = found.foreign(hive_tables);
            if found.applied.is_none() && !foreign.is_empty() {
                return refuse(format!(
                    "it holds tables that are not Hive's ({}) and no Hive schema; run \
                     `hive migrate` to add Hive's tables to it anyway, or use another database",
                    list(&foreign)
                ));
            }
            if let Some(v) = newest_applied
                && v < latest
            {
                return refuse(out_of_date(v, latest));
            }
            Ok(Action::Migrate)
        }
        SchemaPolicy::Existing => match newest_applied {
            None if found.foreign(hive_tables).is_empty() => refuse(
                "it holds no Hive schema; create it with `hive migrate` (or by creating a \
                 task or submitting a plan)"
                    .into(),
            ),
            None => refuse(format!(
                "it is not a Hive database: it holds other tables ({}) and no Hive schema",
                list(&found.foreign(hive_tables))
            )),
            Some(v) if v < latest => refuse(out_of_date(v, latest)),
            Some(_) => Ok(Action::Use),
        },
    }
}

fn out_of_date(v: i64, latest: i64) -> String {
    format!(
        "its Hive schema is out of date (version {v}, this build needs {latest}); run `hive \
         migrate` (workers of the older build refuse the upgraded schema: upgrade them with it)"
    )
}

/// The few reads and the one rename a SQL backend performs for [`resolve`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[async_trait::async_trait]
pub(crate) trait Catalog: Send {
    /// Every table of the database (the connection's schema on Postgres).
    async fn tables(&mut self) -> std::result::Result<Vec<String>, sqlx::Error>;
    /// The successful `(version, checksum)` rows of a migrations table, by version.
    async fn migrations(
        &mut self,
        table: &str,
    ) -> std::result::Result<Vec<(i64, Vec<u8>)>, sqlx::Error>;
    /// Renames a table.
    async fn rename(&mut self, from: &str, to: &str) -> std::result::Result<(), sqlx::Error>;
}

/// [`Catalog`] over any sqlx connection: the backend gives the query that lists its tables.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct SqlCatalog<'c, C> {
    pub conn: &'c mut C,
    /// One text column: every table of the database.
    pub tables_sql: &'static str,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[async_trait::async_trait]
impl<C, DB> Catalog for SqlCatalog<'_, C>
where
    C: Send,
    DB: sqlx::Database,
    for<'e> &'e mut C: sqlx::Executor<'e, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    (i64, Vec<u8>): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn tables(&mut self) -> std::result::Result<Vec<String>, sqlx::Error> {
        let rows: Vec<(String,)> = sqlx::query_as(self.tables_sql)
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    async fn migrations(
        &mut self,
        table: &str,
    ) -> std::result::Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
        let sql =
            format!("SELECT version, checksum FROM \"{table}\" WHERE success ORDER BY version");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *self.conn)
            .await
    }

    async fn rename(&mut self, from: &str, to: &str) -> std::result::Result<(), sqlx::Error> {
        let sql = format!("ALTER TABLE \"{from}\" RENAME TO \"{to}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *self.conn)
            .await
            .map(drop)
    }
}

/// Reads what the database holds (adopting an earlier build's migrations table when the
/// policy may write) and decides what connecting does. `map` turns driver errors into the
/// backend's portable ones.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) async fn resolve(
    catalog: &mut impl Catalog,
    policy: SchemaPolicy,
    migrator: &sqlx::migrate::Migrator,
    hive_tables: &[&str],
    target: &str,
    map: impl Fn(sqlx::Error) -> Error,
) -> Result<Action> {
    let mut found = read(catalog).await.map_err(&map)?;
    if found.legacy_only() {
        let rows = catalog
            .migrations(LEGACY_MIGRATIONS_TABLE)
            .await
            .map_err(&map)?;
        let known: Vec<(i64, Vec<u8>)> = migrator
            .iter()
            .map(|m| (m.version, m.checksum.to_vec()))
            .collect();
        if Found::legacy_is_hive(&rows, &known) {
            if policy == SchemaPolicy::Existing {
                // Reading needs no write: the next migration adopts the table.
                found.applied = Some(rows.iter().map(|(v, _)| *v).collect());
            } else {
                let renamed = catalog
                    .rename(LEGACY_MIGRATIONS_TABLE, MIGRATIONS_TABLE)
                    .await;
                found = read(catalog).await.map_err(&map)?;
                // Another process starting at the same time renamed it first: adopted all
                // the same. Only a rename that left no table of ours is an error.
                if let Err(e) = renamed
                    && found.applied.is_none()
                {
                    return Err(map(e));
                }
            }
        }
    }
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    decide(policy, &found, latest, hive_tables, target)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn read(catalog: &mut impl Catalog) -> std::result::Result<Found, sqlx::Error> {
    let tables = catalog.tables().await?;
    let applied = if tables.iter().any(|t| t == MIGRATIONS_TABLE) {
        let rows = catalog.migrations(MIGRATIONS_TABLE).await?;
        Some(rows.into_iter().map(|(v, _)| v).collect())
    } else {
        None
    };
    Ok(Found { tables, applied })
}

/// At most five names, then a count.
fn list(names: &[&str]) -> String {
    let mut out = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        out.push_str(&format!(" and {} more", names.len() - 5));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database an earlier build migrated, which another process adopts (renames its
    /// migrations table) between this one's read and its rename.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    struct AdoptedMeanwhile {
        renamed: bool,
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[async_trait::async_trait]
    impl Catalog for AdoptedMeanwhile {
        async fn tables(&mut self) -> std::result::Result<Vec<String>, sqlx::Error> {
            let table = match self.renamed {
                true => MIGRATIONS_TABLE,
                false => LEGACY_MIGRATIONS_TABLE,
            };
            Ok(vec!["tasks".into(), "plans".into(), table.into()])
        }

        async fn migrations(
            &mut self,
            _table: &str,
        ) -> std::result::Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
            Ok(Vec::new())
        }

        async fn rename(&mut self, from: &str, _to: &str) -> std::result::Result<(), sqlx::Error> {
            self.renamed = true;
            Err(sqlx::Error::Protocol(format!(
                "relation \"{from}\" does not exist"
            )))
        }
    }

    /// Several processes upgrading one database at once: the one whose rename finds the
    /// table gone (another renamed it) carries on with the adopted table.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[tokio::test]
    async fn a_migrations_table_adopted_meanwhile_is_taken_as_adopted() {
        let mut catalog = AdoptedMeanwhile { renamed: false };
        let migrator = sqlx::migrate::Migrator::DEFAULT;
        let action = resolve(
            &mut catalog,
            SchemaPolicy::Migrate,
            &migrator,
            HIVE,
            "db",
            |e| Error::Database(e.to_string()),
        )
        .await;
        assert_eq!(action.ok(), Some(Action::Migrate));
    }

    const HIVE: &[&str] = &["tasks", "plans"];

    fn found(tables: &[&str], applied: Option<Vec<i64>>) -> Found {
        Found {
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            applied,
        }
    }

    fn reason(r: Result<Action>) -> String {
        match r {
            Err(Error::Misconfigured { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn migrate_always_migrates() {
        let f = found(&["customers"], None);
        assert_eq!(
            decide(SchemaPolicy::Migrate, &f, 1, HIVE, "db").ok(),
            Some(Action::Migrate)
        );
    }

    #[test]
    fn migrate_if_owned_refuses_a_foreign_database() {
        let empty = found(&[], None);
        let ours = found(&["tasks", "plans", MIGRATIONS_TABLE], Some(vec![1]));
        let foreign = found(&["customers", LEGACY_MIGRATIONS_TABLE], None);
        let p = SchemaPolicy::MigrateIfOwned;
        assert_eq!(decide(p, &empty, 2, HIVE, "db").ok(), Some(Action::Migrate));
        assert_eq!(decide(p, &ours, 1, HIVE, "db").ok(), Some(Action::Migrate));
        let r = reason(decide(p, &foreign, 2, HIVE, "db"));
        assert!(r.contains("customers") && r.contains("hive migrate"), "{r}");
        // A Hive schema of an older build is not upgraded on the side: `hive migrate` does.
        let r = reason(decide(p, &ours, 2, HIVE, "db"));
        assert!(
            r.contains("out of date") && r.contains("hive migrate"),
            "{r}"
        );
    }

    #[test]
    fn existing_needs_a_current_hive_schema() {
        let p = SchemaPolicy::Existing;
        let r = reason(decide(p, &found(&[], None), 2, HIVE, "db"));
        assert!(r.contains("no Hive schema"), "{r}");
        let r = reason(decide(p, &found(&["customers"], None), 2, HIVE, "db"));
        assert!(
            r.contains("not a Hive database") && r.contains("customers"),
            "{r}"
        );
        let r = reason(decide(p, &found(&["tasks"], Some(vec![1])), 2, HIVE, "db"));
        assert!(r.contains("out of date"), "{r}");
        assert_eq!(
            decide(p, &found(&["tasks"], Some(vec![1, 2])), 2, HIVE, "db").ok(),
            Some(Action::Use)
        );
        let r = reason(decide(p, &found(&["tasks"], Some(vec![3])), 2, HIVE, "db"));
        assert!(r.contains("newer"), "{r}");
    }

    #[test]
    fn legacy_table_is_adopted_only_with_hive_rows() {
        let known = vec![(1, vec![1u8, 2]), (2, vec![3u8])];
        assert!(Found::legacy_is_hive(&[(1, vec![1, 2])], &known));
        assert!(!Found::legacy_is_hive(&[(1, vec![9])], &known));
        assert!(!Found::legacy_is_hive(&[], &known));
    }
}
