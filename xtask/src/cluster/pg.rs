//! The cluster's own PostgreSQL: `initdb` into the run's directory as the `postgres` user,
//! listening only on the database host's address (started inside its namespace) and on a
//! Unix socket in that directory, with trust for the test subnet. The machine's own server,
//! its socket directory and its configuration are never touched.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::net::Host;
use super::sys;

/// The port inside the database host; its namespace has no other server on it.
pub const PORT: u16 = 5432;
/// The cluster's superuser: every connection in the cluster uses it (trust).
const USER: &str = "hive";
/// How long a session may sit in an open transaction waiting for its client.
pub const IDLE_IN_TRANSACTION: &str = "5s";

#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// Holds the data directory, the socket and the server's log; owned by `postgres`.
    dir: PathBuf,
    ns: String,
    pub addr: SocketAddrV4,
    pub version: String,
    /// `--flush-delay-us`: every WAL flush waits this long first.
    pub flush_delay_us: Option<u32>,
    /// Set once a start was attempted, so that dropping stops whatever came up.
    started: bool,
}

impl Postgres {
    /// Starts the database; `flush_delay_us` makes every WAL flush wait that long first
    /// (`commit_delay`), as a slower disk would.
    pub async fn start(dir: &Path, host: &Host, flush_delay_us: Option<u32>) -> Result<Postgres> {
        let bin = find_bin()?;
        std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        sys::run(
            tokio::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir),
        )
        .await?;
        sys::chmod(dir, 0o700)?;
        let mut pg = Postgres {
            bin,
            dir: dir.to_owned(),
            ns: host.ns.clone(),
            addr: SocketAddrV4::new(host.addr, PORT),
            version: String::new(),
            flush_delay_us,
            started: false,
        };
        let data = pg.data();
        // `--no-sync`: a throwaway instance need not survive a power cut during initdb.
        sys::run(pg.as_postgres("initdb").arg("-D").arg(&data).args([
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]))
        .await?;
        // A worker cut off in the middle of a transaction keeps its rows locked for as long
        // as the server keeps its session, and the reaper skips locked rows: without a
        // limit its tasks would not come back until TCP gave up (hours). docs/SCALING.md
        // recommends this setting for every Hive database.
        let mut conf = format!(
            "\n# cargo xtask cluster\nlisten_addresses = '{}'\nport = {PORT}\n\
             unix_socket_directories = '{}'\nmax_connections = 300\n\
             idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'\n",
            host.addr,
            pg.dir.display()
        );
        if let Some(us) = flush_delay_us {
            // commit_siblings = 0: every flush waits, not only those with company.
            conf.push_str(&format!("commit_delay = {us}\ncommit_siblings = 0\n"));
        }
        append(&data.join("postgresql.conf"), &conf)?;
        // Only the socket (this run's directory, root and postgres only) and the test
        // subnet may connect.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 10.213.0.0/24 trust\n",
        )
        .context("writing pg_hba.conf")?;
        pg.started = true;
        pg.pg_ctl(&["start"]).await?;
        pg.version =
            sys::run(tokio::process::Command::new(pg.bin.join("postgres")).arg("--version"))
                .await?
                .trim()
                .to_owned();
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `PROGRAM` from the server's binaries, run as `postgres`.
    fn as_postgres(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program));
        cmd
    }

    /// `pg_ctl ACTION` inside the database host, waiting for it to finish.
    async fn pg_ctl(&self, action: &[&str]) -> Result<()> {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "runuser", "-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60"])
            .args(action);
        sys::run(&mut cmd).await.map(drop).with_context(|| {
            format!(
                "pg_ctl {}; the server's log: {}",
                action.join(" "),
                self.log_tail()
            )
        })
    }

    /// Restarts the server (fast shutdown: sessions are cut, open transactions roll back)
    /// and returns how long it took.
    pub async fn restart(&self) -> Result<Duration> {
        let started = Instant::now();
        self.pg_ctl(&["restart", "-m", "fast"]).await?;
        Ok(started.elapsed())
    }

    /// A URL on database `db` through the Unix socket, for the harness's own connections:
    /// they bypass the test network, so faults on it never disturb the measurement.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@localhost/{db}?host={}",
            self.dir.display()
        )
    }

    /// A URL on database `db` at the database host's address and `port` (the server's or
    /// a relay's), for the workers.
    pub fn tcp_url(&self, db: &str, port: u16) -> String {
        format!("postgres://{USER}@{}:{port}/{db}", self.addr.ip())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        if let Err(e) = stop(&self.bin, &self.data()) {
            // Not running is what we want; anything else is left to the namespace's
            // removal, which kills what still runs in it.
            if self.data().join("postmaster.pid").exists() {
                eprintln!("cluster: cleanup: {e:#}");
            }
        }
    }
}

/// Stops the server of data directory `data` at once: the cluster's data is thrown away.
fn stop(bin: &Path, data: &Path) -> Result<()> {
    sys::run_now(
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["stop", "-m", "immediate", "-w", "-t", "30"]),
    )
    .map(drop)
}

/// Stops the server a dead run left in `dir` (as [`Postgres::start`] laid it out), if one
/// runs; what cannot be stopped is killed with its namespace.
pub fn stop_leftover(dir: &Path) {
    let data = dir.join("data");
    if runs_in(&data)
        && let Ok(bin) = find_bin()
    {
        let _ = stop(&bin, &data);
    }
}

/// Whether the process `data`'s `postmaster.pid` names is a server of `data` (a
/// postmaster's working directory is its data directory). `pg_ctl stop` signals that pid
/// without asking whose it is: a server that died with its run (a machine's crash, a
/// container restarted with `/tmp` kept) leaves the file, and the pid may since be another
/// process's, the machine's own Postgres among them.
fn runs_in(data: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return false;
    };
    match (
        std::fs::read_link(format!("/proc/{pid}/cwd")),
        data.canonicalize(),
    ) {
        (Ok(cwd), Ok(data)) => cwd == data,
        _ => false,
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/*/bin`, else where `initdb` on PATH leads.
fn find_bin() -> Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| complete(d)) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Some(dir) = sys::which("initdb")
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| complete(d))
    {
        return Ok(dir);
    }
    bail!(
        "PostgreSQL's server binaries (initdb, pg_ctl, postgres) not found: tried pg_config \
         --bindir, /usr/lib/postgresql/*/bin and PATH; install postgresql"
    )
}

#[cfg(test)]
mod tests {
    use super::runs_in;

    /// A stale `postmaster.pid` naming a process of another directory (here this test's
    /// own) is no server of the leftover's: it is left alone. One naming a process whose
    /// working directory is the data directory is.
    #[test]
    fn only_a_process_in_the_data_directory_is_its_server() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        assert!(!runs_in(&data), "no postmaster.pid");
        let pid_file = data.join("postmaster.pid");
        std::fs::write(
            &pid_file,
            format!("{}\n{}\n", std::process::id(), data.display()),
        )
        .unwrap();
        assert!(!runs_in(&data), "a pid used since by another process");
        let mut inside = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&data)
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, format!("{}\n", inside.id())).unwrap();
        let found = runs_in(&data);
        inside.kill().unwrap();
        inside.wait().unwrap();
        assert!(found);
    }
}
