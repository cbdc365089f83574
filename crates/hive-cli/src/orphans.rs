//! Commands whose worker died outright (SIGKILL, the OOM killer), found and killed by any
//! worker on the same host. A worker that dies so runs none of its own cleanup
//! ([`crate::process_group`]), and its tasks run again once their leases expire: left
//! alone, the old command would run beside the new one (two deploys, two backups).
//!
//! Each command carries its worker in its environment ([`WORKER_MARK`]: the worker's pid
//! and the kernel's start time of that pid, so a pid used again by another process does
//! not pass for the worker). A sweep reads every process's environment and kills those
//! whose worker is no longer alive — at a worker's start (a worker restarted after a crash
//! ends what its predecessor left at once) and every [`SWEEP_EVERY`] after; and once, at
//! once, by the worker's guard ([`start_guard`]) when the worker dies, so a host whose only
//! worker died does not keep its commands running.
//!
//! The same sweeps remove the run directories such a worker left (`shell.rs` names each
//! with its worker's PID namespace and mark): they hold the runs' inputs.
//!
//! It only kills what it can tell for sure: processes of its own user (any user's when it
//! runs as root) in its own PID namespace (a container's processes, seen from the host,
//! carry pids of the container's numbering, which the host's `/proc` does not describe),
//! and only those that kept both the worker's and the run's mark (`env -u HIVE_RUN_ID`,
//! the documented way to start something meant to outlive its task, keeps a process out).

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process_group::{RUN_MARK, environments};

/// The variable naming a command's worker process: `pid:start time`.
pub const WORKER_MARK: &str = "HIVE_WORKER_PROCESS";

/// How often a worker looks for the commands of dead workers. A look reads every process's
/// environment (about 1 ms per 90 processes): every 5 s it costs nothing a worker notices,
/// and a dead worker's command outlives it by 5 s at most while another worker runs there.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// At most how many times one sweep looks (see [`crate::process_group::kill_marked`]):
/// a command forking faster than it is killed cannot hold the sweep in an endless loop.
const PASSES: usize = 16;

/// This process as its commands' [`WORKER_MARK`] names it; None where `/proc` does not
/// tell its start time (then its commands carry no mark, and nothing is swept for them).
pub fn own_mark() -> Option<&'static str> {
    static MARK: OnceLock<Option<String>> = OnceLock::new();
    MARK.get_or_init(|| {
        let me = std::process::id();
        let start = start_time(i32::try_from(me).ok()?)?;
        Some(format!("{me}:{start}"))
    })
    .as_deref()
}

