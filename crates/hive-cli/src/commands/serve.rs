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
    // The security rule is checked before connecting: a refused bind never touches the
    // database.
    hive_web::Security::for_bind(args.bind, args.token.clone())?;
    let client = ctx.client().await?;
    let server = hive_web::Server::bind(
        client,
        hive_web::Config {
            bind: args.bind,
            token: args.token,
        },
    )
    .await?;
    crate::logging::eprint_line(&format!(
        "hive serve: listening on http://{} (database {})",
        server.local_addr()?,
        hive_client::store::DatabaseUrl::new(&ctx.database_url)
    ));
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
