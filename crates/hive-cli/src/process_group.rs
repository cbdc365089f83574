//! The process groups of running shell commands: each is killed when its guard drops, and
//! all of them at once when the worker is told to stop at once (a second Ctrl-C), so no
//! command outlives the worker that started it.

use std::collections::HashSet;
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The groups whose guards are alive, by process group id.
static LIVE: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    // A panic while holding the lock leaves a set that is still valid.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child's process group, killed (SIGKILL) when this guard is dropped: on every way out of
/// the handler, including the handler's future being dropped mid-run.
#[derive(Debug)]
pub struct ProcessGroup(i32);

impl ProcessGroup {
    /// Guards the group led by `pid` (a child started with `process_group(0)`).
    pub fn new(pid: i32) -> Self {
        live().get_or_insert_with(HashSet::new).insert(pid);
        ProcessGroup(pid)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn kill_all_kills_every_guarded_group_and_drop_forgets_it() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let guard = ProcessGroup::new(pid);
        assert!(alive(pid));
        kill_all();
        child.wait().unwrap();
        assert!(!alive(pid));
        drop(guard);
        assert!(!live().iter().flatten().any(|g| *g == pid));
    }
}
