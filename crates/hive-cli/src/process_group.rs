//! The process groups of running shell commands: each is killed when its guard drops, and
//! all of them at once when the worker is told to stop at once (a second Ctrl-C), so no
//! command outlives a worker that stops, however it is told to. With a group go the
//! processes that left it but still carry their run's mark in their environment (`setsid`,
//! a daemon's double fork). And the orphans those commands leave, which a worker that is
//! PID 1 (a container started without an init) must reap itself.
//!
//! A worker killed outright (SIGKILL, the OOM killer) runs none of this: its commands are
//! killed by its guard process, or, were the guard killed too, by the next worker to look
//! on the same host ([`crate::orphans`]).
//! `PR_SET_PDEATHSIG` on `sh` would not do it: it fires when the thread that spawned `sh`
//! exits, not the process, and signals `sh` alone, not its group nor what left the group.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;

/// The variable that marks a command's processes as its run's: the run's id, which no other
/// run shares, inherited by everything the command starts unless it clears it.
pub const RUN_MARK: &str = "HIVE_RUN_ID";

/// The groups whose guards are alive, by process group id, with their runs' marks
/// (`HIVE_RUN_ID=…`): the pgids are also the pids of the `sh` processes tokio waits for,
/// which [`reap_orphans`] must leave to it.
static LIVE: Mutex<Option<HashMap<i32, Vec<u8>>>> = Mutex::new(None);

/// How often [`reap_orphans_forever`] looks without being told a child exited: an orphan
/// that exits while an `sh` of ours is still unwaited-for is reaped at the latest then.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// How often [`ProcessGroup::stop`] looks whether a stopping group is gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// At most how many times [`kill_marked`] looks: a command that forks faster than it is
/// killed cannot hold the worker in an endless loop (what a fork loop leaves is logged).
const MARKED_PASSES: usize = 16;

fn live() -> std::sync::MutexGuard<'static, Option<HashMap<i32, Vec<u8>>>> {
    // A panic while holding the lock leaves a map that is still valid.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child's process group, killed (SIGKILL) when this guard is dropped, on every way out
/// of the handler, including the handler's future being dropped mid-run; every process
/// that carries its run's mark is killed by the next sweep, within [`SWEEP_EVERY`] or so.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: i32,
    mark: Vec<u8>,
}

impl ProcessGroup {
    /// Starts `cmd` (which must ask for `process_group(0)`) with `HIVE_RUN_ID=run_id` in its
    /// environment, and guards its group. The child is registered before the lock that
    /// [`reap_orphans`] takes is let go, so it can never be mistaken for an orphan, even if
    /// it exits at once.
    pub fn spawn(
        cmd: &mut tokio::process::Command,
        run_id: &str,
    ) -> std::io::Result<(tokio::process::Child, Option<ProcessGroup>)> {
        cmd.env(RUN_MARK, run_id);
        // Never the mark this worker inherited (it runs inside another worker's command):
        // its own commands are its, not that worker's.
        match crate::orphans::own_mark() {
            Some(worker) => cmd.env(crate::orphans::WORKER_MARK, worker),
            None => cmd.env_remove(crate::orphans::WORKER_MARK),
        };
        let mark = format!("{RUN_MARK}={run_id}").into_bytes();
        let mut live = live();
        let child = cmd.spawn()?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(|pgid| {
                live.get_or_insert_with(HashMap::new)
                    .insert(pgid, mark.clone());
                ProcessGroup { pgid, mark }
            });
        Ok((child, group))
    }

