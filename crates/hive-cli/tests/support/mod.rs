//! Driving real `hive worker run` processes from a test: one database per test (SQLite file
//! or fresh Postgres schema), process groups that can be frozen, resumed or killed as a
//! whole, and polling of the store until a condition holds.
//!
//! Each test binary uses part of it.
#![allow(dead_code)]

pub mod db;

use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hive_client::{Client, NewTask, OpsConfig, Run, RunId, Task, TaskId, Worker};
use hive_store::testing::TestStore;
use tokio::time::Instant;

/// A loopback port nothing listens on (until a test binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// How often [`eventually`] re-reads the store.
const POLL: Duration = Duration::from_millis(20);

/// Everything a process test needs: a client on the test's database, the URL the worker
/// processes connect to, and a directory for their logs.
pub struct Harness {
    pub client: Client,
    pub url: String,
    pub backend: &'static str,
    dir: tempfile::TempDir,
}

/// Runs `case` against a fresh store, cleaning it up afterwards even when the case panics.
pub async fn run_case<F, Fut>(ts: TestStore, case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let backend = ts.store.backend().as_str();
    let url = ts
        .url
        .clone()
        .expect("a test store reachable from other processes");
    ts.run(|store| {
        let harness = Harness {
            client: Client::from_store(store, OpsConfig::default()),
            url,
            backend,
            dir: tempfile::tempdir().expect("create a temporary directory"),
        };
        case(harness)
    })
    .await;
}

impl Harness {
    /// A file in the test's own directory, as a string for shell commands.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Starts `hive worker run ARGS` on the test's database, in a process group of its own.
    pub fn worker(&self, name: &str, args: &[&str]) -> WorkerProcess {
        self.spawn(name, Launch::Plain, args)
    }

    /// Like [`Harness::worker`], with the process's clock shifted by `offset` (libfaketime's
    /// syntax, e.g. `+10m`). Fails when faketime is not installed.
    pub fn skewed_worker(&self, name: &str, offset: &str, args: &[&str]) -> WorkerProcess {
        self.spawn(name, Launch::Skewed(offset), args)
    }

    /// Like [`Harness::worker`], as PID 1 of a PID namespace of its own with its own /proc
    /// (a container started without an init), under `unshare`, whose pid the returned
    /// process has. Needs root.
    pub fn init_worker(&self, name: &str, args: &[&str]) -> WorkerProcess {
        self.spawn(name, Launch::Init, args)
    }

