//! Flow rules as stored: listed, put, deleted and edited in place under the scope's lock.

use hive_models::{FlowRule, Scope};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::{lock, rule};
use crate::postgres::PostgresStore;
use crate::postgres::rows;
use crate::postgres::sql::end;
use crate::sql::R;

impl PostgresStore {
    pub(in crate::postgres) async fn list_flow_rules_once(&self) -> R<Vec<FlowRule>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rule_columns!(),
            " FROM flow_rules ORDER BY kind = 'key', name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rule).collect()
    }

    pub(in crate::postgres) async fn put_flow_rule_once(&self, r: &FlowRule) -> R<()> {
        let mut conn = self.pool.acquire().await?;
        put(&mut conn, r).await
    }

    pub(in crate::postgres) async fn delete_flow_rule_once(&self, scope: &Scope) -> R<bool> {
        let mut tx = self.pool.begin().await?;
        let out = delete(&mut tx, scope).await;
        end(tx, out).await
    }

    /// Applies `edit` under the scope's advisory lock, so two edits of one scope, rule or
    /// no rule yet, take turns.
    pub(in crate::postgres) async fn edit_flow_rule_once(
        &self,
        scope: &Scope,
        edit: hive_models::FlowEdit,
    ) -> R<(Option<FlowRule>, bool)> {
        let mut tx = self.pool.begin().await?;
        let out: R<(Option<FlowRule>, bool)> = async {
            lock(&mut tx, std::slice::from_ref(scope)).await?;
            let stored = sqlx::query(concat!(
                "SELECT ",
                rule_columns!(),
                ", statement_timestamp() AS now FROM flow_rules WHERE kind = $1 AND name = $2 \
                 UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
                     statement_timestamp() \
                 ORDER BY kind NULLS LAST LIMIT 1"
            ))
            .bind(scope.kind())
            .bind(scope.name())
            .fetch_one(&mut *tx)
            .await?;
            let now = rows::get(&stored, "now", "flow_rules")?;
            let stored = match stored.try_get::<Option<String>, _>("kind")? {
                Some(_) => Some(rule(&stored)?),
                None => None,
            };
            let (rule, changed) = edit.apply(scope, stored, now);
            match &rule {
                Some(r) => put(&mut tx, r).await?,
                None => {
                    delete(&mut tx, scope).await?;
                }
            }
            Ok((rule, changed))
        }
        .await;
        end(tx, out).await
    }
}

/// Stores a rule, replacing the scope's, on the caller's connection.
async fn put(conn: &mut PgConnection, r: &FlowRule) -> R<()> {
    sqlx::query(
        "INSERT INTO flow_rules (kind, name, max_running, rate_max, rate_per_us, paused, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (kind, name) DO UPDATE SET max_running = excluded.max_running, \
         rate_max = excluded.rate_max, rate_per_us = excluded.rate_per_us, \
         paused = excluded.paused, updated_at = excluded.updated_at",
    )
    .bind(r.scope.kind())
    .bind(r.scope.name())
    .bind(r.max_running.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
    .bind(r.rate.map(|x| i32::try_from(x.max).unwrap_or(i32::MAX)))
    .bind(r.rate.map(|x| crate::postgres::sql::micros(x.per)))
    .bind(r.paused)
    .bind(r.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes a scope's rule and its recorded starts, in the caller's transaction.
async fn delete(conn: &mut PgConnection, scope: &Scope) -> R<bool> {
    let gone = sqlx::query("DELETE FROM flow_rules WHERE kind = $1 AND name = $2")
        .bind(scope.kind())
        .bind(scope.name())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM flow_starts WHERE kind = $1 AND name = $2")
        .bind(scope.kind())
        .bind(scope.name())
        .execute(&mut *conn)
        .await?;
    Ok(gone > 0)
}
