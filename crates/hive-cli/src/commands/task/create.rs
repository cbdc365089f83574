//! `hive task create`: every option of a new task, read and validated before connecting.

use anyhow::anyhow;
use clap::Args;
use std::time::Duration;

use hive_client::{NewTask, RetryPolicy};

use crate::{Context, args, builtin, output};

#[derive(Args)]
pub struct CreateArgs {
    /// The task's title, shown in lists.
    #[arg(long)]
    title: String,
    /// The task's type: which workers claim it (`shell`, `noop` or `sleep` for `hive worker
    /// run`).
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
    /// Failed runs retried at most this many times (default 3).
    #[arg(long)]
    max_retries: Option<u32>,
    /// Seconds before the first retry; each retry waits up to twice as long as the one
    /// before (default 1).
    #[arg(long = "retry-base", value_name = "SECS")]
    retry_base: Option<f64>,
    /// The longest wait between retries, in seconds (default 300).
    #[arg(long = "retry-max", value_name = "SECS")]
    retry_max: Option<f64>,
    /// Wait exactly the backoff between retries, instead of a random time up to it.
    #[arg(long)]
    no_jitter: bool,
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
    /// Tasks sharing this key run at most --concurrency-limit at once across every worker
    /// (for example one account's jobs, one after another).
    #[arg(long, value_name = "KEY")]
    concurrency_key: Option<String>,
    /// How many tasks of --concurrency-key may run at once (default 1).
    #[arg(long, value_name = "N")]
    concurrency_limit: Option<u32>,
}

pub async fn run(ctx: &Context, a: CreateArgs) -> anyhow::Result<()> {
    let mut new = NewTask::new(a.title, a.task_type)
        .description(a.description)
        .priority(a.priority)
        .delay_secs(a.delay_secs);
    new.max_retries = a.max_retries;
    new.retry_policy = retry_policy(a.retry_base, a.retry_max, a.no_jitter)?;
    if let Some(t) = a.timeout_secs {
        new = new.timeout_secs(t);
    }
    if let Some(p) = a.payload {
        new = new.payload(args::read_payload(&p)?);
    }
    if let Some(at) = a.run_at {
        new = new.run_at(args::parse_time(&at)?);
    }
    let key = a.idempotency_key.clone();
    if let Some(key) = a.idempotency_key {
        new = new.idempotency_key(key);
    }
    new.concurrency_key = a.concurrency_key;
    new.concurrency_limit = a.concurrency_limit;
    new.validate(hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES)?;
    builtin::validate_payload(&new.task_type, &new.payload).map_err(|e| anyhow!(e))?;
    let done = ctx
        .client_creating()
        .await?
        .create_task_reporting(new)
        .await?;
    output::created(ctx.json, "task", done.id, done.created, key.as_deref())
}

/// The policy `--retry-base`, `--retry-max` and `--no-jitter` ask for; `None` when none
/// is given (the worker's policy applies).
fn retry_policy(
    base: Option<f64>,
    max: Option<f64>,
    no_jitter: bool,
) -> anyhow::Result<Option<RetryPolicy>> {
    if base.is_none() && max.is_none() && !no_jitter {
        return Ok(None);
    }
    let secs = |flag: &str, v: Option<f64>, default: Duration| match v {
        None => Ok(default),
        Some(s) => Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow!("--{flag} {s}: expected a number of seconds, 0 or more")),
    };
    let d = RetryPolicy::default();
    let mut policy = RetryPolicy::exponential(
        secs("retry-base", base, d.base)?,
        secs("retry-max", max, d.max)?,
    );
    if no_jitter {
        policy = policy.without_jitter();
    }
    policy.validate("retry_policy")?;
    Ok(Some(policy))
}