    fn spawn(&self, name: &str, launch: Launch<'_>, args: &[&str]) -> WorkerProcess {
        let hive = env!("CARGO_BIN_EXE_hive");
        // Each worker starts a session of its own (`setsid`, which keeps the pid), and the
        // shell commands it runs stay in that session whatever process groups they get, so
        // a signal to the session freezes, resumes or kills the whole "machine" at once.
        let mut cmd = tokio::process::Command::new("setsid");
        match launch {
            Launch::Skewed(offset) => {
                cmd.arg(faketime())
                    .args(["-f", offset, hive])
                    // Only the wall clock is shifted: timers and intervals stay real.
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            Launch::Init => {
                cmd.args([
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--kill-child",
                    hive,
                ]);
            }
            Launch::Plain => {
                cmd.arg(hive);
            }
        }
        let stderr_path = self.dir.path().join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("create a stderr file");
        self.configure(&mut cmd, name, args);
        cmd.stderr(stderr);
        let child = cmd.spawn().expect("start `hive worker run`");
        let sid = child.id().expect("a running child has a pid");
        WorkerProcess {
            name: name.to_owned(),
            child,
            sid,
            stderr_path,
        }
    }

    /// Starts `hive worker run ARGS` with its stderr a pipe the test controls, for tests of
    /// a stderr that closes or stops draining.
    pub fn worker_with_stderr_pipe(
        &self,
        name: &str,
        args: &[&str],
    ) -> (WorkerProcess, tokio::process::ChildStderr) {
        let hive = env!("CARGO_BIN_EXE_hive");
        let mut cmd = tokio::process::Command::new("setsid");
        cmd.arg(hive);
        self.configure(&mut cmd, name, args);
        // Every statement logged: the most a closed or stalled stderr can be asked to take.
        cmd.env("HIVE_LOG", "debug").stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start `hive worker run`");
        let stderr = child.stderr.take().expect("a piped stderr");
        let sid = child.id().expect("a running child has a pid");
        let process = WorkerProcess {
            name: name.to_owned(),
            child,
            sid,
            stderr_path: self.dir.path().join(format!("{name}.stderr")),
        };
        (process, stderr)
    }

    fn configure(&self, cmd: &mut tokio::process::Command, name: &str, args: &[&str]) {
        cmd.args(["worker", "run", "--id", name])
            .args(args)
            .env("HIVE_DATABASE_URL", &self.url)
            .env_remove("HIVE_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
    }

    /// Creates shell tasks in one batch, each retried up to 3 times.
    pub async fn shell_tasks(&self, commands: impl IntoIterator<Item = String>) -> Vec<TaskId> {
        let tasks = commands
            .into_iter()
            .enumerate()
            .map(|(i, command)| {
                NewTask::new(format!("task {i}"), "shell")
                    .payload(serde_json::json!({ "command": command }))
                    .max_retries(3)
            })
            .collect();
        self.client.create_tasks(tasks).await.expect("create tasks")
    }

    pub async fn task(&self, id: TaskId) -> Task {
        self.client
            .get_task(id)
            .await
            .expect("read a task")
            .expect("the task exists")
    }

    /// A task's state and runs, for failure messages.
    pub async fn describe(&self, id: TaskId) -> String {
        let task = self.task(id).await;
        format!(
            "task {id}: status {}, attempts {}, run_at {:?}, current run {:?}; runs {:#?}",
            task.status,
            task.attempts,
            task.run_at,
            task.current_run_id,
            self.runs(id).await
        )
    }

    pub async fn runs(&self, id: TaskId) -> Vec<Run> {
        self.client.list_runs(id).await.expect("list runs")
    }

    pub async fn registered_worker(&self, id: &str) -> Option<Worker> {
        self.client.get_worker(id).await.expect("read a worker")
    }

    /// The task's current run once the task is in progress under `worker`.
    pub async fn wait_in_progress(&self, id: TaskId, worker: &str, within: Duration) -> Run {
        eventually(
            &format!("task {id} in progress on {worker}"),
            within,
            || async {
                let task = self.task(id).await;
                let run_id = task.current_run_id?;
                if task.status != hive_client::TaskStatus::InProgress {
                    return None;
                }
                let run = self.client.get_run(run_id).await.expect("read a run")?;
                (run.worker_id.as_str() == worker).then_some(run)
            },
        )
        .await
    }

    /// Waits until `worker` has registered (its process connected and is about to claim).
    pub async fn wait_registered(&self, worker: &str, within: Duration) -> Worker {
        eventually(&format!("worker {worker} registered"), within, || {
            self.registered_worker(worker)
        })
        .await
    }
}

/// How [`Harness::spawn`] starts a worker.
enum Launch<'a> {
    Plain,
    /// Under libfaketime, the wall clock shifted by this offset.
    Skewed(&'a str),
    /// As PID 1 of a PID namespace of its own.
    Init,
}

/// The libfaketime wrapper, or a failure naming the package that provides it.
fn faketime() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("faketime"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the clock-skew tests need libfaketime's `faketime` command: install the Debian \
             package `faketime` (apt-get install faketime)"
        )
    })
}

/// One `hive worker run` process and its session (every command it started). Dropping it
/// kills the session, so a failing test leaves no process behind.
pub struct WorkerProcess {
    pub name: String,
    child: tokio::process::Child,
    /// The worker's pid, which is its session's id.
    sid: u32,
    stderr_path: PathBuf,
}

