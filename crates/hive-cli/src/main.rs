//! `hive`: the operators' command line.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hive",
    version,
    about = "Hive: tasks, workers and execution plans on SQLite or Postgres"
)]
struct Cli {
    /// Database URL: sqlite:PATH, postgres://…, or memory:.
    #[arg(
        long,
        global = true,
        env = "HIVE_DATABASE_URL",
        default_value = "sqlite:hive.db",
        hide_env_values = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the schema.
    Migrate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Migrate => {
            hive_client::Client::connect(&cli.database_url).await?;
            println!(
                "migrated {}",
                hive_client::store::DatabaseUrl::new(&cli.database_url)
            );
        }
    }
    Ok(())
}
