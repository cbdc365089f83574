//! `cargo xtask cluster`: many worker hosts on one Postgres, on this machine. Network
//! namespaces stand in for hosts (one for the database, up to four for workers, joined by a
//! bridge in a fifth), a PostgreSQL instance of our own runs in the database's namespace,
//! and `hive worker run` processes run in the workers' namespaces. Four scenarios measure
//! scaling, latency, a partition and a database restart (docs/SCALING.md), and every one
//! checks that each task completed exactly once.
//!
//! Everything it creates is named after its pid (`hvc-<pid>-…` namespaces,
//! `hive-cluster-<pid>-…` directories) and removed by guards when it ends, fails or is
//! interrupted; a crashed run's leftovers are removed by the next run once that pid is dead.

mod check;
mod db;
mod fleet;
mod latency;
mod leftovers;
mod measure;
mod net;
mod partition;
mod pg;
pub mod relay;
mod report;
mod restart;
mod scaling;
mod sys;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use net::Network;
use pg::Postgres;
use report::Section;

/// Names of everything one run creates start with this, then its pid.
const NS_PREFIX: &str = "hvc";
const DIR_PREFIX: &str = "hive-cluster";
/// Worker hosts: enough to spread 8 processes two to a host.
const WORKER_HOSTS: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// 10 ms tasks on 1, 2, 4 and 8 worker processes over 1–4 hosts.
    Scaling,
    /// 0, 2 and 20 ms round trips between the worker hosts and the database.
    Latency,
    /// One host's link cut mid-drain, then restored.
    Partition,
    /// The database restarted mid-drain.
    Restart,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Scaling,
        Scenario::Latency,
        Scenario::Partition,
        Scenario::Restart,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Scaling => "scaling",
            Scenario::Latency => "latency",
            Scenario::Partition => "partition",
            Scenario::Restart => "restart",
        }
    }
}

/// Options of `cargo xtask cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// A reduced run (a few hundred tasks per step, seconds per scenario), as CI runs it.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (repeatable; all when absent).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Rewrite the measured sections of docs/SCALING.md for the scenarios run (full runs
    /// only; a scenario whose checks failed is not written).
    #[arg(long)]
    write_docs: bool,
    /// Run the remaining scenarios after one fails; the exit status still reports it.
    #[arg(long)]
    keep_going: bool,
    /// Build and use a debug `hive` instead of a release one.
    #[arg(long, conflicts_with = "hive_bin")]
    debug: bool,
    /// Use this `hive` binary instead of building one (e.g. target/debug/hive after
    /// `cargo test`).
    #[arg(long, value_name = "PATH")]
    hive_bin: Option<PathBuf>,
    /// Make the database wait this long before every WAL flush (`commit_delay`, with
    /// `commit_siblings = 0`), as a slower disk would: network block storage flushes in
    /// milliseconds where this machine's disk takes a tenth of one.
    #[arg(long, value_name = "MICROS", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    flush_delay_us: Option<u32>,
}

/// How much work each scenario does.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Scaling: tasks per worker process in each step.
    pub scaling_per_process: u64,
    /// Latency: tasks drained at each round trip, and pickups sampled one at a time.
    pub latency_tasks: u64,
    pub latency_pickups: u64,
    /// Partition: tasks, and how long each sleeps.
    pub partition_tasks: u64,
    pub partition_ms: u64,
    /// Restart: tasks.
    pub restart_tasks: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                scaling_per_process: 150,
                latency_tasks: 300,
                latency_pickups: 15,
                partition_tasks: 400,
                partition_ms: 200,
                restart_tasks: 1_000,
            }
        } else {
            Sizes {
                scaling_per_process: 3_000,
                latency_tasks: 4_000,
                latency_pickups: 100,
                partition_tasks: 3_000,
                partition_ms: 100,
                restart_tasks: 10_000,
            }
        }
    }
}

/// What one scenario measured, and what its checks found wrong.
#[derive(Debug)]
pub struct Measured {
    pub sections: Vec<Section>,
    pub problems: Vec<String>,
}

