//! One measurement from start to check: a fresh database, a fleet of workers on it, work
//! enqueued and drained (or created one task at a time), then the workers stopped, the
//! server's commits counted and the exactly-once check run.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;

use super::check::{self, Tally};
use super::db::{LoadDb, Window};
use super::fleet::{Fleet, Stopped, WorkerOpts};
use super::{Cluster, net, sys};

/// Spacing of tasks created one at a time, so each pickup is measured on idle workers.
pub const PICKUP_SPACING: Duration = Duration::from_millis(100);

/// A wait's bound for `tasks` tasks: generous (50 tasks/s, plus a minute), as it bounds a
/// hang rather than measuring anything.
pub fn bound(tasks: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * tasks)
}

#[derive(Debug)]
pub struct Measure {
    pub db: LoadDb,
    pub fleet: Fleet,
    enqueued: u64,
    commits_before: i64,
    own_before: u64,
    cpu_before: Cpu<HashMap<u32, f64>>,
}

/// CPU time of the database host's processes (the server) and of the worker hosts'.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu<T> {
    pub db: T,
    pub workers: T,
}

impl Cpu<HashMap<u32, f64>> {
    fn read(c: &Cluster) -> Result<Self> {
        let mut workers = Vec::new();
        for h in &c.net.hosts {
            workers.extend(net::pids(&h.ns)?);
        }
        Ok(Cpu {
            db: sys::cpu_secs(&net::pids(&c.net.db.ns)?),
            workers: sys::cpu_secs(&workers),
        })
    }
}

/// A finished measurement.
#[derive(Debug)]
pub struct Finished {
    pub stopped: Stopped,
    /// Transactions the workers committed while they ran (the harness's own left out).
    pub commits: u64,
    pub tally: Tally,
    pub problems: Vec<String>,
}

impl Measure {
    /// Starts workers on `db`, one per entry of `hosts` (worker host indexes).
    pub async fn start(
        c: &Cluster,
        db: LoadDb,
        hosts: &[usize],
        opts: &WorkerOpts,
    ) -> Result<Measure> {
        let fleet = Fleet::start(c, &db, hosts, opts).await?;
        let commits_before = db.commits(false).await?;
        let own_before = db.own_commits();
        let cpu_before = Cpu::read(c)?;
        Ok(Measure {
            db,
            fleet,
            enqueued: 0,
            commits_before,
            own_before,
            cpu_before,
        })
    }

    /// CPU seconds the server and the workers used since the workers started (a process
    /// that exited meanwhile is not counted: read it while the workers run).
    pub fn cpu(&self, c: &Cluster) -> Result<Cpu<f64>> {
        let now = Cpu::read(c)?;
        Ok(Cpu {
            db: sys::cpu_used(&self.cpu_before.db, &now.db),
            workers: sys::cpu_used(&self.cpu_before.workers, &now.workers),
        })
    }

    pub async fn enqueue(&mut self, tasks: u64, ms: u64) -> Result<()> {
        self.db.enqueue(tasks, ms).await?;
        self.enqueued += tasks;
        Ok(())
    }

    /// Waits until at least `n` tasks completed.
    pub async fn wait_completed(&mut self, n: u64, what: &str) -> Result<()> {
        let n = i64::try_from(n)?;
        self.db
            .wait_for(what, bound(self.enqueued), &mut self.fleet, |p| {
                p.completed >= n
            })
            .await
            .map(drop)
    }

    /// Waits until every task enqueued so far completed.
    pub async fn wait_all(&mut self, what: &str) -> Result<()> {
        self.wait_completed(self.enqueued, what).await
    }

    /// Enqueues `tasks` tasks of `ms` and waits for all; the window of the whole drain.
    pub async fn drain(&mut self, tasks: u64, ms: u64) -> Result<Window> {
        self.enqueue(tasks, ms).await?;
        self.wait_all("the drain").await?;
        self.db.window().await
    }

    /// Creates `samples` tasks of `ms` one at a time on idle workers and returns each one's
    /// pickup latency (creation to run start), in milliseconds, sorted.
    pub async fn pickups(&mut self, samples: u64, ms: u64) -> Result<Vec<f64>> {
        self.wait_all("the workers to go idle").await?;
        let since = self.db.now().await?;
        for _ in 0..samples {
            self.db.enqueue_one(ms).await?;
            self.enqueued += 1;
            tokio::time::sleep(PICKUP_SPACING).await;
        }
        self.wait_all("the pickups").await?;
        self.db.pickups_ms(since).await
    }

    /// Stops the workers, counts the commits and checks that every task completed once.
    pub async fn finish(self) -> Result<Finished> {
        let stopped = self.fleet.stop().await?;
        let commits_after = self.db.commits(true).await?;
        let own = self.db.own_commits() - self.own_before;
        let commits = u64::try_from(commits_after - self.commits_before)
            .unwrap_or_default()
            .saturating_sub(own);
        let tally = check::exactly_once(&self.db, &stopped.exec_logs).await?;
        let problems = tally.problems(self.enqueued);
        self.db.close().await;
        Ok(Finished {
            stopped,
            commits,
            tally,
            problems,
        })
    }
}
