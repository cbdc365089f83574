//! `hive`: the operators' command line over any Hive database.

mod args;
mod builtin;
mod commands;
mod leftfile;
mod logging;
mod orphans;
mod output;
mod pipes;
mod planfile;
mod process_group;
mod progressfile;
mod shell;
mod signals;
mod spawnfile;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use hive_client::ConnectOptions;
use hive_client::store::SchemaPolicy;

/// A worker's pace is mostly allocation (tasks, futures, rows): mimalloc drained the memory
/// store 24% faster than glibc's allocator and ran its plans 30–45% faster (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Periodic tasks: cron schedules, and a scheduler to run alone.
    #[command(subcommand)]
    Schedule(commands::schedule::ScheduleCommand),
    /// Limits across every worker: at most N running or N starts per period, per task
    /// type or concurrency key.
    #[command(subcommand)]
    Limit(commands::flow::LimitCommand),
    /// Task types: their counts, pause and resume.
    #[command(subcommand)]
    Queue(commands::flow::QueueCommand),
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
    /// Every client a command opened, closed before the process exits (see [`Context::close`]).
    clients: std::sync::Mutex<Vec<hive_client::Client>>,
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
        let client = hive_client::Client::connect_with(
            &self.database_url,
            &connect_options(schema),
            Default::default(),
        )
        .await?;
        self.close_at_exit(&client);
        Ok(client)
    }

    /// For a long-running command (a worker, the scheduler, the dashboard): a client on a
    /// database that must already exist, waiting for it while it cannot be reached (started
    /// before its server, or during an outage), logging each retry; `None` if `stop` fires
    /// first. A SQLite path that does not exist fails at once.
    pub async fn client_when_up(
        &self,
        stop: &mut signals::Interrupts,
    ) -> anyhow::Result<Option<hive_client::Client>> {
        let options = connect_options(SchemaPolicy::Existing);
        let retry = hive_client::ConnectRetry::default();
        let connect = retry.connect_with(&self.database_url, &options, Default::default());
        let client = tokio::select! {
            client = connect => client?,
            () = stop.next() => return Ok(None),
        };
        self.close_at_exit(&client);
        Ok(Some(client))
    }

    /// Has [`Context::close`] close this client's connections before the process exits.
    pub fn close_at_exit(&self, client: &hive_client::Client) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(client.clone());
    }

    /// Closes the clients commands opened. A process that exits with its SQLite connections
    /// open may leave the write-ahead log beside the file, which a reader without write
    /// access to the directory cannot use.
    async fn close(&self) {
        let clients = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()));
        for client in clients {
            client.close().await;
        }
    }
}