/// The kernel's start time of `pid` (clock ticks after boot, field 22 of `stat`, after the
/// command name in parentheses, which may itself hold any character); None when no such
/// process lives.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    // Fields from the third (state) on: the start time is the twentieth of them.
    let mut fields = after_name.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Whether the worker a [`WORKER_MARK`] value names is alive: its pid lives (not a zombie
/// its parent has yet to reap) and started when the mark says. A value that does not
/// parse is treated as alive (nothing is killed on a mark this code did not write).
fn worker_alive(mark: &[u8]) -> bool {
    let parsed = std::str::from_utf8(mark).ok().and_then(|m| {
        let (pid, start) = m.split_once(':')?;
        Some((pid.parse::<i32>().ok()?, start.parse::<u64>().ok()?))
    });
    match parsed {
        Some((pid, start)) => start_time(pid) == Some(start),
        None => true,
    }
}

/// A process of a dead worker's command: its pid, and the run it was started for.
struct Orphan {
    pid: Pid,
    run: String,
}

/// The PID namespace of `pid` (`self` for this process), as `/proc` names it; None when
/// this process may not look.
fn pid_namespace(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Every process (other than this one) in this one's PID namespace whose [`WORKER_MARK`]
/// names a worker no longer alive and that still carries its run's mark.
fn orphans() -> Vec<Orphan> {
    let Some(mine) = pid_namespace("self") else {
        return Vec::new();
    };
    let worker_var = format!("{WORKER_MARK}=").into_bytes();
    let run_var = format!("{RUN_MARK}=").into_bytes();
    environments()
        .filter_map(|(pid, environ)| {
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            let worker = vars.iter().find_map(|v| v.strip_prefix(&worker_var[..]))?;
            let run = vars.iter().find_map(|v| v.strip_prefix(&run_var[..]))?;
            if worker_alive(worker) || pid_namespace(&pid.to_string()) != Some(mine.clone()) {
                return None;
            }
            let run = String::from_utf8_lossy(run).into_owned();
            Some(Orphan { pid, run })
        })
        .collect()
}

/// Kills (SIGKILL) the processes of dead workers' commands, looking again after each kill
/// until a look finds none it has not killed already, at most [`PASSES`] times. Returns
/// how many it killed and the runs they were started for.
pub fn kill_orphans() -> (usize, Vec<String>) {
    let mut killed = HashSet::new();
    let mut runs = Vec::new();
    for _ in 0..PASSES {
        let found: Vec<Orphan> = orphans()
            .into_iter()
            .filter(|o| !killed.contains(&o.pid))
            .collect();
        if found.is_empty() {
            break;
        }
        for o in found {
            if kill(o.pid, Signal::SIGKILL).is_ok() {
                killed.insert(o.pid);
                if !runs.contains(&o.run) {
                    runs.push(o.run);
                }
            }
        }
    }
    (killed.len(), runs)
}

/// Sweeps now and every [`SWEEP_EVERY`], for as long as the worker runs.
pub async fn kill_orphans_forever() {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        sweep().await;
    }
}

/// What starts the name of a run's directory (`shell.rs`): this worker's PID namespace and
/// mark, so that a sweep can tell the directories of a dead worker of its own namespace.
pub fn run_dir_prefix() -> String {
    let ns = pid_namespace("self").and_then(|p| namespace_id(&p));
    match (ns, own_mark()) {
        (Some(ns), Some(mark)) => format!("hive-run-{ns}-{}-", mark.replace(':', "-")),
        _ => "hive-run-".to_owned(),
    }
}

/// The inode number in a namespace link's target (`pid:[4026531836]`).
fn namespace_id(link: &std::path::Path) -> Option<u64> {
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Removes the run directories (in the temporary directory) of dead workers of this PID
/// namespace: a worker killed outright runs no clean-up, and each of its runs left its
/// dependencies' outputs there. Returns how many it removed.
fn remove_dead_run_dirs() -> usize {
    let Some(ns) = pid_namespace("self").and_then(|p| namespace_id(&p)) else {
        return 0;
    };
    let prefix = format!("hive-run-{ns}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // `pid-start-random`; a name that does not parse is kept (not a mark this wrote).
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(start), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir
            && !worker_alive(format!("{pid}:{start}").as_bytes())
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// [`kill_orphans`] and [`remove_dead_run_dirs`] off the runtime's threads, saying what
/// they did.
async fn sweep() {
    let swept = tokio::task::spawn_blocking(|| (kill_orphans(), remove_dead_run_dirs()));
    let Ok(((killed, runs), dirs)) = swept.await else {
        return;
    };
    if dirs > 0 {
        tracing::info!(dirs, "removed the run directories of workers that had died");
    }
    if killed > 0 {
        tracing::warn!(
            killed,
            runs = %runs.join(","),
            "killed processes of commands whose worker had died; their tasks run again once \
             their leases expire"
        );
    }
}

/// Starts this worker's guard: `hive worker guard`, a child in a process group of its own
/// (so a terminal's Ctrl-C, meant for the worker, leaves it) holding a pipe from this
/// process. Whatever ends this process closes the pipe; the guard then sweeps. Best effort:
/// a guard that cannot start leaves the periodic sweeps of the host's other workers.
pub fn start_guard() {
    // This very binary, also after a deploy replaced or removed the file it was started
    // from (the worker may have waited long for its database).
    let started = tokio::process::Command::new("/proc/self/exe")
        .args(["worker", "guard"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    let mut guard = match started {
        Ok(guard) => guard,
        Err(e) => {
            tracing::warn!(error = %e, "no guard for this worker's commands");
            return;
        }
    };
    // Held, never written, until the guard ends (it never does before this process).
    let pipe = guard.stdin.take();
    tokio::spawn(async move {
        let ended = guard.wait().await;
        drop(pipe);
        tracing::warn!(?ended, "the guard of this worker's commands ended");
    });
}

/// How long a guard waits, once its pipe closed, for its worker to be done exiting: the
/// kernel closes a dying process's files before it marks it dead.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// `hive worker guard`: waits for its worker (its parent) to end — its stdin closes — and to
/// be dead, then kills what the worker's commands left running.
pub async fn guard() {
    use tokio::io::AsyncReadExt;
    let worker = i32::try_from(std::os::unix::process::parent_id()).unwrap_or(0);
    let started = start_time(worker);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    while started.is_some()
        && start_time(worker) == started
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweep().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory of a worker that is gone is removed by a sweep; this live process's
    /// own, and one whose name holds no mark, are kept.
    #[test]
    fn a_sweep_removes_the_run_directories_of_dead_workers_only() {
        let mine = run_dir_prefix();
        let (pid, start) = own_mark().unwrap().split_once(':').unwrap();
        let dead = mine.replace(
            &format!("-{pid}-{start}-"),
            &format!("-{}-{start}-", i32::MAX),
        );
        assert_ne!(dead, mine);
        let make = |prefix: &str| {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
            std::fs::write(dir.path().join("inputs.json"), "{}").unwrap();
            dir.keep()
        };
        let (live, gone, foreign) = (make(&mine), make(&dead), make("hive-run-"));
        remove_dead_run_dirs();
        assert!(live.exists() && foreign.exists());
        assert!(!gone.exists(), "{gone:?}");
        for dir in [live, foreign] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_mark_names_a_live_worker_only_with_its_start_time() {
        let mark = own_mark().expect("this process's start time");
        assert!(worker_alive(mark.as_bytes()));
        let (pid, start) = mark.split_once(':').unwrap();
        let start: u64 = start.parse().unwrap();
        // The same pid started at another time: a process that took a dead worker's pid.
        assert!(!worker_alive(format!("{pid}:{}", start + 1).as_bytes()));
        assert!(!worker_alive(format!("{}:{start}", i32::MAX).as_bytes()));
        assert!(
            worker_alive(b"not a mark"),
            "nothing is killed on a foreign mark"
        );
    }

    /// A worker that exited but is not reaped yet (a zombie) is dead: its guard wakes
    /// before its parent reaps it, and the commands it left must still go.
    #[test]
    fn a_zombie_worker_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let exited = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            start_time(pid).is_none()
        });
        child.wait().unwrap();
        assert!(exited, "an exited, unreaped process reads as dead");
    }

    /// A command started with the mark of a worker that is gone is killed by a sweep; one
    /// with this live process's mark is left alone, and so is one that dropped its run's
    /// mark (started to outlive its task).
    #[tokio::test]
    async fn a_sweep_kills_the_commands_of_dead_workers_only() {
        let spawn = |worker: &str, run: Option<&str>| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30").env(WORKER_MARK, worker);
            if let Some(run) = run {
                cmd.env(RUN_MARK, run);
            }
            cmd.spawn().unwrap()
        };
        let dead = format!("{}:1", i32::MAX);
        let mut orphan = spawn(&dead, Some("run-of-the-test"));
        let mut attended = spawn(own_mark().unwrap(), Some("run-of-the-test"));
        let mut detached = spawn(&dead, None);
        // The children's environments are readable once they have exec'd.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (killed, runs) = loop {
            let swept = kill_orphans();
            if swept.0 > 0 || std::time::Instant::now() > deadline {
                break swept;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(killed, 1);
        assert_eq!(runs, vec!["run-of-the-test".to_owned()]);
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "the orphan was killed: {status:?}");
        assert_eq!(
            attended.try_wait().unwrap(),
            None,
            "the attended one runs on"
        );
        assert_eq!(
            detached.try_wait().unwrap(),
            None,
            "the detached one runs on"
        );
        for mut child in [attended, detached] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
