//! The dashboard's probes, open without its token (an orchestrator's probe sends none):
//! `GET /healthz`, the server answers; `GET /readyz`, and its database answers within
//! [`READY_WITHIN`]. Neither says more than that, so an open probe tells a stranger
//! nothing about the database.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// How long the readiness probe waits for the database.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(2);

/// The paths the probes answer on.
pub(crate) const PATHS: [&str; 2] = ["/healthz", "/readyz"];

pub(crate) async fn alive() -> &'static str {
    "ok\n"
}

pub(crate) async fn ready(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(READY_WITHIN, s.client.store().now()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(_)) | Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database does not answer\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn state(store: hive_client::store::MockStore) -> AppState {
        AppState {
            client: hive_client::Client::from_store(Arc::new(store), Default::default()),
            security: Arc::new(
                crate::security::Security::for_bind("127.0.0.1:0".parse().unwrap(), None).unwrap(),
            ),
            metrics: hive_metrics::Metrics::new().unwrap(),
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    #[tokio::test]
    async fn ready_while_the_database_answers_and_only_then() {
        let mut answers = hive_client::store::MockStore::new();
        answers.expect_now().returning(|| Ok(chrono::Utc::now()));
        let r = ready(State(state(answers))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let mut gone = hive_client::store::MockStore::new();
        gone.expect_now().returning(|| {
            Err(hive_client::store::Error::Unavailable {
                target: "db:5432".into(),
                reason: "connection refused".into(),
            })
        });
        let r = ready(State(state(gone))).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
