//! Live updates: the client's event bus as server-sent events, one `data:` line of JSON
//! per event (`Published`: the event and whether this process caused it).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::AppState;

pub async fn stream(State(s): State<AppState>) -> Response {
    let events = match s.client.subscribe().await {
        Ok(e) => e,
        Err(e) => return crate::api::op_error(&e),
    };
    let stream = events.into_stream().map(|p| {
        let data = serde_json::to_string(&p).unwrap_or_else(|_| "{}".into());
        Ok::<_, Infallible>(Sse::default().data(data))
    });
    axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
