//! Raw-SQL baselines: the minimal statements a hand-written queue would run against a
//! one-table schema, so Hive's numbers have something honest to be compared with.
//!
//! The table is `raw_tasks(id, priority, status, payload)` with a partial index on the
//! queued rows in claim order, which any hand-written queue would add.

use std::time::Instant;

use anyhow::{Result, bail};
use sqlx::{Executor, Postgres, QueryBuilder, Sqlite};
use tokio::task::JoinSet;

use super::db::RawPool;

/// Connections (and claiming loops) of the claim baselines.
pub const CONNECTIONS: u32 = 8;
/// Rows a batch claim takes and completes at once.
pub const CLAIM_BATCH: i64 = 100;

const PAYLOAD: &str = "{}";

pub async fn create_table(pool: &RawPool) -> Result<()> {
    match pool {
        RawPool::Sqlite(_) => {
            pool.execute(
                "CREATE TABLE raw_tasks (id INTEGER PRIMARY KEY, priority INTEGER NOT NULL, \
                 status TEXT NOT NULL, payload TEXT NOT NULL)",
            )
            .await?;
        }
        RawPool::Postgres(_) => {
            pool.execute(
                "CREATE TABLE raw_tasks (id bigserial PRIMARY KEY, priority integer NOT NULL, \
                 status text NOT NULL, payload text NOT NULL)",
            )
            .await?;
        }
    }
    pool.execute(
        "CREATE INDEX raw_tasks_ready ON raw_tasks (priority DESC, id) WHERE status = 'queued'",
    )
    .await?;
    Ok(())
}

