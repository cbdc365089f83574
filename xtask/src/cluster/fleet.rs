//! `hive worker run` processes on the worker hosts: started with their stdout, stderr and
//! exec logs in the run's directory, stopped with SIGTERM (SIGKILL past a bound), and their
//! `--json` reports read back. Dropping a fleet kills what still runs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::time::Instant;

use super::Cluster;
use super::db::LoadDb;
use super::sys;

/// How long workers get to register, and to stop once told to.
const START_WITHIN: Duration = Duration::from_secs(30);
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// The worker options the scenarios vary.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    pub concurrency: u32,
    pub lease_secs: u64,
    pub heartbeat_ms: Option<u64>,
    pub reap_interval_ms: Option<u64>,
    pub poll_ms: Option<u64>,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        WorkerOpts {
            concurrency: 8,
            lease_secs: 10,
            heartbeat_ms: None,
            reap_interval_ms: None,
            poll_ms: None,
        }
    }
}

/// What the harness reads of the report `hive --json worker run` prints when it stops.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Report {
    /// Outcomes refused because their run had been closed (lease expired, cancelled).
    pub stale: u64,
}

#[derive(Debug)]
pub struct WorkerProc {
    /// Also its worker id.
    pub name: String,
    child: tokio::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exec_log: PathBuf,
}

impl WorkerProc {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// The worker processes of one measurement.
#[derive(Debug)]
pub struct Fleet {
    pub workers: Vec<WorkerProc>,
}

/// A stopped fleet: each worker's report, and every exec log.
#[derive(Debug)]
pub struct Stopped {
    pub reports: Vec<(String, Report)>,
    pub exec_logs: Vec<PathBuf>,
}

impl Stopped {
    pub fn stale(&self) -> u64 {
        self.reports.iter().map(|(_, r)| r.stale).sum()
    }
}

impl Fleet {
    /// Starts one worker process per entry of `hosts` (a worker host's index) on `db`,
    /// running `sleep` tasks, and waits until all have registered.
    pub async fn start(
        c: &Cluster,
        db: &LoadDb,
        hosts: &[usize],
        opts: &WorkerOpts,
    ) -> Result<Fleet> {
        let mut fleet = Fleet {
            workers: Vec::new(),
        };
        for (i, &h) in hosts.iter().enumerate() {
            let host = c
                .net
                .hosts
                .get(h)
                .with_context(|| format!("no worker host {}", h + 1))?;
            let name = format!("{}-{}-w{}", db.name, host.name, i + 1);
            let [stdout, stderr, exec_log] =
                ["out", "log", "exec"].map(|ext| c.path(&format!("{name}.{ext}")));
            let mut cmd = host.command(&c.hive);
            cmd.args(["--json", "--database-url", &db.worker_url, "worker", "run"])
                .args(["--role", "cluster", "--id", &name, "--type", "sleep"])
                .args(["--concurrency", &opts.concurrency.to_string()])
                .args(["--lease-secs", &opts.lease_secs.to_string()])
                .arg("--exec-log")
                .arg(&exec_log);
            for (flag, value) in [
                ("--heartbeat-ms", opts.heartbeat_ms),
                ("--reap-interval-ms", opts.reap_interval_ms),
                ("--poll-ms", opts.poll_ms),
            ] {
                if let Some(v) = value {
                    cmd.args([flag, &v.to_string()]);
                }
            }
            let file = |p: &PathBuf| {
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))
            };
            // A group of its own: a Ctrl-C at the terminal reaches only the harness, which
            // then stops everything in order.
            let child = cmd
                .stdin(Stdio::null())
                .stdout(file(&stdout)?)
                .stderr(file(&stderr)?)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {name}"))?;
            fleet.workers.push(WorkerProc {
                name,
                child,
                stdout,
                stderr,
                exec_log,
            });
        }
        let expected = i64::try_from(hosts.len())?;
        let deadline = Instant::now() + START_WITHIN;
        while db.live_workers().await? < expected {
            fleet.check_running()?;
            if Instant::now() >= deadline {
                bail!("{expected} workers did not all register within {START_WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(fleet)
    }

    /// Fails when a worker process has exited by itself, with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        for w in &mut self.workers {
            if let Some(status) = w.child.try_wait()? {
                bail!(
                    "worker {} exited by itself ({status}): {}",
                    w.name,
                    w.log_tail()
                );
            }
        }
        Ok(())
    }

    pub fn worker(&self, i: usize) -> Result<&WorkerProc> {
        self.workers
            .get(i)
            .with_context(|| format!("no worker {i} in the fleet"))
    }

    /// Stops every worker gracefully (SIGTERM) and reads their reports; a worker still
    /// running after [`STOP_WITHIN`] is killed, and that is an error.
    pub async fn stop(mut self) -> Result<Stopped> {
        for w in &self.workers {
            if let Some(pid) = w.child.id() {
                sys::signal(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_WITHIN;
        let mut stopped = Stopped {
            reports: Vec::new(),
            exec_logs: self.workers.iter().map(|w| w.exec_log.clone()).collect(),
        };
        for w in &mut self.workers {
            let waited = tokio::time::timeout_at(deadline, w.child.wait()).await;
            let status = match waited {
                Ok(status) => status?,
                Err(_) => {
                    let _ = w.child.kill().await;
                    bail!(
                        "worker {} did not stop within {STOP_WITHIN:?} of SIGTERM and was \
                         killed: {}",
                        w.name,
                        w.log_tail()
                    );
                }
            };
            if !status.success() {
                bail!("worker {} stopped with {status}: {}", w.name, w.log_tail());
            }
            let out = std::fs::read_to_string(&w.stdout)
                .with_context(|| format!("reading {}", w.stdout.display()))?;
            let report: Report = serde_json::from_str(&out)
                .with_context(|| format!("worker {} printed no report: {out:?}", w.name))?;
            stopped.reports.push((w.name.clone(), report));
        }
        Ok(stopped)
    }
}