/// The running cluster: its directory, hosts and database, and the `hive` binary. Fields
/// drop in order: the database stops before its namespace goes, the directory goes last.
#[derive(Debug)]
pub struct Cluster {
    pub pg: Postgres,
    pub net: Network,
    pub hive: PathBuf,
    pub sizes: Sizes,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A file or directory in the run's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn run(args: ClusterArgs) -> Result<()> {
    if args.write_docs && args.quick {
        bail!("--write-docs records full runs; drop --quick");
    }
    if args.write_docs && args.flush_delay_us.is_some() {
        bail!("--write-docs records runs at the disk's own pace; drop --flush-delay-us");
    }
    sys::preflight()?;
    let tmp = std::env::temp_dir();
    for removed in leftovers::clean(&tmp)? {
        println!("cluster: removed {removed} (left by a run that died)");
    }
    let hive = match &args.hive_bin {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("--hive-bin {}", path.display()))?,
        None => build_hive(args.debug)?,
    };
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        let mut s = args.scenarios.clone();
        s.sort();
        s.dedup();
        s
    };
    let sizes = Sizes::new(args.quick);
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(async {
        tokio::select! {
            r = session(&tmp, hive, sizes, &scenarios, args.keep_going, args.flush_delay_us) => r,
            signal = sys::interrupted() => {
                // Dropping the session above ran every guard: nothing is left behind.
                bail!("interrupted by {signal}; everything the run created has been removed")
            }
        }
    })?;
    let mut problems = Vec::new();
    let mut written = Vec::new();
    for (scenario, result) in &results {
        match result {
            Ok(m) if m.problems.is_empty() => written.extend(m.sections.iter().cloned()),
            Ok(m) => problems.extend(
                m.problems
                    .iter()
                    .map(|p| format!("{}: {p}", scenario.name())),
            ),
            Err(e) => problems.push(format!("{}: {e:#}", scenario.name())),
        }
    }
    println!(
        "\ncluster: {} scenario(s) in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    if args.write_docs && !written.is_empty() {
        let doc = workspace_root().join("docs/SCALING.md");
        report::write_sections(&doc, &written)?;
        println!(
            "cluster: wrote {} section(s) of {}",
            written.len(),
            doc.display()
        );
    }
    if problems.is_empty() {
        println!("cluster: every task completed exactly once in every scenario");
        return Ok(());
    }
    for p in &problems {
        eprintln!("cluster: FAILED {p}");
    }
    bail!("{} check(s) failed", problems.len())
}

/// Sets the cluster up, runs the scenarios, and tears it all down (also when dropped
/// half-way, by an interrupt).
async fn session(
    tmp: &Path,
    hive: PathBuf,
    sizes: Sizes,
    scenarios: &[Scenario],
    keep_going: bool,
    flush_delay_us: Option<u32>,
) -> Result<Vec<(Scenario, Result<Measured>)>> {
    let pid = std::process::id();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}-{pid}-"))
        .tempdir_in(tmp)
        .context("creating the run's directory")?;
    // The database runs as `postgres`, which must reach its own directory inside this one.
    sys::chmod(dir.path(), 0o711)?;
    let net = Network::create(&format!("{NS_PREFIX}-{pid}"), WORKER_HOSTS).await?;
    println!(
        "cluster: hosts {} (db {}) and {} worker host(s) on a bridge in {}",
        net.db.ns,
        net.db.addr,
        net.hosts.len(),
        net.switch
    );
    let pg = Postgres::start(&dir.path().join("pg"), &net.db, flush_delay_us).await?;
    println!("cluster: {} listening on {}", pg.version, pg.addr);
    let cluster = Cluster {
        pg,
        net,
        hive,
        sizes,
        dir,
    };
    let mut results = Vec::new();
    for &scenario in scenarios {
        println!("\n== {} ==", scenario.name());
        let result = match scenario {
            Scenario::Scaling => scaling::run(&cluster).await,
            Scenario::Latency => latency::run(&cluster).await,
            Scenario::Partition => partition::run(&cluster).await,
            Scenario::Restart => restart::run(&cluster).await,
        };
        match &result {
            Ok(m) => {
                for s in &m.sections {
                    println!("{}", s.markdown());
                }
                for p in &m.problems {
                    eprintln!("cluster: {}: FAILED {p}", scenario.name());
                }
            }
            Err(e) => eprintln!("cluster: {}: FAILED {e:#}", scenario.name()),
        }
        let failed = result.as_ref().map_or(true, |m| !m.problems.is_empty());
        results.push((scenario, result));
        if failed && !keep_going {
            break;
        }
    }
    Ok(results)
}

/// The line every section ends with: what it was measured on.
fn machine(c: &Cluster) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let profile = c
        .hive
        .parent()
        .and_then(Path::file_name)
        .and_then(|p| p.to_str())
        .unwrap_or("?");
    let flush = c.pg.flush_delay_us.map_or(String::new(), |us| {
        format!(" with every WAL flush delayed {us} µs (`commit_delay`)")
    });
    format!(
        "Measured on {cpus} CPUs, Linux {}, {}{flush}, hive built `{profile}`; load average \
         (1, 5 min) {} at the end.",
        kernel.trim(),
        c.pg.version,
        sys::load_average()
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds `hive` (release unless `debug`) and returns its path.
fn build_hive(debug: bool) -> Result<PathBuf> {
    let profile = if debug { "debug" } else { "release" };
    println!("cluster: building hive ({profile})");
    let mut cargo =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "--quiet", "-p", "hive-cli", "--bin", "hive"]);
    if !debug {
        cargo.arg("--release");
    }
    let status = cargo.status().context("running cargo build")?;
    if !status.success() {
        bail!("building hive failed");
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("running cargo metadata")?;
    let bin = metadata
        .target_directory
        .as_std_path()
        .join(profile)
        .join("hive");
    if !bin.is_file() {
        bail!("cargo built hive but {} is missing", bin.display());
    }
    Ok(bin)
}
