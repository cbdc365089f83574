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

    let pid = serve.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), serve.wait())
        .await
        .expect("the dashboard stopped with a page's event stream open")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), page.read_to_end(&mut rest))
        .await
        .expect("the page's stream ended")
        .unwrap();
}