    /// Asks the whole group to stop (SIGTERM) and waits until none of it is left, at most
    /// `grace`: time for a command to clean up (a `trap … TERM`, a child that flushes its
    /// files) before the guard's SIGKILL. `sh` is the group's leader, reaped here once it
    /// exits so that it no longer counts as part of the group.
    pub async fn stop(&self, sh: &mut tokio::process::Child, grace: Duration) {
        let pgid = Pid::from_raw(self.pgid);
        if grace.is_zero() || killpg(pgid, Signal::SIGTERM).is_err() {
            return;
        }
        // A stopped process (SIGSTOP, or SIGTTIN reading a terminal from the background)
        // acts on no SIGTERM until it runs again: woken, it gets its clean-up instead of
        // waiting out the grace for the SIGKILL.
        let _ = killpg(pgid, Signal::SIGCONT);
        // A grace past what an instant can hold (`--timeout-grace 1e19`) has no deadline.
        let deadline = tokio::time::Instant::now().checked_add(grace);
        loop {
            let _ = sh.try_wait();
            let late = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if killpg(pgid, None) == Err(Errno::ESRCH) || late {
                return;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(map) = live().as_mut() {
            map.remove(&self.pgid);
        }
        // ESRCH (the group is gone already) is the normal case after a clean exit.
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        sweep_soon(std::mem::take(&mut self.mark));
    }
}

/// The marks of runs whose groups were killed, for the sweeper's next look.
static PENDING: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
static PENDING_ADDED: Condvar = Condvar::new();
/// Held through a sweep, from taking the marks to the last kill: [`sweep_now`] waits for
/// a sweep in progress, so no mark is taken and then forgotten when the process exits.
static SWEEPING: Mutex<()> = Mutex::new(());
static SWEEPER: OnceLock<bool> = OnceLock::new();

/// How long the sweeper gathers marks before it looks. A look reads every process's
/// environment (about 1 ms for 90 processes here): once per run, it cost a drain of `true`
/// commands 40% of its rate; once per 20 ms, it costs at most a twentieth of a core, and a
/// process that left its group outlives its task by about that much.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

fn pending() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Has the processes carrying `mark` killed by the sweeper thread shortly, or at once here
/// if that thread cannot be started.
fn sweep_soon(mark: Vec<u8>) {
    let started = *SWEEPER.get_or_init(|| {
        std::thread::Builder::new()
            .name("hive-sweeper".into())
            .spawn(sweep_forever)
            .is_ok()
    });
    if !started {
        kill_marked(&[&mark]);
        return;
    }
    pending().push(mark);
    PENDING_ADDED.notify_one();
}

fn sweep_forever() {
    loop {
        let mut marks = pending();
        while marks.is_empty() {
            marks = PENDING_ADDED.wait(marks).unwrap_or_else(|e| e.into_inner());
        }
        drop(marks);
        std::thread::sleep(SWEEP_EVERY);
        sweep_now();
    }
}

/// Kills what carries the mark of any run whose group was killed, now, after any sweep in
/// progress: what a worker does before it exits, since the sweeper thread dies with it.
pub fn sweep_now() {
    let _sweeping = SWEEPING.lock().unwrap_or_else(|e| e.into_inner());
    let marks = std::mem::take(&mut *pending());
    if marks.is_empty() {
        return;
    }
    let marks: Vec<&[u8]> = marks.iter().map(Vec::as_slice).collect();
    let escaped = kill_marked(&marks);
    if escaped > 0 {
        tracing::info!(
            escaped,
            "killed processes that commands had moved out of their process groups"
        );
    }
}

/// Kills (SIGKILL) every process whose environment holds one of `marks` (`HIVE_RUN_ID=…`),
/// looking again after each kill until a look finds none it has not killed already (a
/// process killed while it forks may leave a child that appears only after the look that
/// found it), at most [`MARKED_PASSES`] times. Returns how many it killed. A process of
/// another user whose environment this one may not read is not found.
pub fn kill_marked(marks: &[&[u8]]) -> usize {
    let mut killed = HashSet::new();
    for _ in 0..MARKED_PASSES {
        // A killed process shows its environment until it is gone: not killed twice.
        let found: Vec<Pid> = marked_processes(marks)
            .into_iter()
            .filter(|pid| !killed.contains(pid))
            .collect();
        if found.is_empty() {
            return killed.len();
        }
        for pid in found {
            if kill(pid, Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
    }
    tracing::warn!(
        killed = killed.len(),
        "a command's processes forked faster than they were killed; some may be left"
    );
    killed.len()
}

/// The processes (other than this one) whose environment holds one of `marks` exactly.
fn marked_processes(marks: &[&[u8]]) -> Vec<Pid> {
    environments()
        .filter(|(_, environ)| environ.split(|b| *b == 0).any(|var| marks.contains(&var)))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process but this one whose environment this one may read, with that environment
/// (`NAME=value` entries, each ended by a NUL).
pub fn environments() -> impl Iterator<Item = (Pid, Vec<u8>)> {
    let me = std::process::id();
    let dir = std::fs::read_dir("/proc").into_iter().flatten();
    dir.flatten().filter_map(move |entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        if u32::try_from(pid).ok()? == me {
            return None;
        }
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        Some((Pid::from_raw(pid), environ))
    })
}

/// Kills every group still guarded: what a forced exit does before the process ends, since
/// no guard is dropped then.
pub fn kill_all() {
    let live = live();
    let mut marks = Vec::new();
    for (pgid, mark) in live.iter().flatten() {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        marks.push(mark.as_slice());
    }
    kill_marked(&marks);
    drop(live);
    sweep_now();
}

/// Reaps every exited child that is not one of the commands' own `sh` processes (tokio
/// waits for those): the orphans the kernel hands to PID 1 of a namespace, such as a
/// command's background processes, reparented when `sh` exits and killed with its group.
/// Without it each stays a zombie for as long as the worker lives, until the container
/// runs out of process ids. Elsewhere a worker is given no orphans and this finds nothing.
/// Returns how many were reaped.
pub fn reap_orphans() -> usize {
    // Held throughout: an `sh` spawned meanwhile is registered before it can be seen.
    let live = live();
    let ours = |pid: Pid| live.iter().flatten().any(|(g, _)| *g == pid.as_raw());
    let mut reaped = 0;
    loop {
        // Looks at an exited child without waiting for it, to learn whose it is first.
        let peeked = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let exited = match peeked {
            Ok(status) => status.pid(),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => None,
            // A status nix cannot decode (a realtime signal): the pid is found by /proc.
            Err(_) => zombie_children().into_iter().find(|pid| !ours(*pid)),
        };
        // The first exited child is an `sh` of ours: the rest wait for the next look.
        let Some(pid) = exited.filter(|pid| !ours(*pid)) else {
            return reaped;
        };
        // Reaped even when its status cannot be decoded: the call itself waited.
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        reaped += 1;
    }
}

/// This process's zombie children, read from /proc (the parent is the fourth field of
/// `stat`, after the command name in parentheses, which may itself hold any character).
fn zombie_children() -> Vec<Pid> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
            let (state, parent) = (fields.next()?, fields.next()?);
            (state == "Z" && parent == me).then_some(Pid::from_raw(pid))
        })
        .collect()
}

/// Reaps orphans whenever a child exits, and every [`REAP_EVERY`] besides; runs for as
/// long as the worker does.
pub async fn reap_orphans_forever() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut exits = match signal(SignalKind::child()) {
        Ok(exits) => Some(exits),
        Err(e) => {
            tracing::warn!("cannot watch for exited children ({e}); looking every second");
            None
        }
    };
    let mut every = tokio::time::interval(REAP_EVERY);
    loop {
        match exits.as_mut() {
            Some(exits) => tokio::select! {
                _ = exits.recv() => {}
                _ = every.tick() => {}
            },
            None => {
                every.tick().await;
            }
        }
        let reaped = reap_orphans();
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned processes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// `kill_all` kills every guarded group and marked process in this test binary: the
    /// tests that guard processes they expect alive take turns with it.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn alive(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn kill_all_kills_every_guarded_group_and_drop_forgets_it() {
        let _turn = SERIAL.lock().await;
        let (mut child, guard) = ProcessGroup::spawn(
            tokio::process::Command::new("sleep")
                .arg("30")
                .process_group(0),
            "kill-all",
        )
        .unwrap();
        let guard = guard.unwrap();
        let pid = guard.pgid;
        assert!(alive(pid));
        kill_all();
        child.wait().await.unwrap();
        assert!(!alive(pid));
        drop(guard);
        assert!(!live().iter().flatten().any(|(g, _)| *g == pid));
    }