/// How every command connects: the defaults, with its schema policy.
fn connect_options(schema: SchemaPolicy) -> ConnectOptions {
    ConnectOptions {
        schema,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // A worker says what it does (its start, each failed task; from the runtime, what it
    // reaps and what an idle worker waits for) unless told otherwise; every other command,
    // and the other libraries under the worker, only warn. A one-off command does
    // not print the driver's slow-statement warnings (whole SQL texts): reading or
    // submitting a large plan is slow by its size, and the person waiting for it knows.
    // What runs for long (workers, schedulers, the dashboard) keeps them for its operator.
    let default_log = match &cli.command {
        Command::Worker(commands::worker::WorkerCommand::Run { .. })
        | Command::Schedule(commands::schedule::ScheduleCommand::Run { .. }) => {
            "warn,hive::commands=info,hive::output=info,hive_client=info"
        }
        Command::Serve(_) => "warn",
        _ => "warn,sqlx::query=error",
    };
    let _log = logging::init(default_log);
    let ctx = Context {
        database_url: cli.database_url,
        database_url_given: given_on_command_line(&matches, "database_url"),
        json: cli.json,
        clients: Default::default(),
    };
    let result = match cli.command {
        Command::Migrate => commands::migrate(&ctx).await,
        Command::Task(c) => commands::task::run(&ctx, c).await,
        Command::Worker(c) => commands::worker::run(&ctx, c).await,
        Command::Plan(c) => commands::plan::run(&ctx, c).await,
        Command::Schedule(c) => commands::schedule::run(&ctx, c).await,
        Command::Limit(c) => commands::flow::limit(&ctx, c).await,
        Command::Queue(c) => commands::flow::queue(&ctx, c).await,
        Command::Status => commands::status(&ctx).await,
        Command::Demo(args) => commands::demo::run(&ctx, args).await,
        Command::Serve(args) => commands::serve::run(&ctx, args).await,
    };
    ctx.close().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line naming the problem; the chain is joined so nothing is hidden.
            output::error(ctx.json, &format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// A command line clap refused. With `--json` anywhere on it, the message is `{"error": …}`
/// (exit 2, as clap's own); help and version requests print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let as_json = std::env::args_os().any(|a| a == "--json");
    let shows_text = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    // Lossy: an argument that is not UTF-8 is the error being reported, not a panic.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(message) = negative_number(&e, &args) {
        if as_json {
            output::error(true, &message);
        } else {
            eprintln!("error: {message}\n\nFor more information, try '--help'.");
        }
        return ExitCode::from(2);
    }
    if !as_json || shows_text {
        e.exit();
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    output::error(true, first.strip_prefix("error: ").unwrap_or(first));
    ExitCode::from(2)
}

/// clap reads a negative number after an option that takes none as a flag it does not know
/// ("unexpected argument '-1' found"); this names the option and what it takes instead.
fn negative_number(e: &clap::Error, args: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(found)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // clap names only the start of `-2.5` (`-2`, as a short flag).
    let at = args
        .iter()
        .position(|a| a.starts_with(found.as_str()) && a.parse::<f64>().is_ok_and(|n| n < 0.0))?;
    let option = args[..at].last().filter(|o| o.starts_with("--"))?;
    Some(format!(
        "invalid value '{}' for '{option}': it cannot be negative",
        args[at]
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command, with the path of commands leading to it.
    fn every_arg(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_owned(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            every_arg(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn a_negative_number_for_an_option_that_takes_none_names_the_option() {
        let line = |l: &str| l.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let refused = |l: &str| {
            let args = line(l);
            let e = Cli::command().try_get_matches_from(&args).unwrap_err();
            negative_number(&e, &args)
        };
        assert_eq!(
            refused("hive task create --title t --type a --max-retries -1").as_deref(),
            Some("invalid value '-1' for '--max-retries': it cannot be negative")
        );
        assert_eq!(
            refused("hive worker run --concurrency -2.5").as_deref(),
            Some("invalid value '-2.5' for '--concurrency': it cannot be negative")
        );
        assert_eq!(refused("hive task create --title t -x"), None);
        assert_eq!(refused("hive task list -3"), None, "after no option");
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_option_and_argument_has_help() {
        let mut cmd = Cli::command();
        // Builds the help and version flags clap adds, so they are checked too.
        cmd.build();
        let mut args = Vec::new();
        every_arg(&cmd, "hive", &mut args);
        let missing: Vec<String> = args
            .iter()
            .filter(|(_, a)| a.get_help().is_none_or(|h| h.to_string().trim().is_empty()))
            .map(|(path, a)| format!("{path} {}", a.get_id()))
            .collect();
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
        assert!(
            args.len() > 40,
            "the walk found only {} arguments",
            args.len()
        );
        for sub in cmd.get_subcommands() {
            for leaf in std::iter::once(sub).chain(sub.get_subcommands()) {
                assert!(
                    leaf.get_about().is_some(),
                    "`{}` has no help",
                    leaf.get_name()
                );
            }
        }
    }

    #[test]
    fn status_arguments_list_every_status_in_their_help() {
        let cmd = Cli::command();
        let mut args = Vec::new();
        every_arg(&cmd, "hive", &mut args);
        let statuses: Vec<_> = args
            .iter()
            .filter(|(_, a)| a.get_id() == "status" || a.get_id() == "statuses")
            .collect();
        assert!(statuses.len() >= 4, "{} status arguments", statuses.len());
        for (path, a) in statuses {
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            // `hive plan …` takes a plan's statuses, every other command a task's.
            let names: Vec<&str> = if path.starts_with("hive plan") {
                hive_client::PlanStatus::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect()
            } else {
                hive_client::TaskStatus::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect()
            };
            for s in names {
                assert!(help.contains(s), "{path} {}: {help}", a.get_id());
            }
        }
    }
}
