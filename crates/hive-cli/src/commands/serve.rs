//! `hive serve`: the operator dashboard, its JSON API and `/metrics` on one address.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::Context;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The address to listen on. Any address other than loopback needs a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// The token that pages and every change require (log in once; scripts send it in
    /// the `x-hive-token` header).
    #[arg(long, env = "HIVE_UI_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(ctx: &Context, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The address is bound before connecting, so `/healthz` answers while the database is
    // still coming up; the security rule is checked before that, so a refused bind never
    // touches the database.
    let (server, attach) = hive_web::Server::listen(hive_web::Config {
        bind: args.bind,
        token: args.token,
    })
    .await?;
    let addr = server.local_addr()?;
    let mut stop = crate::signals::Interrupts::install()?;
    let (shut, shutting) = tokio::sync::oneshot::channel::<()>();
    // Served from its own task, so requests are answered while this one waits for the
    // database and attaches the client.
    let mut serving = tokio::spawn(server.run(async move {
        let _ = shutting.await;
    }));
    let client = tokio::select! {
        client = ctx.client_when_up(&mut stop) => client?,
        served = &mut serving => {
            served??;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(client) = client {
        attach.attach(client).await?;
        crate::logging::eprint_line(&format!(
            "hive serve: listening on http://{addr} (database {})",
            hive_client::store::DatabaseUrl::new(&ctx.database_url)
        ));
        tokio::select! {
            served = &mut serving => {
                served??;
                return Ok(ExitCode::SUCCESS);
            }
            () = stop.next() => {}
        }
    }
    let _ = shut.send(());
    // Answering the requests in flight is bounded: one held up by its database must not
    // hold the exit, and a second signal skips the wait.
    tokio::select! {
        served = &mut serving => served??,
        () = stop.next() => {}
        () = tokio::time::sleep(DRAIN_AT_MOST) => {
            tracing::warn!("requests still in flight after {DRAIN_AT_MOST:?}; stopping");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a stopping dashboard waits for the requests in flight.
const DRAIN_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);
