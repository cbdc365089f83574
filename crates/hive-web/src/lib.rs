//! The operator dashboard behind `hive serve`: server-rendered pages (maud, which escapes
//! every interpolated string), a JSON API under `/api/` with the CLI's `--json` shapes,
//! live updates over server-sent events from the client's event bus, the actions an
//! operator takes (requeue, bulk requeue, cancel), and `/metrics`.
//!
//! Security ([`security`]): loopback by default; any other address needs a token;
//! mutations are POST only, need the token (a `SameSite=Strict` cookie or a header) and
//! a same-origin `Origin`.

mod actions;
mod api;
mod dag;
mod events;
mod extract;
mod failure;
mod pages;
mod probes;
pub mod security;
mod view;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hive_client::Client;

pub use api::{PlanStatusJson, PlanSubtasksJson, StatusJson};
pub use security::Security;

/// What can stop the dashboard from starting or serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "binding {bind} (not a loopback address) requires a token: pass --token or set HIVE_UI_TOKEN"
    )]
    TokenRequired { bind: SocketAddr },
    #[error("the token is empty; give a non-empty --token or HIVE_UI_TOKEN")]
    EmptyToken,
    #[error(
        "the token holds {what}, which a cookie or header cannot carry; use printable ASCII \
         without spaces, quotes, backslashes, commas or semicolons"
    )]
    UnusableToken { what: String },
    #[error(
        "the token is {len} characters; binding {bind} (not a loopback address) needs one of \
         at least {min}, which a guess over the network cannot find (e.g. `openssl rand -hex 16`)"
    )]
    WeakToken {
        bind: SocketAddr,
        len: usize,
        min: usize,
    },
    #[error("cannot generate a random token: {0}")]
    Random(String),
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving the dashboard: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] hive_metrics::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to serve: the address and the operator's token, if any.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub token: Option<String>,
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub client: Client,
    pub security: Arc<Security>,
    pub metrics: hive_metrics::Metrics,
    /// Turns true when the server starts shutting down: live event streams end on it,
    /// since a graceful shutdown waits for every open response, and a browser keeps its
    /// stream open for as long as the page is.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// A dashboard bound to its address, not yet serving.
///
/// A server can be bound before its database answers ([`Server::listen`]): until a
/// client is [attached](Attach::attach), `/healthz` answers (the process is alive, so an
/// orchestrator's liveness probe does not restart it while the database starts) and every
/// other path answers 503.
#[derive(Debug)]
pub struct Server {
    listener: tokio::net::TcpListener,
    dashboard: Arc<OnceLock<axum::Router>>,
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Gives a [listening](Server::listen) server its client, once the database answers.
#[derive(Debug)]
pub struct Attach {
    security: Arc<Security>,
    dashboard: Arc<OnceLock<axum::Router>>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Server {
    /// Checks the security rules for `config` (refusing a non-loopback address without a
    /// token before anything is bound), binds, and starts counting runs for `/metrics`.
    pub async fn bind(client: Client, config: Config) -> Result<Server> {
        let (server, attach) = Server::listen(config).await?;
        attach.attach(client).await?;
        Ok(server)
    }

    /// Checks the security rules for `config` and binds, with no client yet: only the
    /// liveness probe answers until the returned [`Attach`] is used.
    pub async fn listen(config: Config) -> Result<(Server, Attach)> {
        let security = Security::for_bind(config.bind, config.token)?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| Error::Bind {
                bind: config.bind,
                source,
            })?;
        let security = Arc::new(security.bound_to(listener.local_addr()?));
        let dashboard = Arc::new(OnceLock::new());
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let attach = Attach {
            security,
            dashboard: dashboard.clone(),
            stopping: stopping_rx,
        };
        let server = Server {
            listener,
            dashboard,
            stopping,
        };
        Ok((server, attach))
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` resolves, then ends the live event streams and returns once
    /// the requests in flight are answered.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let stopping = self.stopping;
        let router = axum::Router::new()
            .fallback(dispatch)
            .with_state(self.dashboard);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                stopping.send_replace(true);
            })
            .await?;
        Ok(())
    }
}

impl Attach {
    /// Serves the dashboard with `client` from now on and starts counting runs for
    /// `/metrics`.
    pub async fn attach(self, client: Client) -> Result<()> {
        let metrics = hive_metrics::Metrics::new()?;
        metrics
            .watch(client.clone())
            .await
            .map_err(Error::Metrics)?;
        let state = AppState {
            client,
            security: self.security,
            metrics,
            stopping: self.stopping,
        };
        let _ = self.dashboard.set(routes(state));
        Ok(())
    }
}

/// Every request goes to the dashboard once it has a client; before, only the liveness
/// probe answers.
async fn dispatch(
    axum::extract::State(dashboard): axum::extract::State<Arc<OnceLock<axum::Router>>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    match dashboard.get() {
        Some(router) => match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None if request.uri().path() == "/healthz" => probes::alive().await.into_response(),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the database\n",
        )
            .into_response(),
    }
}

fn routes(state: AppState) -> axum::Router {
    use axum::routing::{get, post};
    let metrics = hive_metrics::router(state.client.clone(), state.metrics.clone());
    axum::Router::new()
        .route("/", get(pages::overview::page))
        .route("/tasks", get(pages::tasks::list))
        .route("/tasks/{id}", get(pages::task::page))
        .route("/plans", get(pages::plans::list))
        .route("/plans/{id}", get(pages::plans::page))
        .route("/workers", get(pages::workers::page))
        .route("/queues", get(pages::queues::page))
        .route("/schedules", get(pages::schedules::page))
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/events", get(events::stream))
        .route("/healthz", get(probes::alive))
        .route("/readyz", get(probes::ready))
        .route("/assets/app.js", get(view::script))
        .route("/assets/app.css", get(view::style))
        .route("/actions/tasks/{id}/requeue", post(actions::requeue_form))
        .route("/actions/tasks/{id}/cancel", post(actions::cancel_form))
        .route(
            "/actions/plans/{id}/cancel",
            post(actions::cancel_plan_form),
        )
        .route("/actions/plans/{id}/retry", post(actions::retry_plan_form))
        .route(
            "/actions/requeue-failed",
            post(actions::requeue_failed_form),
        )
        .route(
            "/actions/queues/{task_type}/pause",
            post(actions::pause_queue_form),
        )
        .route(
            "/actions/queues/{task_type}/resume",
            post(actions::resume_queue_form),
        )
        .route(
            "/actions/schedules/{name}/pause",
            post(actions::pause_schedule_form),
        )
        .route(
            "/actions/schedules/{name}/resume",
            post(actions::resume_schedule_form),
        )
        .route(
            "/actions/schedules/{name}/trigger",
            post(actions::trigger_schedule_form),
        )
        .merge(api::routes())
        .with_state(state.clone())
        .merge(metrics)
        .layer(axum::middleware::from_fn_with_state(state, security::guard))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_static(
                "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; \
                 frame-ancestors 'none'; form-action 'self'",
            ),
        ))
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        ))
}
