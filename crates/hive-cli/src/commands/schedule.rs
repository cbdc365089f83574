//! `hive schedule …`: periodic tasks and plans from cron expressions, and a scheduler of
//! its own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use hive_client::SchedulePut;
use hive_client::models::{Missed, NewSchedule, Overlap, Scheduled, ScheduledTask};
use hive_client::ops::ScheduleView;
use hive_client::ops::Triggered;
use hive_client::store::KeyedWork;
use serde_json::json;

use crate::{Context, args, builtin, output, planfile};

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: a task (or, with --plan, a plan) created at each slot of a cron
    /// expression.
    Add(AddArgs),
    /// List schedules with their last and next fire times.
    List,
    /// Show one schedule.
    Get {
        /// The schedule's name.
        name: String,
    },
    /// Stop a schedule from firing.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Start a paused schedule again, from now (slots passed while paused create nothing).
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// A schedule's last slots, newest first, each with the task or plan it made and that
    /// work's status (`-`: skipped, missed, paused, pruned, or before a redefinition).
    /// Manual runs are not slots.
    Runs {
        /// The schedule's name.
        name: String,
        /// How many slots, at most 100.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
    },
    /// Run a schedule by hand now, paused or not: create its task (or submit its plan),
    /// marked `"manual": true` in its metadata. It is not a slot's fire, but while its work
    /// is unfinished a schedule that skips or queues overlaps holds its slots back.
    Trigger {
        /// The schedule's name.
        name: String,
        /// Makes the command safe to repeat: a second run with the same key creates
        /// nothing and prints the first one's id.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Delete a schedule; the tasks and plans it created stay.
    Delete {
        /// The schedule's name.
        name: String,
    },
    /// Run only the scheduler (workers run it too) until Ctrl-C: any number may run at
    /// once, each slot still creates one task or plan.
    Run {
        /// How often to look for due schedules, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

/// What a slot does while the previous slot's task or plan is unfinished.
#[derive(Clone, Copy, ValueEnum)]
pub enum OverlapArg {
    /// Create it anyway.
    Allow,
    /// Create nothing for the slot (the next slot looks again).
    Skip,
    /// Wait: create the slot's once the previous slot's has ended.
    Queue,
}

/// What a schedule does with slots missed while no scheduler ran.
#[derive(Clone, Copy, ValueEnum)]
pub enum MissedArg {
    /// Only the latest missed slot creates its task or plan.
    Skip,
    /// Every missed slot creates its task or plan, up to --catch-up-limit.
    CatchUp,
}

#[derive(Args)]
#[command(group(ArgGroup::new("creates").required(true).args(["title", "plan"])))]
pub struct AddArgs {
    /// A unique name.
    name: String,
    /// Cron expression: 5 fields (minute hour day month weekday) or 6 (seconds first).
    #[arg(long)]
    cron: String,
    /// IANA time zone the expression follows, daylight saving included.
    #[arg(long = "tz", default_value = "UTC")]
    timezone: String,
    /// The title of each task created.
    #[arg(long, requires = "task_type")]
    title: Option<String>,
    /// The type of each task created (`shell`, `noop` or `sleep` for `hive worker run`).
    #[arg(long = "type", requires = "title")]
    task_type: Option<String>,
    /// Create a plan at each slot instead of a task: a plan file as `hive plan submit`
    /// reads it (JSON or TOML, `-` for standard input), without an idempotency key (each
    /// slot's plan gets its schedule's and slot's).
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "title", "task_type", "payload", "priority", "max_retries", "timeout_secs",
        "concurrency_key",
    ])]
    plan: Option<PathBuf>,
    /// JSON payload of each task; `@FILE` reads it from a file, `-` from standard input.
    #[arg(long)]
    payload: Option<String>,
    /// Priority of each task (higher runs first).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    priority: i32,
    /// Retries of each task (default 3).
    #[arg(long)]
    max_retries: Option<u32>,
    /// Seconds a run of each task may last.
    #[arg(long = "timeout")]
    timeout_secs: Option<u32>,
    /// A concurrency key for each task created (give the schedule's name so a slot's task
    /// never overlaps the previous one's).
    #[arg(long, value_name = "KEY")]
    concurrency_key: Option<String>,
    /// What to do with slots missed while no scheduler ran.
    #[arg(long, value_enum, default_value = "skip")]
    missed: MissedArg,
    /// While the previous slot's task or plan is unfinished: create the slot's anyway
    /// (`allow`), skip the slot (`skip`: a nightly workflow that overruns is not started
    /// twice; goes with `--missed skip` or a catch-up limit of 1), or start it late, once
    /// the previous one has ended (`queue`: slots passing meanwhile are missed slots, the
    /// latest waiting, or with `--missed catch-up` the latest N, one after another).
    #[arg(long, value_enum, default_value = "allow")]
    overlap: OverlapArg,
    /// With `--missed catch-up`: at most this many missed slots create their task or plan
    /// at once (default 10).
    #[arg(long, value_name = "N")]
    catch_up_limit: Option<u32>,
    /// Create it paused (with --replace, only when it is created: an existing schedule
    /// stays paused or active as it is).
    #[arg(long)]
    paused: bool,
    /// If a schedule of this name exists, give it this definition instead of failing: it
    /// keeps whether it is paused and its last fire, and continues from now (the new
    /// expression's earlier slots are not missed slots). The same definition changes
    /// nothing.
    #[arg(long)]
    replace: bool,
}

