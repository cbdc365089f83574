//! The `hive` subcommands.

pub mod demo;
pub mod plan;
pub mod schedule;
pub mod task;
pub mod worker;

use std::process::ExitCode;

use hive_client::PlanStatus;
use serde::Serialize;

use crate::{Context, output};

pub async fn migrate(ctx: &Context) -> anyhow::Result<ExitCode> {
    ctx.client_with(hive_client::store::SchemaPolicy::Migrate)
        .await?;
    let url = hive_client::store::DatabaseUrl::new(&ctx.database_url).to_string();
    output::report(
        ctx.json,
        &serde_json::json!({ "migrated": url }),
        format_args!("migrated {url}"),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Status {
    tasks: hive_client::store::StatusCounts,
    active_workers: usize,
    plans_in_progress: usize,
}

pub async fn status(ctx: &Context) -> anyhow::Result<ExitCode> {
    let client = ctx.client().await?;
    let status = Status {
        tasks: client.count_tasks(None).await?,
        active_workers: client.get_active_workers(None).await?.len(),
        plans_in_progress: client
            .list_plans(Some(PlanStatus::InProgress), None)
            .await?
            .len(),
    };
    if ctx.json {
        output::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::table(
        ["STATUS", "TASKS"],
        status
            .tasks
            .iter()
            .map(|(s, n)| [s.to_string(), n.to_string()]),
    );
    output::outln!(
        "\nactive workers: {}\nplans in progress: {}",
        status.active_workers,
        status.plans_in_progress
    );
    Ok(ExitCode::SUCCESS)
}