/// `n` single-row INSERTs, one after another, each its own (autocommit) transaction.
pub async fn insert_single(pool: &RawPool, n: u64) -> Result<f64> {
    let start = Instant::now();
    match pool {
        RawPool::Sqlite(p) => {
            for _ in 0..n {
                sqlx::query(
                    "INSERT INTO raw_tasks (priority, status, payload) VALUES (?, 'queued', ?)",
                )
                .bind(1_i32)
                .bind(PAYLOAD)
                .execute(p)
                .await?;
            }
        }
        RawPool::Postgres(p) => {
            for _ in 0..n {
                sqlx::query(
                    "INSERT INTO raw_tasks (priority, status, payload) VALUES ($1, 'queued', $2)",
                )
                .bind(1_i32)
                .bind(PAYLOAD)
                .execute(p)
                .await?;
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `n` rows as single-row INSERTs grouped `per_tx` to a transaction: what a naive batch
/// enqueue does.
pub async fn insert_in_transactions(pool: &RawPool, n: u64, per_tx: u64) -> Result<f64> {
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(per_tx);
        match pool {
            RawPool::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for _ in 0..k {
                    sqlx::query(
                        "INSERT INTO raw_tasks (priority, status, payload) VALUES (?, 'queued', ?)",
                    )
                    .bind(1_i32)
                    .bind(PAYLOAD)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            RawPool::Postgres(p) => {
                let mut tx = p.begin().await?;
                for _ in 0..k {
                    sqlx::query(
                        "INSERT INTO raw_tasks (priority, status, payload) VALUES ($1, 'queued', $2)",
                    )
                    .bind(1_i32)
                    .bind(PAYLOAD)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        left -= k;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `n` rows as multi-row INSERT statements of `per_stmt` rows each: the fastest plain way.
pub async fn insert_multi_row(pool: &RawPool, n: u64, per_stmt: u64) -> Result<f64> {
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(per_stmt);
        match pool {
            RawPool::Sqlite(p) => {
                let mut qb: QueryBuilder<Sqlite> =
                    QueryBuilder::new("INSERT INTO raw_tasks (priority, status, payload) ");
                qb.push_values(0..k, |mut b, _| {
                    b.push_bind(1_i32).push_bind("queued").push_bind(PAYLOAD);
                });
                qb.build().execute(p).await?;
            }
            RawPool::Postgres(p) => {
                let mut qb: QueryBuilder<Postgres> =
                    QueryBuilder::new("INSERT INTO raw_tasks (priority, status, payload) ");
                qb.push_values(0..k, |mut b, _| {
                    b.push_bind(1_i32).push_bind("queued").push_bind(PAYLOAD);
                });
                qb.build().execute(p).await?;
            }
        }
        left -= k;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Claims one row at a time (in its own transaction) and completes it with a second
/// statement, on [`CONNECTIONS`] connections at once, until the table has nothing queued.
/// Returns the seconds taken and the rows completed.
pub async fn drain_one_by_one(pool: &RawPool) -> Result<(f64, u64)> {
    drain(pool, 1).await
}

/// As [`drain_one_by_one`], claiming [`CLAIM_BATCH`] rows per transaction and completing
/// them in one statement.
pub async fn drain_batched(pool: &RawPool) -> Result<(f64, u64)> {
    drain(pool, CLAIM_BATCH).await
}

async fn drain(pool: &RawPool, batch: i64) -> Result<(f64, u64)> {
    let start = Instant::now();
    let mut loops = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let pool = pool.clone();
        loops.spawn(async move {
            match pool {
                RawPool::Sqlite(p) => sqlite_loop(&p, batch).await,
                RawPool::Postgres(p) => postgres_loop(&p, batch).await,
            }
        });
    }
    let mut done = 0;
    while let Some(joined) = loops.join_next().await {
        done += joined??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((secs, done))
}

async fn sqlite_loop(pool: &sqlx::SqlitePool, batch: i64) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut done = 0;
    loop {
        // BEGIN IMMEDIATE takes the write lock up front, so two claimers never both read
        // the same row and then collide upgrading to a write.
        conn.execute("BEGIN IMMEDIATE").await?;
        let claimed: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
            "UPDATE raw_tasks SET status = 'running' WHERE id IN \
             (SELECT id FROM raw_tasks WHERE status = 'queued' \
              ORDER BY priority DESC, id LIMIT ?) RETURNING id",
        )
        .bind(batch)
        .fetch_all(&mut *conn)
        .await;
        let ids = match claimed {
            Ok(ids) => {
                conn.execute("COMMIT").await?;
                ids
            }
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                return Err(e.into());
            }
        };
        if ids.is_empty() {
            return Ok(done);
        }
        if let [id] = ids[..] {
            sqlx::query("UPDATE raw_tasks SET status = 'done' WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        } else {
            let list = serde_json::to_string(&ids)?;
            sqlx::query(
                "UPDATE raw_tasks SET status = 'done' WHERE id IN (SELECT value FROM json_each(?))",
            )
            .bind(list)
            .execute(&mut *conn)
            .await?;
        }
        done += ids.len() as u64;
    }
}

async fn postgres_loop(pool: &sqlx::PgPool, batch: i64) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut done = 0;
    loop {
        // One autocommit statement is the claim transaction; SKIP LOCKED lets the eight
        // claimers pass each other instead of queueing on the same first row.
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE raw_tasks SET status = 'running' WHERE id IN \
             (SELECT id FROM raw_tasks WHERE status = 'queued' \
              ORDER BY priority DESC, id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
        )
        .bind(batch)
        .fetch_all(&mut *conn)
        .await?;
        if ids.is_empty() {
            return Ok(done);
        }
        if let [id] = ids[..] {
            sqlx::query("UPDATE raw_tasks SET status = 'done' WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query("UPDATE raw_tasks SET status = 'done' WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *conn)
                .await?;
        }
        done += ids.len() as u64;
    }
}

/// Checks a drain finished everything it was given.
pub fn expect_drained(what: &str, done: u64, n: u64) -> Result<()> {
    if done != n {
        bail!("{what}: completed {done} rows, expected {n}");
    }
    Ok(())
}
