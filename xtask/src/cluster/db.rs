//! One measurement's database: created fresh on the cluster's server, its schema made by
//! `hive migrate` run on the database host, loaded and read through the harness's socket:
//! progress, the drain's window, the server's commit count, pickup latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hive_client::{Client, ConnectOptions, NewTask, OpsConfig};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::time::Instant;

use super::Cluster;
use super::fleet::Fleet;
use super::pg::PORT;
use super::sys;

/// Tasks per `create_tasks` call: one transaction each.
const BATCH: u64 = 1_000;
/// How often waits re-read progress.
const POLL: Duration = Duration::from_millis(200);

/// Tasks per outcome, as the harness polls them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: i64,
    pub completed: i64,
    /// Failed or cancelled: every task here should complete.
    pub ended_badly: i64,
}

/// Sessions on one database, from `pg_stat_activity`.
#[derive(Debug, Clone, Copy)]
pub struct Sessions {
    pub workers: i64,
    pub idle_in_transaction: i64,
}

/// First run start and last success, in seconds since the epoch (the server's clock).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub first_start: f64,
    pub last_end: f64,
}

impl Window {
    pub fn secs(&self) -> f64 {
        (self.last_end - self.first_start).max(0.0)
    }
}

#[derive(Debug)]
pub struct LoadDb {
    pub name: String,
    /// The workers' URL: the database host's address and `port` (the server's or a relay's).
    pub worker_url: String,
    pool: PgPool,
    /// On the `postgres` database, so reading the server's counters adds no commit to the
    /// one measured.
    admin: PgPool,
    client: Client,
    /// Transactions this harness ran on the database, to tell them from the workers'.
    own: AtomicU64,
}

