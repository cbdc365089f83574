//! What a run that died without cleaning up (SIGKILL, a crash of the machine) left behind:
//! its database, its namespaces with whatever still runs in them, and its directory. Each
//! carries the pid of the run that made it, and is removed only when that pid is dead.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{DIR_PREFIX, NS_PREFIX, net, pg, sys};

/// Removes the leftovers of dead runs; returns what it removed. Called before this run
/// creates anything: what carries this process's own pid was left by a dead run whose pid
/// it reuses (a container started again with `/run/netns` and `/tmp` kept).
pub fn clean(tmp: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let dirs: Vec<PathBuf> = std::fs::read_dir(tmp)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| dead_owner(n, DIR_PREFIX))
                .is_some()
        })
        .map(|e| e.path())
        .collect();
    // The database first, stopped as its owner would have (its namespace's removal
    // would kill it less cleanly).
    for dir in &dirs {
        pg::stop_leftover(&dir.join("pg"));
    }
    let namespaces = sys::run_now(std::process::Command::new("ip").args(["netns", "list"]))?;
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if dead_owner(ns, NS_PREFIX).is_some() {
            net::remove_namespace(ns)?;
            removed.push(format!("namespace {ns}"));
        }
    }
    for dir in dirs {
        std::fs::remove_dir_all(&dir)?;
        removed.push(format!("directory {}", dir.display()));
    }
    Ok(removed)
}

/// The pid in a name `PREFIX-PID-…` when no such process lives, or when it is this
/// process's (see [`clean`]).
fn dead_owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let pid: u32 = rest.split('-').next()?.parse().ok()?;
    (pid == std::process::id() || !sys::alive(pid)).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::dead_owner;

    #[test]
    fn only_names_of_dead_runs_are_leftovers() {
        let me = std::process::id();
        // Before a run creates anything, a name with its own pid is a dead run's.
        assert_eq!(dead_owner(&format!("hvc-{me}-db"), "hvc"), Some(me));
        let parent = std::os::unix::process::parent_id();
        assert_eq!(dead_owner(&format!("hvc-{parent}-db"), "hvc"), None);
        // Pids are below 2^22 on Linux.
        assert_eq!(dead_owner("hvc-99999999-db", "hvc"), Some(99_999_999));
        assert_eq!(
            dead_owner("hive-cluster-99999999-x1Yz", "hive-cluster"),
            Some(99_999_999)
        );
        assert_eq!(dead_owner("hvcx-99999999-db", "hvc"), None);
        assert_eq!(dead_owner("other-99999999", "hvc"), None);
        assert_eq!(dead_owner("hvc-abc-db", "hvc"), None);
    }
}