    /// A grace too long for an instant to hold (`--timeout-grace 1e19`) waits for the group
    /// like any other, rather than overflowing the deadline.
    #[tokio::test]
    async fn a_grace_past_any_instant_still_stops_the_group() {
        let (mut child, guard) = ProcessGroup::spawn(
            tokio::process::Command::new("sleep")
                .arg("30")
                .process_group(0),
            "endless-grace",
        )
        .unwrap();
        let guard = guard.unwrap();
        let stopped = tokio::time::timeout(
            Duration::from_secs(30),
            guard.stop(&mut child, Duration::MAX),
        )
        .await;
        assert!(stopped.is_ok(), "the group went with its SIGTERM");
        assert!(child.wait().await.unwrap().signal().is_some());
    }

    /// A stopped group (SIGSTOP, or SIGTTIN reading a terminal) is woken with its SIGTERM:
    /// a command that traps it (a stopped process keeps a caught signal pending until it
    /// runs again) cleans up and ends at once instead of after the whole grace.
    #[tokio::test]
    async fn a_stopped_group_is_woken_to_act_on_its_sigterm() {
        // `kill_all` in another test would SIGKILL it before its trap could run.
        let _turn = SERIAL.lock().await;
        let (mut child, guard) = ProcessGroup::spawn(
            tokio::process::Command::new("sh")
                // Foreground children only: an orphan's zombie would outlive the shell here.
                .args([
                    "-c",
                    "trap 'exit 0' TERM; echo; while :; do sleep 0.1; done",
                ])
                .stdout(std::process::Stdio::piped())
                .process_group(0),
            "stopped",
        )
        .unwrap();
        let guard = guard.unwrap();
        // The trap is set once the shell has printed.
        let mut out = child.stdout.take().unwrap();
        tokio::io::AsyncReadExt::read(&mut out, &mut [0u8; 1])
            .await
            .unwrap();
        killpg(Pid::from_raw(guard.pgid), Signal::SIGSTOP).unwrap();
        let stopped = tokio::time::timeout(
            Duration::from_secs(10),
            guard.stop(&mut child, Duration::from_secs(60)),
        )
        .await;
        assert!(
            stopped.is_ok(),
            "the group went with its SIGTERM, not the grace"
        );
        assert_eq!(child.wait().await.unwrap().code(), Some(0), "its trap ran");
    }

