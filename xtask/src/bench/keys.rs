//! The drains under concurrency keys: behind a busy key's backlog (`drain-keyed`), and
//! spread over many keys (`drain-keys`).

use anyhow::{Result, bail};
use hive_client::NewTask;

use super::db::Backend;
use super::hive::{self, Until};
use super::report::BenchResult;
use super::{Bench, DRAIN_CONCURRENCY, DRAIN_WORKERS};

/// `drain-keyed`: the serial key whose backlog waits ahead of the drain.
const BUSY_KEY: &str = "busy-tenant";
/// `drain-keys`: how many keys the drain's tasks are spread over.
const KEYS: u64 = 2_000;

impl Bench {
    /// The drain of `n` tasks queued behind a busy serial key's backlog: its first task is
    /// claimed and held, so the rest wait ahead of the drain's tasks in queue order.
    pub(super) async fn drain_keyed(&mut self, b: Backend, n: u64) -> Result<()> {
        let keyed = self.sizes.keyed_backlog;
        let (db, client) = self.fresh(b).await?;
        let pb = hive::bar(keyed + n, format!("drain-keyed {} (loading)", b.name()));
        let mut next = 0;
        while next < keyed {
            let k = (keyed - next).min(hive::BATCH as u64);
            let tasks = (next..next + k)
                .map(|i| NewTask {
                    priority: 5,
                    concurrency_key: Some(BUSY_KEY.into()),
                    ..NewTask::new(format!("keyed {i}"), "keyed")
                })
                .collect();
            client.create_tasks(tasks).await?;
            next += k;
            pb.inc(k);
        }
        client.register_worker("holder", "bench", vec![]).await?;
        let holder = hive_client::WorkerId::parse("holder")?;
        let held = client
            .claim_tasks(
                &holder,
                &["keyed".to_owned()],
                1,
                std::time::Duration::from_secs(3600),
            )
            .await?;
        if held.len() != 1 {
            bail!(
                "drain-keyed: the holder claimed {} tasks, expected 1",
                held.len()
            );
        }
        hive::load(&client, n, &pb).await?;
        if b == Backend::Postgres
            && let Some(pool) = db.raw_pool(1).await?
        {
            // Statistics, as autovacuum keeps them by the time such a backlog exists: a
            // plan made without them may walk the backlog to find its keys.
            pool.execute("ANALYZE tasks").await?;
            pool.close().await;
        }
        pb.set_position(0);
        pb.set_message(format!("drain-keyed {}", b.name()));
        let d = hive::drain(
            &client,
            DRAIN_WORKERS,
            DRAIN_CONCURRENCY,
            Until::Handled(n),
            &pb,
        )
        .await?;
        pb.finish_and_clear();
        drop(client);
        db.cleanup().await?;
        self.record(BenchResult::throughput("drain-keyed", b.name(), n, d.secs));
        Ok(())
    }

    /// The drain of `n` tasks spread over [`KEYS`] serial keys, as per-account keys are.
    pub(super) async fn drain_keys(&mut self, b: Backend, n: u64) -> Result<()> {
        let (db, client) = self.fresh(b).await?;
        let pb = hive::bar(n, format!("drain-keys {} (loading)", b.name()));
        let mut next = 0;
        while next < n {
            let k = (n - next).min(hive::BATCH as u64);
            let tasks = (next..next + k)
                .map(|i| NewTask {
                    concurrency_key: Some(format!("account-{}", i % KEYS)),
                    ..NewTask::new(format!("keyed {i}"), "bench")
                })
                .collect();
            client.create_tasks(tasks).await?;
            next += k;
            pb.inc(k);
        }
        pb.set_position(0);
        pb.set_message(format!("drain-keys {}", b.name()));
        let d = hive::drain(&client, DRAIN_WORKERS, DRAIN_CONCURRENCY, Until::Idle, &pb).await?;
        pb.finish_and_clear();
        if d.handled != n {
            bail!("drain-keys: handled {} tasks, expected {n}", d.handled);
        }
        drop(client);
        db.cleanup().await?;
        self.record(BenchResult::throughput("drain-keys", b.name(), n, d.secs));
        Ok(())
    }
}
