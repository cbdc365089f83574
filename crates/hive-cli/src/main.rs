//! `hive`: the operators' command line over any Hive database.

mod commands;
mod logging;
mod output;
mod planfile;
mod shell;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use hive_client::ConnectOptions;
use hive_client::store::SchemaPolicy;

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
    /// Serve the operator dashboard, its JSON API and /metrics.
    Serve(commands::serve::ServeArgs),
    /// Run a generated plan end to end with in-process workers, on a fresh SQLite file in a
    /// temporary directory (HIVE_DATABASE_URL is ignored; give --database-url on the command
    /// line to use another database).
    Demo(commands::demo::DemoArgs),
}

/// Everything a command needs from the global flags.
#[derive(Debug)]
pub struct Context {
    pub database_url: String,
    /// Whether `--database-url` was given on the command line (not from the environment
    /// or the default): `hive demo` uses a temporary database unless it was.
    pub database_url_given: bool,
    pub json: bool,
}

impl Context {
    /// A client on a database that must already hold Hive's schema: reading and changing
    /// existing work never creates a database or tables (a typo in a path is an error, not
    /// an empty database).
    pub async fn client(&self) -> anyhow::Result<hive_client::Client> {
        self.client_with(SchemaPolicy::Existing).await
    }

    /// A client that may create the schema in an empty (or new SQLite) database, for
    /// commands that create work; a database holding other tables and no Hive schema is
    /// refused.
    pub async fn client_creating(&self) -> anyhow::Result<hive_client::Client> {
        self.client_with(SchemaPolicy::MigrateIfOwned).await
    }

    pub async fn client_with(&self, schema: SchemaPolicy) -> anyhow::Result<hive_client::Client> {
        let options = ConnectOptions {
            schema,
            ..Default::default()
        };
        Ok(
            hive_client::Client::connect_with(&self.database_url, &options, Default::default())
                .await?,
        )
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let _log = logging::init("warn");
    let ctx = Context {
        database_url: cli.database_url,
        database_url_given: given_on_command_line(&matches, "database_url"),
        json: cli.json,
    };
    let result = match cli.command {
        Command::Migrate => commands::migrate(&ctx).await,
        Command::Task(c) => commands::task::run(&ctx, c).await,
        Command::Worker(c) => commands::worker::run(&ctx, c).await,
        Command::Plan(c) => commands::plan::run(&ctx, c).await,
        Command::Status => commands::status(&ctx).await,
        Command::Demo(args) => commands::demo::run(&ctx, args).await,
        Command::Serve(args) => commands::serve::run(&ctx, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line naming the problem; the chain is joined so nothing is hidden.
            let message = format!("{e:#}").replace('\n', " ");
            logging::eprint_line(&format!("error: {message}"));
            ExitCode::FAILURE
        }
    }
}

/// Whether a (global) argument was given on the command line, at the top or on the
/// subcommand that was run.
fn given_on_command_line(matches: &clap::ArgMatches, id: &str) -> bool {
    let mut m = Some(matches);
    while let Some(level) = m {
        if level.value_source(id) == Some(ValueSource::CommandLine) {
            return true;
        }
        m = level.subcommand().map(|(_, sub)| sub);
    }
    false
}
