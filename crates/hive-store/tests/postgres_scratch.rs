//! Scratch throughput check of the Postgres backend against a raw-SQL loop (not kept).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hive_store::models::{NewTask, WorkerId};
use hive_store::{
    ClaimParams, ConnectOptions, DatabaseUrl, Outcome, PostgresStore, RunOutcome, Store,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_vs_raw_sql() {
    let Some(ts) = hive_store::testing::postgres().await else {
        return;
    };
    let url = format!("{}{}", ts.url.clone().unwrap(), std::env::var("BENCH_EXTRA").unwrap_or_default());
    const N: usize = 5_000;
    let store = PostgresStore::connect(&DatabaseUrl::new(url.clone()), &ConnectOptions::default())
        .await
        .unwrap();
    let pool = store.pool().clone();
    ts.run(|_| async move {
        let t = Instant::now();
        for _ in 0..1000 {
            let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
        }
        eprintln!("round trip: {:?}", t.elapsed() / 1000);
        let t = Instant::now();
        for _ in 0..200 {
            let mut tx = pool.begin().await.unwrap();
            let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        eprintln!("begin+select+commit: {:?}", t.elapsed() / 200);
        // Raw loop: claim 32 with SKIP LOCKED, mark them completed.
        let batch: Vec<NewTask> = (0..N).map(|i| NewTask::new(format!("r{i}"), "raw")).collect();
        store.insert_tasks(batch).await.unwrap();
        let t = Instant::now();
        loop {
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
                "UPDATE tasks SET status = 'in_progress', attempts = attempts + 1, updated_at = now() \
                 WHERE id IN (SELECT id FROM tasks WHERE status = 'queued' AND pending_deps = 0 \
                 AND task_type = 'raw' ORDER BY priority DESC, seq LIMIT 32 FOR UPDATE SKIP LOCKED) RETURNING id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            if ids.is_empty() {
                break;
            }
            sqlx::query("UPDATE tasks SET status = 'completed', updated_at = now() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&pool)
                .await
                .unwrap();
        }
        let raw = t.elapsed();

        let batch: Vec<NewTask> = (0..N).map(|i| NewTask::new(format!("s{i}"), "store")).collect();
        store.insert_tasks(batch).await.unwrap();
        let params = ClaimParams {
            worker_id: WorkerId::parse("w").unwrap(),
            task_types: vec!["store".into()],
            limit: 32,
            lease: Duration::from_secs(60),
        };
        let t = Instant::now();
        let (mut tc, mut tf) = (Duration::ZERO, Duration::ZERO);
        loop {
            let c0 = Instant::now();
            let claims = store.claim_tasks(&params).await.unwrap();
            tc += c0.elapsed();
            if claims.is_empty() {
                break;
            }
            let outcomes: Vec<RunOutcome> = claims
                .iter()
                .map(|c| RunOutcome { run_id: c.run.id, outcome: Outcome::Success { result: None }, output_log: None })
                .collect();
            let f0 = Instant::now();
            store.finish_runs(&outcomes).await.unwrap();
            tf += f0.elapsed();
        }
        let ours = t.elapsed();
        eprintln!("claims {tc:?}, finishes {tf:?}");
        eprintln!(
            "raw: {raw:?} ({:.0}/s); store: {ours:?} ({:.0}/s); ratio {:.2}",
            N as f64 / raw.as_secs_f64(),
            N as f64 / ours.as_secs_f64(),
            raw.as_secs_f64() / ours.as_secs_f64()
        );
    })
    .await;
}