/// Missed slots a catch-up schedule creates at once when `--catch-up-limit` is not given.
const DEFAULT_CATCH_UP_LIMIT: u32 = 10;

impl AddArgs {
    fn into_new(self) -> anyhow::Result<NewSchedule> {
        let creates = match (self.plan, self.title, self.task_type) {
            (Some(file), ..) => Scheduled::Plan(planfile::read_for_workers(&file)?),
            (None, Some(title), Some(task_type)) => {
                let mut task = ScheduledTask::new(title, task_type);
                if let Some(p) = self.payload {
                    task.payload = args::read_payload(&p)?;
                }
                task.priority = self.priority;
                task.max_retries = self.max_retries;
                task.timeout_secs = self.timeout_secs;
                task.concurrency_key = self.concurrency_key;
                builtin::validate_payload(&task.task_type, &task.payload)
                    .map_err(|e| anyhow!(e))?;
                Scheduled::Task(task)
            }
            // clap requires both unless --plan is given.
            (None, ..) => anyhow::bail!("give --title and --type, or --plan FILE"),
        };
        let missed = match (self.missed, self.catch_up_limit) {
            (MissedArg::Skip, Some(_)) => {
                anyhow::bail!(
                    "--catch-up-limit: only with --missed catch-up (missed slots are skipped)"
                )
            }
            (MissedArg::Skip, None) => Missed::Skip,
            (MissedArg::CatchUp, limit) => Missed::CatchUp {
                limit: limit.unwrap_or(DEFAULT_CATCH_UP_LIMIT),
            },
        };
        let overlap = match self.overlap {
            OverlapArg::Allow => Overlap::Allow,
            OverlapArg::Skip => Overlap::Skip,
            OverlapArg::Queue => Overlap::Queue,
        };
        let new = NewSchedule::new(self.name, self.cron, creates)
            .timezone(self.timezone)
            .missed(missed)
            .overlap(overlap)
            .enabled(!self.paused);
        new.validate(hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES)?;
        Ok(new)
    }
}

fn not_found(name: &str) -> anyhow::Error {
    anyhow!("schedule `{name}` not found")
}

