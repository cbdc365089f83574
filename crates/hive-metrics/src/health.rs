//! A worker's probes over HTTP: `GET /healthz` (alive) and `GET /readyz` (ready), each
//! `200 ok`, or `503` with one line naming what is wrong (see [`hive_client::WorkerHealth`]).

use axum::http::StatusCode;
use axum::response::IntoResponse;
use hive_client::HealthHandle;

/// `GET /healthz` and `GET /readyz` for the worker behind `health`.
pub fn health_router(health: HealthHandle) -> axum::Router {
    let ready = health.clone();
    axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let answer = answer(health.alive());
                async move { answer }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let answer = answer(ready.ready());
                async move { answer }
            }),
        )
}

fn answer(verdict: Result<(), String>) -> axum::response::Response {
    match verdict {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}
