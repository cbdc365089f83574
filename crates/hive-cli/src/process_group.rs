//! The process groups of running shell commands: each is killed when its guard drops, and
//! all of them at once when the worker is told to stop at once (a second Ctrl-C), so no
//! command outlives the worker that started it. And the orphans those commands leave, which
//! a worker that is PID 1 (a container started without an init) must reap itself.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;

/// The groups whose guards are alive, by process group id: also the pids of the `sh`
/// processes tokio waits for, which [`reap_orphans`] must leave to it.
static LIVE: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// How often [`reap_orphans_forever`] looks without being told a child exited: an orphan
/// that exits while an `sh` of ours is still unwaited-for is reaped at the latest then.
const REAP_EVERY: Duration = Duration::from_secs(1);

fn live() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    // A panic while holding the lock leaves a set that is still valid.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child's process group, killed (SIGKILL) when this guard is dropped: on every way out of
/// the handler, including the handler's future being dropped mid-run.
#[derive(Debug)]
pub struct ProcessGroup(i32);

impl ProcessGroup {
    /// Starts `cmd` (which must ask for `process_group(0)`) and guards its group. The child
    /// is registered before the lock that [`reap_orphans`] takes is let go, so it can never
    /// be mistaken for an orphan, even if it exits at once.
    pub fn spawn(
        cmd: &mut tokio::process::Command,
    ) -> std::io::Result<(tokio::process::Child, Option<ProcessGroup>)> {
        let mut live = live();
        let child = cmd.spawn()?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(|pid| {
                live.get_or_insert_with(HashSet::new).insert(pid);
                ProcessGroup(pid)
            });
        Ok((child, group))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(set) = live().as_mut() {
            set.remove(&self.0);
        }
        // ESRCH (the group is gone already) is the normal case after a clean exit.
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// Kills every group still guarded: what a forced exit does before the process ends, since
/// no guard is dropped then.
pub fn kill_all() {
    for pgid in live().iter().flatten() {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
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
    let ours = |pid: Pid| live.iter().flatten().any(|g| *g == pid.as_raw());
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

    fn alive(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn kill_all_kills_every_guarded_group_and_drop_forgets_it() {
        let (mut child, guard) = ProcessGroup::spawn(
            tokio::process::Command::new("sleep")
                .arg("30")
                .process_group(0),
        )
        .unwrap();
        let guard = guard.unwrap();
        let pid = guard.0;
        assert!(alive(pid));
        kill_all();
        child.wait().await.unwrap();
        assert!(!alive(pid));
        drop(guard);
        assert!(!live().iter().flatten().any(|g| *g == pid));
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
            ProcessGroup::spawn(tokio::process::Command::new("true").process_group(0)).unwrap();
        let pid = guard.as_ref().unwrap().0;
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
}