pub async fn run(ctx: &Context, cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ScheduleCommand::Add(a) => {
            let replace = a.replace;
            // Parsed and validated before connecting: bad input writes nothing.
            let new = a.into_new()?;
            let client = ctx.client_creating().await?;
            let (s, change) = if replace {
                client.put_schedule(new).await?
            } else {
                (client.add_schedule(new).await?, SchedulePut::Created)
            };
            let mut json = serde_json::to_value(&s)?;
            json["change"] = serde_json::to_value(change)?;
            let done = match change {
                SchedulePut::Created => "added",
                SchedulePut::Redefined => "redefined",
                SchedulePut::Unchanged => "unchanged",
            };
            let next = output::opt(s.pending_slot());
            output::report(
                ctx.json,
                &json,
                format_args!("schedule {} {done}; next at {next}", s.name),
            )?;
        }
        ScheduleCommand::List => {
            let client = ctx.client().await?;
            let schedules = client.list_schedule_views().await?;
            if ctx.json {
                output::json(&schedules)?;
            } else {
                output::table(HEADER, schedules.iter().map(row));
            }
        }
        ScheduleCommand::Get { name } => {
            let client = ctx.client().await?;
            let s = client
                .get_schedule_view(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            if ctx.json {
                output::json(&s)?;
            } else {
                detail(&s);
            }
        }
        ScheduleCommand::Runs { name, limit } => {
            let history = ctx
                .client()
                .await?
                .schedule_history(&name, limit)
                .await?
                .ok_or_else(|| not_found(&name))?;
            if ctx.json {
                output::json(&history)?;
            } else {
                output::table(
                    ["SLOT", "RUN", "STATUS", "ID"],
                    history.iter().map(|h| {
                        let (kind, status, id) = match h.run {
                            Some(KeyedWork::Task { id, status }) => {
                                ("task", status.to_string(), id.to_string())
                            }
                            Some(KeyedWork::Plan { id, status }) => {
                                ("plan", status.to_string(), id.to_string())
                            }
                            None => ("-", "-".into(), "-".into()),
                        };
                        [output::opt(Some(h.slot)), kind.into(), status, id]
                    }),
                );
            }
        }
        ScheduleCommand::Trigger {
            name,
            idempotency_key,
        } => {
            if idempotency_key
                .as_deref()
                .is_some_and(|k| k.trim().is_empty())
            {
                anyhow::bail!("--idempotency-key: must not be empty");
            }
            let made = ctx
                .client()
                .await?
                .trigger_schedule(&name, idempotency_key.as_deref())
                .await?;
            let (kind, id) = match made {
                Triggered::Task(id) => ("task", id.to_string()),
                Triggered::Plan(id) => ("plan", id.to_string()),
            };
            output::report(
                ctx.json,
                &json!({ "name": name, "kind": kind, "id": id }),
                format_args!("schedule {name} run by hand: {kind} {id}"),
            )?;
        }
        ScheduleCommand::Pause { name } => enable(ctx, &name, false).await?,
        ScheduleCommand::Resume { name } => enable(ctx, &name, true).await?,
        ScheduleCommand::Delete { name } => {
            if !ctx.client().await?.delete_schedule(&name).await? {
                return Err(not_found(&name));
            }
            output::report(
                ctx.json,
                &json!({ "deleted": name }),
                format_args!("schedule {name} deleted"),
            )?;
        }
        ScheduleCommand::Run { interval_ms } => scheduler(ctx, interval_ms).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Pauses (`enabled` false) or resumes a schedule.
async fn enable(ctx: &Context, name: &str, enabled: bool) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let found = if enabled {
        client.resume_schedule(name).await?
    } else {
        client.pause_schedule(name).await?
    };
    if !found {
        return Err(not_found(name));
    }
    let done = if enabled { "resumed" } else { "paused" };
    output::report(
        ctx.json,
        &json!({ "name": name, "enabled": enabled }),
        format_args!("schedule {name} {done}"),
    )
}

const HEADER: [&str; 9] = [
    "NAME", "CRON", "TZ", "ENABLED", "LAST", "LAST RUN", "NEXT", "TYPE", "TITLE",
];

fn row(v: &ScheduleView) -> [String; 9] {
    let s = &v.schedule;
    let last_run = match v.last_run {
        Some(KeyedWork::Task { status, .. }) => format!("task {status}"),
        Some(KeyedWork::Plan { status, .. }) => format!("plan {status}"),
        None => "-".into(),
    };
    [
        s.name.clone(),
        s.cron.clone(),
        s.timezone.clone(),
        s.enabled.to_string(),
        output::opt(s.last_fired),
        last_run,
        match v.pending_slot {
            Some(t) if v.overdue => format!("{t} (overdue)"),
            t => output::opt(t),
        },
        match &s.creates {
            Scheduled::Task(t) => t.task_type.clone(),
            Scheduled::Plan(p) => format!("plan of {}", p.subtasks.len()),
        },
        output::clip(s.creates.title(), 40),
    ]
}

/// One schedule, every rule and where it stands, a line each.
fn detail(v: &ScheduleView) {
    let s = &v.schedule;
    let [_, cron, zone, _, last, last_run, next, creates, _] = row(v);
    let missed = match s.missed {
        Missed::Skip => "skip (only the latest missed slot runs)".to_owned(),
        Missed::CatchUp { limit } => format!("catch up (at most {limit} missed slots)"),
    };
    let state = if s.enabled { "active" } else { "paused" };
    output::outln!("schedule {}", output::escape(&s.name));
    output::outln!(
        "cron:        {} ({})",
        output::escape(&cron),
        output::escape(&zone)
    );
    output::outln!("state:       {state}");
    output::outln!(
        "creates:     {}: {}",
        output::escape(&creates),
        output::escape(s.creates.title())
    );
    output::outln!("missed:      {missed}");
    output::outln!("overlap:     {}", s.overlap.as_str());
    output::outln!("last slot:   {last} ({last_run})");
    output::outln!(
        "last manual: {}",
        output::escape(s.last_manual.as_deref().unwrap_or("-"))
    );
    output::outln!("next slot:   {next}");
    output::outln!("done until:  {}", s.done_until);
}

/// Fires due schedules every `interval_ms` until Ctrl-C or SIGTERM.
async fn scheduler(ctx: &Context, interval_ms: u64) -> anyhow::Result<()> {
    if interval_ms == 0 {
        anyhow::bail!("--interval-ms must be at least 1");
    }
    // Installed before connecting: a signal while the database does not answer yet stops
    // the scheduler as it would later, with its report, rather than by the default action.
    let mut stop = crate::signals::Interrupts::install()?;
    // Slots fired, and slots skipped because their previous slot's work was unfinished.
    let mut fired = (0, 0);
    let Some(client) = ctx.client_when_up(&mut stop).await? else {
        return report_fired(ctx, fired);
    };
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(interval_ms, "scheduler started");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.next() => break,
        }
        // Told to stop mid-step, the step gets STEP_GRACE to end, so the report counts
        // what it created; one waiting on a database that does not answer (or on another
        // writer) is then cut short, as it is at a second signal. A step cut between its
        // statements leaves nothing wrong: a slot claimed whose work is missing is
        // submitted again by the next scheduler, and a slot not claimed stays due.
        let step = client.fire_due_schedules();
        tokio::pin!(step);
        let (step, stopping) = tokio::select! {
            step = &mut step => (Some(step), false),
            () = stop.next() => {
                let ended = tokio::select! {
                    ended = tokio::time::timeout(STEP_GRACE, &mut step) => ended.ok(),
                    () = stop.next() => None,
                };
                (ended, true)
            }
        };
        match step {
            Some(Ok(r)) => {
                fired.0 += r.slots;
                fired.1 += r.skipped;
            }
            // A blip must not end the scheduler: the next tick tries again.
            Some(Err(e)) if e.is_transient() => {
                tracing::warn!(error = %e, "scheduler step failed; retrying")
            }
            Some(Err(e)) if !stopping => return Err(e.into()),
            Some(Err(e)) => tracing::warn!(error = %e, "the last scheduler step failed"),
            None => {}
        }
        if stopping {
            break;
        }
    }
    report_fired(ctx, fired)
}

/// How long a scheduler told to stop lets its step in flight end.
const STEP_GRACE: Duration = Duration::from_secs(2);

fn report_fired(ctx: &Context, (fired, skipped): (usize, usize)) -> anyhow::Result<()> {
    output::report(
        ctx.json,
        &json!({ "slots_fired": fired, "slots_skipped": skipped }),
        format_args!("scheduler stopped: {fired} slots fired, {skipped} skipped (overlaps)"),
    )
}
