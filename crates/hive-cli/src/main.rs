//! `hive`: the operators' command line over any Hive database.

mod commands;
mod output;
mod planfile;
mod shell;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hive: tasks, workers and execution plans on SQLite or Postgres.
#[derive(Parser)]
#[command(name = "hive", version)]
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
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the schema.
    Migrate,
    /// Create, inspect and change tasks.
    #[command(subcommand)]
    Task(commands::task::TaskCommand),
    /// List workers, or run one.
    #[command(subcommand)]
    Worker(commands::worker::WorkerCommand),
    /// Submit and follow execution plans.
    #[command(subcommand)]
    Plan(commands::plan::PlanCommand),
    /// Tasks per status, active workers, plans in progress.
    Status,
    /// Run a generated plan end to end on a fresh SQLite file, with in-process workers.
    Demo(commands::demo::DemoArgs),
}

/// Everything a command needs from the global flags.
#[derive(Debug)]
pub struct Context {
    pub database_url: String,
    pub json: bool,
}

impl Context {
    pub async fn client(&self) -> anyhow::Result<hive_client::Client> {
        Ok(hive_client::Client::connect(&self.database_url).await?)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HIVE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let ctx = Context {
        database_url: cli.database_url,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Migrate => commands::migrate(&ctx).await,
        Command::Task(c) => commands::task::run(&ctx, c).await,
        Command::Worker(c) => commands::worker::run(&ctx, c).await,
        Command::Plan(c) => commands::plan::run(&ctx, c).await,
        Command::Status => commands::status(&ctx).await,
        Command::Demo(args) => commands::demo::run(&ctx, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line naming the problem; the chain is joined so nothing is hidden.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