/// Sends `signal` to every process of a session.
fn signal_session(sid: u32, signal: &str) -> bool {
    std::process::Command::new("pkill")
        .args([&format!("-{signal}"), "-s", &sid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

impl WorkerProcess {
    /// Sends `signal` (STOP, CONT, KILL, TERM …) to the whole session: the worker and every
    /// command it runs.
    pub fn signal(&self, signal: &str) {
        assert!(
            signal_session(self.sid, signal),
            "pkill -{signal} -s {} ({}) failed",
            self.sid,
            self.name
        );
    }

    /// Sends `signal` to the worker process alone, as a supervisor stopping it would.
    pub fn signal_worker(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.sid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.name);
    }

    /// SIGKILLs the group (a crash: no shutdown code runs) and reaps the worker.
    pub async fn crash(&mut self) {
        self.signal("KILL");
        self.child.wait().await.expect("reap the killed worker");
    }

    /// SIGKILLs the worker process alone, as the OOM killer would, leaving its commands
    /// running, and reaps it.
    pub async fn crash_alone(&mut self) {
        self.signal_worker("KILL");
        self.child.wait().await.expect("reap the killed worker");
    }

    /// Waits for the process to exit by itself.
    pub async fn exit(&mut self, within: Duration) -> Exited {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for the worker"),
            Err(_) => panic!(
                "worker {} still running after {within:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        };
        Exited {
            name: self.name.clone(),
            status,
            stderr: self.stderr(),
        }
    }

    /// The pid of the session's first process (the worker, or `unshare` for an
    /// [`Harness::init_worker`]).
    pub fn pid(&self) -> u32 {
        self.sid
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Commands outlive a worker only by a bug, but a failing test must not leak them.
        signal_session(self.sid, "KILL");
    }
}

/// A worker process that has exited.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
    pub stderr: String,
}

/// The counts a worker prints when it stops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StopReport {
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub stale: u64,
    pub released: u64,
}

impl Exited {
    /// Asserts a clean exit with no sign of SQLite lock errors reaching the worker.
    pub fn assert_clean(&self) -> StopReport {
        assert!(
            self.status.success(),
            "worker {} exited with {}; stderr:\n{}",
            self.name,
            self.status,
            self.stderr
        );
        // SQLite's words for SQLITE_BUSY and SQLITE_LOCKED ("database is locked", "database
        // table is locked"), and the code's name should a message carry it.
        for symptom in ["is locked", "SQLITE_BUSY", "SQLITE_LOCKED"] {
            assert!(
                !self.stderr.contains(symptom),
                "worker {} reported `{symptom}`; stderr:\n{}",
                self.name,
                self.stderr
            );
        }
        self.report()
    }

    /// Parses `worker ID stopped: N completed, N failed, N retried, N stale, N released`.
    pub fn report(&self) -> StopReport {
        let line = self
            .stderr
            .lines()
            .find_map(|l| {
                // The report line, not a failed run's error that says "stopped: …".
                l.split_once(" stopped: ")
                    .map(|(_, counts)| counts)
                    .filter(|c| c.contains(" completed, "))
            })
            .unwrap_or_else(|| {
                panic!(
                    "worker {} printed no stop report; stderr:\n{}",
                    self.name, self.stderr
                )
            });
        let mut report = StopReport::default();
        for part in line.split(", ") {
            let (n, what) = part.split_once(' ').expect("`N what`");
            let n: u64 = n.parse().expect("a count");
            match what {
                "completed" => report.completed = n,
                "failed" => report.failed = n,
                "retried" => report.retried = n,
                "stale" => report.stale = n,
                "released" => report.released = n,
                other => panic!("unknown count `{other}` in `{line}`"),
            }
        }
        report
    }
}

/// Polls `probe` until it yields a value; fails the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until(within, probe).await {
        Some(v) => v,
        None => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// Polls `probe` until it yields a value, or `None` after `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A shell command that appends `TASK ATTEMPT RUN` to `log` after running `before`.
pub fn logging_command(before: &str, log: &str) -> String {
    format!(r#"{before}echo "$HIVE_TASK_ID $HIVE_ATTEMPT $HIVE_RUN_ID" >> '{log}'"#)
}

/// One line of a [`logging_command`] log: a handler execution that ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub task: TaskId,
    pub attempt: u32,
    pub run: RunId,
}

pub fn read_log(log: &str) -> Vec<Execution> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let mut next = |what: &str| {
                parts
                    .next()
                    .unwrap_or_else(|| panic!("log line `{line}` has no {what}"))
                    .to_owned()
            };
            Execution {
                task: next("task id").parse().expect("a task id"),
                attempt: next("attempt").parse().expect("an attempt number"),
                run: next("run id").parse().expect("a run id"),
            }
        })
        .collect()
}