impl LoadDb {
    /// A fresh database `name` whose workers connect through `port` on the database host.
    pub async fn create(c: &Cluster, name: &str, port: u16) -> Result<LoadDb> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&c.pg.socket_url("postgres"))
            .await
            .context("connecting to the cluster's server")?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        // The schema comes from the binary under test, over the test network.
        sys::run(c.net.db.command(&c.hive).args([
            "--database-url",
            &c.pg.tcp_url(name, PORT),
            "migrate",
        ]))
        .await?;
        let socket = c.pg.socket_url(name);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&socket)
            .await
            .with_context(|| format!("connecting to {name}"))?;
        let options = ConnectOptions {
            schema: hive_client::store::SchemaPolicy::Existing,
            ..Default::default()
        };
        // One connection: after a server restart there is one dead connection to replace
        // (see `LoadDb::reconnect`), not a pool of them failing one call each.
        let client = Client::connect_with(
            &format!("{socket}&max_connections=1"),
            &options,
            OpsConfig::default(),
        )
        .await?;
        Ok(LoadDb {
            name: name.to_owned(),
            worker_url: c.pg.tcp_url(name, port),
            pool,
            admin,
            client,
            own: AtomicU64::new(0),
        })
    }

    fn counted(&self, transactions: u64) {
        self.own.fetch_add(transactions, Ordering::Relaxed);
    }

    /// Transactions this harness committed on the database so far.
    pub fn own_commits(&self) -> u64 {
        self.own.load(Ordering::Relaxed)
    }

    /// Queues `n` `sleep` tasks of `ms` milliseconds, [`BATCH`] per transaction.
    pub async fn enqueue(&self, n: u64, ms: u64) -> Result<()> {
        let mut left = n;
        while left > 0 {
            let now = left.min(BATCH);
            let tasks = (0..now).map(|_| sleep_task(ms)).collect();
            self.client.create_tasks(tasks).await?;
            self.counted(1);
            left -= now;
        }
        Ok(())
    }

    /// Queues one `sleep` task, as an app creating work one piece at a time.
    pub async fn enqueue_one(&self, ms: u64) -> Result<()> {
        self.client.create_task(sleep_task(ms)).await?;
        self.counted(1);
        Ok(())
    }

    /// After a server restart: waits until the harness's connections work again (each
    /// pool replaces a dead connection after one failed call).
    pub async fn reconnect(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let client = self.client.count_tasks(None).await;
            let pool = self.progress().await;
            let admin = self.now().await;
            match (client, pool, admin) {
                (Ok(_), Ok(_), Ok(_)) => return Ok(()),
                (client, pool, admin) if Instant::now() >= deadline => {
                    client?;
                    pool?;
                    admin?;
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    pub async fn progress(&self) -> Result<Progress> {
        let (total, completed, ended_badly): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'completed'), \
             count(*) FILTER (WHERE status IN ('failed', 'cancelled')) FROM tasks",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading progress")?;
        self.counted(1);
        Ok(Progress {
            total,
            completed,
            ended_badly,
        })
    }

    /// Waits until `done` holds, failing after `within`, when a task fails, or when a
    /// worker process exits by itself. A read that fails (the server restarting) is
    /// retried until the deadline.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        fleet: &mut Fleet,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<Progress> {
        let deadline = Instant::now() + within;
        let mut last = Progress::default();
        loop {
            fleet.check_running()?;
            match self.progress().await {
                Ok(p) if p.ended_badly > 0 => bail!(
                    "{} task(s) failed or were cancelled while waiting for {what}; {}",
                    p.ended_badly,
                    self.why_ended_badly().await?
                ),
                Ok(p) if done(&p) => return Ok(p),
                Ok(p) => last = p,
                Err(_) if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {:.0} s waiting for {what}: {} of {} tasks completed",
                    within.as_secs_f64(),
                    last.completed,
                    last.total
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A failed or cancelled task's runs, to say why.
    async fn why_ended_badly(&self) -> Result<String> {
        let runs: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT t.id::text, t.status, r.worker_id || ' ' || r.status, r.error_message \
             FROM tasks t JOIN runs r ON r.task_id = t.id \
             WHERE t.id = (SELECT id FROM tasks WHERE status IN ('failed', 'cancelled') LIMIT 1) \
             ORDER BY r.run_number",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading a failed task's runs")?;
        let Some((task, status, _, _)) = runs.first() else {
            return Ok("no run".into());
        };
        let runs: Vec<String> = runs
            .iter()
            .map(|(_, _, run, error)| format!("{run}: {}", error.as_deref().unwrap_or("-")))
            .collect();
        Ok(format!("task {task} {status}, runs: {}", runs.join("; ")))
    }

    /// The server's clock, in seconds since the epoch: the one every timestamp it writes
    /// uses.
    pub async fn now(&self) -> Result<f64> {
        let now = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
            .fetch_one(&self.admin)
            .await
            .context("reading the server's clock")?;
        Ok(now)
    }

    /// Transactions committed on this database (`pg_stat_database.xact_commit`). Sessions
    /// report their counts up to a second late, and at exit: once the workers stopped,
    /// `settled` reads until the count stops moving.
    pub async fn commits(&self, settled: bool) -> Result<i64> {
        let read = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            )
            .bind(&self.name)
            .fetch_one(&self.admin)
            .await
            .context("reading pg_stat_database")
        };
        let mut last = read().await?;
        if !settled {
            return Ok(last);
        }
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = read().await?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }

    /// From the first run's start to the last success.
    pub async fn window(&self) -> Result<Window> {
        let (first_start, last_end): (Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT extract(epoch FROM min(started_at))::float8, \
             extract(epoch FROM max(completed_at) FILTER (WHERE status = 'success'))::float8 \
             FROM runs",
        )
        .fetch_one(&self.pool)
        .await
        .context("reading the drain's window")?;
        self.counted(1);
        match (first_start, last_end) {
            (Some(first_start), Some(last_end)) => Ok(Window {
                first_start,
                last_end,
            }),
            _ => bail!("no task ran in {}", self.name),
        }
    }

    /// For each task created at or after `since` (server clock): from its creation to its
    /// first run's start, in milliseconds.
    pub async fn pickups_ms(&self, since: f64) -> Result<Vec<f64>> {
        let ms = sqlx::query_scalar(
            "SELECT (extract(epoch FROM r.started_at - t.created_at) * 1000)::float8 \
             FROM runs r JOIN tasks t ON t.id = r.task_id \
             WHERE r.run_number = 1 AND t.created_at >= to_timestamp($1) ORDER BY 1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .context("reading pickup latencies")?;
        self.counted(1);
        Ok(ms)
    }

    /// Success completions in the server's clock, in order.
    pub async fn completions(&self) -> Result<Vec<f64>> {
        let at = sqlx::query_scalar(
            "SELECT extract(epoch FROM completed_at)::float8 FROM runs \
             WHERE status = 'success' ORDER BY completed_at",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading completion times")?;
        self.counted(1);
        Ok(at)
    }

    /// For the tasks with a run the reaper took back: when the first of them started
    /// again and when the last completed (server clock); `None` when none was taken back.
    pub async fn retaken(&self) -> Result<Option<(f64, f64)>> {
        let (again, done): (Option<f64>, Option<f64>) = sqlx::query_as(
            "SELECT extract(epoch FROM min(started_at) FILTER (WHERE status <> 'timeout'))::float8, \
             extract(epoch FROM max(completed_at) FILTER (WHERE status = 'success'))::float8 \
             FROM runs WHERE task_id IN \
             (SELECT task_id FROM runs WHERE status = 'timeout' AND error_message = $1)",
        )
        .bind(hive_models::Run::LEASE_EXPIRED)
        .fetch_one(&self.pool)
        .await
        .context("reading the runs taken back")?;
        self.counted(1);
        Ok(again.zip(done))
    }

    /// Runs of `worker` still open.
    pub async fn running_runs_of(&self, worker: &str) -> Result<i64> {
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM runs WHERE worker_id = $1 AND status = 'running'",
        )
        .bind(worker)
        .fetch_one(&self.pool)
        .await
        .context("reading a worker's runs")?;
        self.counted(1);
        Ok(n)
    }

    /// The last heartbeat of `worker`, in seconds since the epoch.
    pub async fn heartbeat_of(&self, worker: &str) -> Result<Option<f64>> {
        let at = sqlx::query_scalar(
            "SELECT extract(epoch FROM last_heartbeat)::float8 FROM workers WHERE id = $1",
        )
        .bind(worker)
        .fetch_optional(&self.pool)
        .await
        .context("reading a worker's heartbeat")?;
        self.counted(1);
        Ok(at)
    }

    /// The server's sessions on this database: the workers' (over TCP; the harness's use
    /// the socket), and those inside a transaction but waiting for their client.
    pub async fn sessions(&self) -> Result<Sessions> {
        let (workers, idle_in_transaction) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE client_addr IS NOT NULL), \
             count(*) FILTER (WHERE state = 'idle in transaction') \
             FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.admin)
        .await
        .context("reading pg_stat_activity")?;
        Ok(Sessions {
            workers,
            idle_in_transaction,
        })
    }

    /// Workers registered and taking work.
    pub async fn live_workers(&self) -> Result<i64> {
        let n =
            sqlx::query_scalar("SELECT count(*) FROM workers WHERE status IN ('active', 'idle')")
                .fetch_one(&self.pool)
                .await
                .context("reading the workers")?;
        self.counted(1);
        Ok(n)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the harness's connections, so the database can be left behind quietly.
    pub async fn close(self) {
        self.pool.close().await;
        self.admin.close().await;
    }
}

fn sleep_task(ms: u64) -> NewTask {
    NewTask::new("load", "sleep").payload(serde_json::json!({ "ms": ms }))
}
