//! `hive limit …` and `hive queue …`: limits per task type or concurrency key, and pausing
//! a task type. Stored in the database; every worker's next claim follows them.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use hive_client::models::{FlowRule, Rate, Scope};
use hive_client::{Limits, QueueInfo};
use serde_json::json;

use crate::{Context, output};

#[derive(Subcommand)]
pub enum LimitCommand {
    /// Set a type's or key's limits, replacing the ones it had: at most N running at once
    /// (--concurrency), at most N starts per period (--rate), or both; across every worker.
    Set(SetArgs),
    /// List every limit and pause.
    List,
    /// Lift a type's or key's limits (a paused type stays paused).
    Delete(ScopeArgs),
}

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Task types with their queued and running counts, pause and limits.
    List,
    /// Stop workers claiming a task type; running tasks finish.
    Pause {
        /// The task type.
        task_type: String,
        /// Pause a type no task, worker or schedule uses yet (otherwise refused as a
        /// likely typo).
        #[arg(long)]
        new_type: bool,
    },
    /// Let workers claim a paused task type again.
    Resume {
        /// The task type.
        task_type: String,
    },
}

/// Which scope: exactly one of --type and --key.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// A task type: the limit counts every task of it.
    #[arg(long = "type", value_name = "TYPE")]
    task_type: Option<String>,
    /// A concurrency key: the limit counts every task carrying it (it overrides the
    /// tasks' own --concurrency-limit).
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
}

impl ScopeArgs {
    fn scope(self) -> anyhow::Result<Scope> {
        let scope = match (self.task_type, self.key) {
            (Some(t), None) => Scope::Type(t),
            (None, Some(k)) => Scope::Key(k),
            _ => return Err(anyhow!("give exactly one of --type and --key")),
        };
        scope.validate()?;
        Ok(scope)
    }
}

#[derive(Args)]
pub struct SetArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// At most this many running at once, across every worker and machine.
    #[arg(long, value_name = "N")]
    concurrency: Option<u32>,
    /// At most N starts per period, as N/PERIOD: `60/1m`, `10/s`, `1000/1h`, `5/500ms`.
    #[arg(long, value_name = "N/PERIOD")]
    rate: Option<String>,
    /// Limit a type no task, worker or schedule uses yet (otherwise refused as a likely
    /// typo).
    #[arg(long)]
    new_type: bool,
}

pub async fn limit(ctx: &Context, cmd: LimitCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LimitCommand::Set(a) => {
            // Checked before connecting: bad input writes nothing.
            let scope = a.scope.scope()?;
            let limits = Limits {
                max_running: a.concurrency,
                rate: a.rate.as_deref().map(Rate::parse).transpose()?,
            };
            if limits.max_running.is_none() && limits.rate.is_none() {
                return Err(anyhow!("give --concurrency, --rate or both"));
            }
            if let Some(n) = limits.max_running {
                let mut probe = FlowRule::new(scope.clone(), chrono::Utc::now());
                probe.max_running = Some(n);
                probe.validate()?;
            }
            let client = ctx.client().await?;
            let rule = client
                .set_limits(scope, limits, a.new_type)
                .await
                .map_err(name_the_flag)?;
            output::report(
                ctx.json,
                &serde_json::to_value(&rule)?,
                format_args!("limit set on {}: {}", rule.scope, describe(&rule)),
            )?;
        }
        LimitCommand::List => {
            let rules = ctx.client().await?.list_flow_rules().await?;
            if ctx.json {
                output::json(&rules)?;
            } else {
                output::table(
                    ["KIND", "NAME", "CONCURRENCY", "RATE", "PAUSED", "UPDATED"],
                    rules.iter().map(|r| {
                        [
                            r.scope.kind().to_owned(),
                            r.scope.name().to_owned(),
                            r.max_running.map_or("-".into(), |n| n.to_string()),
                            r.rate.map_or("-".into(), |x| x.to_string()),
                            r.paused.to_string(),
                            r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        ]
                    }),
                );
            }
        }
        LimitCommand::Delete(a) => {
            let scope = a.scope()?;
            if !ctx.client().await?.delete_limits(&scope).await? {
                return Err(anyhow!("{scope} has no limit"));
            }
            output::report(
                ctx.json,
                &json!({ "deleted": scope }),
                format_args!("limits on {scope} lifted"),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queue(ctx: &Context, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCommand::List => {
            let queues = ctx.client().await?.list_queues().await?;
            if ctx.json {
                output::json(&queues)?;
            } else {
                output::table(
                    ["TYPE", "QUEUED", "RUNNING", "STATE", "CONCURRENCY", "RATE"],
                    queues.iter().map(queue_row),
                );
            }
        }
        QueueCommand::Pause {
            task_type,
            new_type,
        } => {
            hive_client::models::check_scope_name("task_type", &task_type)?;
            ctx.client()
                .await?
                .pause_queue(&task_type, new_type)
                .await
                .map_err(name_the_flag)?;
            output::report(
                ctx.json,
                &json!({ "task_type": task_type, "paused": true }),
                format_args!(
                    "queue {task_type} paused: no worker claims its tasks (what workers claimed \
                     already, buffered ones too, still runs)"
                ),
            )?;
        }
        QueueCommand::Resume { task_type } => {
            hive_client::models::check_scope_name("task_type", &task_type)?;
            if !ctx.client().await?.resume_queue(&task_type).await? {
                return Err(anyhow!("queue `{task_type}` is not paused"));
            }
            output::report(
                ctx.json,
                &json!({ "task_type": task_type, "paused": false }),
                format_args!("queue {task_type} resumed"),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(r: &FlowRule) -> String {
    let mut parts = Vec::new();
    if let Some(n) = r.max_running {
        parts.push(format!("at most {n} running"));
    }
    if let Some(rate) = r.rate {
        parts.push(format!("at most {rate} starts"));
    }
    if r.paused {
        parts.push("paused".into());
    }
    parts.join(", ")
}

fn queue_row(q: &QueueInfo) -> [String; 6] {
    [
        q.task_type.clone(),
        q.queued.to_string(),
        q.running.to_string(),
        if q.paused { "paused" } else { "active" }.into(),
        q.max_running.map_or("-".into(), |n| n.to_string()),
        q.rate.map_or("-".into(), |x| x.to_string()),
    ]
}

/// The library's refusal of a type nothing uses, with the flag that allows it here.
fn name_the_flag(e: hive_client::ops::Error) -> anyhow::Error {
    match e {
        hive_client::ops::Error::UnknownTaskType { task_type } => anyhow!(
            "unknown task type `{task_type}`: no task, worker or schedule uses it (check the \
             spelling, or pass --new-type to set it before its first task)"
        ),
        other => other.into(),
    }
}
