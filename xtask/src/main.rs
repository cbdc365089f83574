//! `cargo xtask`: Hive's automation, in Rust rather than shell scripts.

mod arch;
mod bench;
mod cluster;
mod soak;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// The bench measures Hive with the allocator the `hive` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Hive's automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations to a database (harmless when already applied).
    Migrate {
        /// Defaults to HIVE_DATABASE_URL, else sqlite:hive.db.
        #[arg(long, env = "HIVE_DATABASE_URL", default_value = "sqlite:hive.db")]
        database_url: String,
    },
    /// Fail when a crate depends on a crate above it in the layering.
    CheckArch,
    /// Measure throughput and pickup latency per backend against raw-SQL baselines.
    Bench(bench::BenchArgs),
    /// Run the reliability tests at full size (HIVE_SOAK=1, release), backend by backend.
    Soak(soak::SoakArgs),
    /// Many worker hosts on one Postgres, in network namespaces: scaling, latency, a
    /// partition and a database restart, each checked for exactly-once completion (root).
    Cluster(cluster::ClusterArgs),
    /// The delaying relay `cluster` runs on its database host (internal).
    #[command(hide = true)]
    ClusterRelay(cluster::relay::RelayArgs),
}

fn main() -> std::process::ExitCode {
    // Opt-in, for profiling a benchmark: `RUST_LOG=sqlx::query=debug` logs every statement
    // with its duration, and `hive_client::worker=debug` every batch a worker commits.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Migrate { database_url } => migrate(&database_url),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::ClusterRelay(args) => cluster::relay::serve(args),
        Command::CheckArch => {
            let metadata = cargo_metadata::MetadataCommand::new()
                .exec()
                .context("running cargo metadata")?;
            let mut violations = arch::check(&metadata);
            let store_src = metadata
                .workspace_root
                .as_std_path()
                .join("crates/hive-store/src");
            violations.extend(arch::check_backends(&store_src).context("reading hive-store")?);
            if violations.is_empty() {
                println!(
                    "check-arch: layering holds (models <- store <- ops <- client <- cli/apps), \
                     and no hive-store backend imports from another"
                );
                return Ok(());
            }
            for v in &violations {
                eprintln!("check-arch: {v}");
            }
            bail!("{} layering violation(s)", violations.len())
        }
    }
}

fn migrate(url: &str) -> Result<()> {
    let shown = hive_store::DatabaseUrl::new(url).redacted();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let options = hive_store::ConnectOptions::default();
        hive_store::connect_with(url, &options)
            .await
            .with_context(|| format!("migrating {shown}"))
    })?;
    println!("migrations applied to {shown}");
    Ok(())
}
