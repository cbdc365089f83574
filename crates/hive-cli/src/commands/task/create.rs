//! `hive task create`: every option of a new task, read and validated before connecting.

use anyhow::{Context as _, anyhow};
use clap::Args;
use hive_client::NewTask;

use crate::{Context, args, output, shell};

#[derive(Args)]
pub struct CreateArgs {
    /// The task's title, shown in lists.
    #[arg(long)]
    title: String,
    /// The task's type: which workers claim it (`shell` for `hive worker run`).
    #[arg(long = "type")]
    task_type: String,
    /// A longer description.
    #[arg(long, default_value = "")]
    description: String,
    /// JSON payload, e.g. '{"command": "make"}'; `@FILE` reads it from a file, `-` from
    /// standard input.
    #[arg(long)]
    payload: Option<String>,
    /// Higher runs first (may be negative).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    priority: i32,
    /// Failed runs retried at most this many times.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Seconds a run may last before the worker stops it (default: the worker's).
    #[arg(long = "timeout")]
    timeout_secs: Option<u32>,
    /// Seconds to wait before the task can first be claimed.
    #[arg(long = "delay", default_value_t = 0)]
    delay_secs: u64,
    /// Not claimable before this time, in RFC 3339 (2025-06-01T12:00:00Z); with --delay,
    /// whichever is later.
    #[arg(long, value_name = "TIME")]
    run_at: Option<String>,
    /// A key that makes the create safe to repeat: a second create with the same key
    /// creates nothing and prints the first task's id.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

pub async fn run(ctx: &Context, a: CreateArgs) -> anyhow::Result<()> {
    let mut new = NewTask::new(a.title, a.task_type)
        .description(a.description)
        .priority(a.priority)
        .max_retries(a.max_retries)
        .delay_secs(a.delay_secs);
    if let Some(t) = a.timeout_secs {
        new = new.timeout_secs(t);
    }
    if let Some(p) = a.payload {
        new = new.payload(read_payload(&p)?);
    }
    if let Some(at) = a.run_at {
        new = new.run_at(args::parse_time(&at)?);
    }
    if let Some(key) = a.idempotency_key {
        new = new.idempotency_key(key);
    }
    new.validate(hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES)?;
    if new.task_type == shell::SHELL {
        shell::validate_payload(&new.payload).map_err(|e| anyhow!(e))?;
    }
    let id = ctx.client_creating().await?.create_task(new).await?;
    output::created(ctx.json, id)
}

/// A `--payload` value: JSON text, `@FILE`, or `-` for standard input.
fn read_payload(arg: &str) -> anyhow::Result<serde_json::Value> {
    let (text, from) = if arg == "-" {
        let text = std::io::read_to_string(std::io::stdin())
            .context("cannot read --payload from stdin")?;
        (text, "stdin".to_owned())
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --payload file `{path}`"))?;
        (text, format!("`{path}`"))
    } else {
        (arg.to_owned(), "--payload".to_owned())
    };
    serde_json::from_str(&text).with_context(|| format!("{from} is not valid JSON"))
}
