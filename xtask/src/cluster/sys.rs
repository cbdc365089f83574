//! What the cluster needs from the machine: root and the tools it runs, commands run to
//! completion with their stderr as the error, process liveness and signals, and the
//! interrupts that end a run early.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Fails unless the cluster can be built here: root (namespaces, links, running the
/// database as `postgres`) and the tools.
pub fn preflight() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    let uid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if uid != 0 {
        bail!(
            "cargo xtask cluster needs root: it creates network namespaces and links and runs \
             PostgreSQL as the `postgres` user"
        );
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("runuser", "util-linux"),
    ] {
        if which(tool).is_none() {
            bail!("`{tool}` not found on PATH; install {package}");
        }
    }
    Ok(())
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Runs a command to completion; its stdout, or an error holding its stderr.
pub async fn run(cmd: &mut tokio::process::Command) -> Result<String> {
    let what = format!("{:?}", cmd.as_std());
    let out = cmd
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("starting {what}"))?;
    finished(&what, out)
}

/// [`run`] for code that cannot await (cleanup in `Drop`).
pub fn run_now(cmd: &mut std::process::Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    finished(&what, out)
}

fn finished(what: &str, out: Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    bail!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `ip ARGS…` as a command.
pub fn ip(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(args);
    cmd
}

/// Whether a process with this pid exists (a zombie counts until it is reaped).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}

/// Sends `signal` to `pid`; a process already gone is no error.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Resolves at the first Ctrl-C or SIGTERM, naming it.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    // A handler that cannot be installed leaves that signal's default: it ends the run
    // without cleanup, which the next run's leftover check then does.
    let mut term = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => t.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Ok(()) = tokio::signal::ctrl_c() => "SIGINT",
        Some(()) = terminated => "SIGTERM",
        else => std::future::pending().await,
    }
}

/// CPU time (user and system, in seconds) each of `pids` has used so far; a process gone
/// meanwhile is left out.
pub fn cpu_secs(pids: &[u32]) -> HashMap<u32, f64> {
    let tick = clock_ticks();
    pids.iter()
        .filter_map(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command's closing parenthesis (the command may hold spaces):
            // state is the first, utime the 12th, stime the 13th.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((pid, ticks as f64 / tick))
        })
        .collect()
}

/// CPU seconds used between two [`cpu_secs`] readings, by processes alive at the second.
pub fn cpu_used(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, secs)| secs - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// Clock ticks per second, as /proc counts CPU time.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        run_now(std::process::Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            // What Linux uses everywhere it runs this.
            .unwrap_or(100.0)
    })
}

/// The 1- and 5-minute load averages: how busy the machine was besides this run.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "?".into())
}
