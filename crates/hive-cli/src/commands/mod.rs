//! The `hive` subcommands.

pub mod demo;
pub mod flow;
pub mod plan;
pub mod schedule;
pub mod serve;
pub mod task;
mod wait;
pub mod worker;

use std::process::ExitCode;

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

pub async fn status(ctx: &Context) -> anyhow::Result<ExitCode> {
    let client = ctx.client().await?;
    let status = hive_web::StatusJson::read(&client).await?;
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
