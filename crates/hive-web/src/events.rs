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
    let mut stopping = s.stopping.clone();
    let stream = events
        .into_stream()
        .map(|p| {
            let data = serde_json::to_string(&p).unwrap_or_else(|_| "{}".into());
            Ok::<_, Infallible>(Sse::default().data(data))
        })
        .take_until(async move {
            // A closed channel means the server is gone: end too.
            let _ = stopping.wait_for(|stop| *stop).await;
        });
    axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An open event stream (a browser with the dashboard open) does not hold the server's
    /// shutdown: the stream ends and `run` returns.
    #[tokio::test]
    async fn a_shutdown_ends_open_event_streams() {
        let client = hive_client::Client::connect("memory:").await.unwrap();
        let server = crate::Server::bind(
            client,
            crate::Config {
                bind: "127.0.0.1:0".parse().unwrap(),
                token: None,
            },
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let mut browser = tokio::net::TcpStream::connect(addr).await.unwrap();
        browser
            .write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 512];
        let n = browser.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the server stopped with an event stream open")
            .unwrap()
            .unwrap();
        // The stream was ended, not cut: the rest of the response reads to its end.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), browser.read_to_end(&mut rest))
            .await
            .expect("the event stream ended")
            .unwrap();
    }
}