    fn zombie(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    }

    /// A child killed by a realtime signal, whose status nix cannot decode, is still found
    /// (through /proc) and reaped.
    #[test]
    fn an_orphan_killed_by_a_realtime_signal_is_reaped_too() {
        // Never waited for here, as an orphan handed to the worker is not.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sh")
            .args(["-c", "kill -34 $$"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Dead once a zombie, or gone if the other tests' reaping took it first.
        for _ in 0..500 {
            if zombie(pid) || !alive(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reap_orphans();
        assert!(!alive(pid), "the zombie was reaped");
    }

    /// A child of ours that exited is left for its own wait, whatever `reap_orphans` does
    /// meanwhile: the shell handler's `wait` must see its `sh`'s status, not ECHILD.
    #[tokio::test]
    async fn reaping_leaves_the_commands_own_children_to_their_wait() {
        let (mut child, guard) =
            ProcessGroup::spawn(tokio::process::Command::new("true").process_group(0), "own")
                .unwrap();
        let pid = guard.as_ref().unwrap().pgid;
        // `true` has exited (a zombie) once its /proc entry says so.
        for _ in 0..500 {
            if zombie(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reap_orphans();
        // Its status, whatever it is (the other test's `kill_all` may have killed it first),
        // and not ECHILD.
        child
            .wait()
            .await
            .expect("the child's own wait sees its status");
        drop(guard);
    }

    fn read_pids(path: &std::path::Path, n: usize) -> Vec<i32> {
        for _ in 0..500 {
            let pids: Vec<i32> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() == n {
                return pids;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{n} pids never appeared in {}", path.display());
    }

    /// Processes that left the command's group (a `setsid` child, and a daemon's double
    /// fork whose parent exited) die with its guard; a process with another run's mark, or
    /// none, is left alone.
    #[tokio::test]
    async fn processes_that_left_the_group_die_by_their_mark() {
        let _turn = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "setsid sleep 301 & echo $! >> '{p}'; \
             (setsid sh -c 'sleep 302 & echo $! >> \"$1\"' _ '{p}' &); \
             while [ $(wc -l < '{p}') -lt 2 ]; do sleep 0.01; done",
            p = pids.display()
        );
        let (mut child, guard) = ProcessGroup::spawn(
            tokio::process::Command::new("sh")
                .args(["-c", &script])
                .process_group(0),
            "left-the-group",
        )
        .unwrap();
        let others = tempfile::tempdir().unwrap();
        let other_pid = others.path().join("pid");
        // A marked process outside the group (killed: the mark is what counts), and its
        // children with another run's mark and with none (both spared).
        #[allow(clippy::zombie_processes)]
        let mut bystanders = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "HIVE_RUN_ID=another-run setsid sleep 303 & echo $! >> '{o}'; \
                     env -u HIVE_RUN_ID setsid sleep 304 & echo $! >> '{o}'; wait",
                    o = other_pid.display()
                ),
            ])
            .env(RUN_MARK, "left-the-group")
            .spawn()
            .unwrap();
        child.wait().await.unwrap();
        let escaped = read_pids(&pids, 2);
        let spared = read_pids(&other_pid, 2);
        // Each has become `sleep` (so `setsid` and `env` are done), and none is in the group.
        for pid in escaped.iter().chain(&spared) {
            for _ in 0..500 {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
                if comm.trim() == "sleep" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_ne!(
                nix::unistd::getpgid(Some(Pid::from_raw(*pid)))
                    .unwrap()
                    .as_raw(),
                guard.as_ref().unwrap().pgid
            );
        }
        for pid in escaped.iter().chain(&spared) {
            assert!(alive(*pid), "{pid} runs before the guard drops");
        }
        drop(guard);
        for pid in &escaped {
            for _ in 0..500 {
                if !alive(*pid) || zombie(*pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                !alive(*pid) || zombie(*pid),
                "{pid} left the group and was killed"
            );
        }
        for pid in &spared {
            assert!(
                alive(*pid) && !zombie(*pid),
                "{pid} is not the run's and lives"
            );
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = bystanders.kill();
        let _ = bystanders.wait();
    }
}
