//! `hive serve` as an operator runs it: it stops at SIGTERM (a service manager's stop)
//! with a page open, whose live event stream would otherwise hold the shutdown forever.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::db::Db;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_dashboard_stops_at_sigterm_with_a_page_open() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_hive"))
        .args(["--database-url", &db.url, "serve", "--bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut said = tokio::io::BufReader::new(serve.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), said.next_line())
        .await
        .expect("the dashboard says where it listens")
        .unwrap()
        .unwrap();
    // "hive serve: listening on http://127.0.0.1:PORT (database …)"
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();

    let mut page = tokio::net::TcpStream::connect(&addr).await.unwrap();
    page.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = page.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.contains("text/event-stream"), "{head}");

    stops_at_sigterm(&mut serve).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), page.read_to_end(&mut rest))
        .await
        .expect("the page's stream ended")
        .unwrap();
}

/// While its database is not up yet, `hive serve` already answers its liveness probe, so
/// an orchestrator does not restart it for waiting, and answers every other path 503; once
/// the database answers, it serves the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_liveness_probe_answers_while_the_database_is_not_up_yet() {
    let Some(ts) = hive_store::testing::postgres().await else {
        return hive_store::testing::report_skip(
            "the_liveness_probe_answers_while_the_database_is_not_up_yet",
        );
    };
    ts.run_with_url(|_store, url| async move {
        let parsed = url::Url::parse(&url).unwrap();
        let database = format!(
            "{}:{}",
            parsed.host_str().unwrap(),
            parsed.port().unwrap_or(5432)
        );
        // Ports nothing listens on: the database's until the relay below opens it, and
        // the dashboard's.
        use support::free_port;
        let late_port = free_port();
        let mut late = parsed.clone();
        late.set_host(Some("127.0.0.1")).unwrap();
        late.set_port(Some(late_port)).unwrap();
        let dashboard = format!("127.0.0.1:{}", free_port());
        let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .args([
                "--database-url",
                late.as_str(),
                "serve",
                "--bind",
                &dashboard,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut said = tokio::io::BufReader::new(serve.stderr.take().unwrap()).lines();

        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while status_of(&dashboard, "/healthz").await != Some(200) {
            assert!(
                std::time::Instant::now() < deadline,
                "no liveness probe while the database is down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for path in ["/", "/readyz", "/api/status", "/metrics"] {
            assert_eq!(status_of(&dashboard, path).await, Some(503), "{path}");
        }

        let relay = tokio::net::TcpListener::bind(("127.0.0.1", late_port))
            .await
            .unwrap();
        let relay = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = relay.accept().await {
                let database = database.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(database).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = said.next_line().await.unwrap() {
                if line.contains("listening on") {
                    return;
                }
            }
            panic!("hive serve ended before saying it listens");
        })
        .await
        .expect("the dashboard served once its database answered");
        for path in ["/", "/readyz", "/api/status", "/healthz"] {
            assert_eq!(status_of(&dashboard, path).await, Some(200), "{path}");
        }

        stops_at_sigterm(&mut serve).await;
        relay.abort();
    })
    .await;
}

/// The status code `GET path` gets, or `None` when nothing accepts the connection.
async fn status_of(addr: &str, path: &str) -> Option<u16> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sends `serve` SIGTERM; it exits 0 within 10 s.
async fn stops_at_sigterm(serve: &mut tokio::process::Child) {
    let pid = serve.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), serve.wait())
        .await
        .expect("the dashboard stopped within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
