//! Secrets: a database password never reaches an error message, a `Debug` print or a log
//! line, whether the server cannot be reached or drops every connection mid-work.
//!
//! hive-store's `unreachable_server_is_unavailable_without_the_password` covers the store's
//! own error; these tests add the client, the retrying connect, `Debug` of every type that
//! holds or wraps the URL, and everything logged down to TRACE.

use hive_store::testing::fixtures::tasks;
use std::time::Duration;

use hive_client::{Client, ConnectOptions, ConnectRetry, OpsConfig};
use hive_store::{DatabaseUrl, PostgresStore};
use sqlx::Connection;

use crate::log_capture::Logs;

fn sentinel() -> String {
    format!("s3cr3t-SENTINEL-{}", uuid::Uuid::new_v4().simple())
}

/// Fails naming `what`, and quoting the lines that show the sentinel, when it is in `shown`.
fn assert_hidden(secret: &str, what: &str, shown: &str) {
    let leaks: Vec<&str> = shown.lines().filter(|l| l.contains(secret)).collect();
    assert!(
        leaks.is_empty(),
        "the password leaked into {what}:\n{}",
        leaks.join("\n")
    );
}

/// Display, alternate Display, Debug, pretty Debug and each `source()`.
fn every_rendering(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut shown = vec![
        e.to_string(),
        format!("{e:#}"),
        format!("{e:?}"),
        format!("{e:#?}"),
    ];
    let mut source = e.source();
    while let Some(s) = source {
        shown.push(s.to_string());
        shown.push(format!("{s:?}"));
        source = s.source();
    }
    shown
}

mod postgres {
    use hive_store::testing::{postgres, report_skip};

    // Current-thread runtimes: the log capture sees only its own thread.
    #[tokio::test]
    async fn unreachable_server_keeps_the_password_out_of_errors_debug_and_logs() {
        super::unreachable_server().await;
    }

    #[tokio::test]
    async fn dropped_connections_keep_the_password_out_of_debug_and_reconnect_logs() {
        let Some(ts) = postgres().await else {
            return report_skip(
                "secrets::postgres::dropped_connections_keep_the_password_out_of_debug_and_reconnect_logs",
            );
        };
        let url = ts.url.clone().unwrap();
        ts.run(|_| super::dropped_connections(url)).await;
    }
}

async fn unreachable_server() {
    let secret = sentinel();
    let (logs, _capture) = Logs::capture();
    // A closed port, and a host that cannot resolve (`.invalid` never does).
    for (url, target) in [
        (
            format!("postgres://hive:{secret}@127.0.0.1:1/hive?application_name=x"),
            "127.0.0.1:1",
        ),
        (
            format!("postgres://hive:{secret}@hive-no-such-host.invalid:5432/hive"),
            "hive-no-such-host.invalid:5432",
        ),
    ] {
        let mut errors: Vec<Box<dyn std::error::Error>> = Vec::new();
        errors.push(Box::new(Client::connect(&url).await.unwrap_err()));
        let retry = ConnectRetry {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(80),
            give_up_after: Some(Duration::from_millis(300)),
        };
        errors.push(Box::new(
            Client::connect_with_retry(&url, &retry).await.unwrap_err(),
        ));
        let options = ConnectOptions {
            max_connections: Some(2),
            ..ConnectOptions::default()
        };
        errors.push(Box::new(
            retry
                .connect_with(&url, &options, OpsConfig::default())
                .await
                .unwrap_err(),
        ));
        errors.push(Box::new(
            hive_store::connect_with(&url, &options).await.unwrap_err(),
        ));
        errors.push(Box::new(
            PostgresStore::connect(&DatabaseUrl::new(&url), &options)
                .await
                .unwrap_err(),
        ));
        for e in &errors {
            for shown in every_rendering(e.as_ref()) {
                assert_hidden(&secret, "an error", &shown);
            }
            assert!(e.to_string().contains(target), "names {target}: {e}");
        }
        let db_url = DatabaseUrl::new(&url);
        for shown in [
            format!("{db_url:?}"),
            format!("{db_url:#?}"),
            db_url.to_string(),
            db_url.redacted(),
            db_url.target(),
            format!("{retry:?}"),
            format!("{options:?}"),
        ] {
            assert_hidden(&secret, "a Debug or Display print", &shown);
        }
        let text = logs.text();
        assert!(
            text.lines()
                .any(|l| l.contains("retrying") && l.contains(target)),
            "the capture saw the retry warnings naming {target}:\n{text}"
        );
    }
    assert_hidden(&secret, "the TRACE log", &logs.text());
}

/// A working client whose URL carries a password (the test server trusts local
/// connections, so the password is never checked) loses every connection, its listener
/// included; nothing it prints or logs while recovering names the password.
async fn dropped_connections(url: String) {
    let mut parsed = url::Url::parse(&url).unwrap();
    if parsed.password().is_some() {
        // The server checks passwords: ours would be refused. Nothing to prove here.
        return hive_store::testing::report_skip(
            "secrets::postgres::dropped_connections_keep_the_password_out_of_debug_and_reconnect_logs (the URL has a password)",
        );
    }
    let secret = sentinel();
    parsed.set_password(Some(&secret)).unwrap();
    let tag = format!("hive-secret-{}", uuid::Uuid::new_v4().simple());
    parsed
        .query_pairs_mut()
        .append_pair("application_name", &tag);
    let secret_url = parsed.to_string();

    let (logs, _capture) = Logs::capture();
    let client = Client::connect_with_retry(&secret_url, &ConnectRetry::default())
        .await
        .unwrap();
    let listener = format!("hive-listen-{}", client.store().origin().simple());
    // Starts the store's listener, the connection a reconnect log line would be about.
    let _wakeups = client.store().subscribe().await.unwrap();
    client.create_tasks(tasks("t", "s", 20)).await.unwrap();

    // Kill every connection of this client, the listener's included, from outside.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let killed: Vec<String> = sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity \
         WHERE application_name IN ($1, $2) AND pg_terminate_backend(pid, 5000)",
    )
    .bind(&tag)
    .bind(&listener)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(killed.contains(&listener), "killed {killed:?}");

    // The first calls may meet dead pooled connections; their errors are checked too.
    let mut recovered = false;
    for _ in 0..50 {
        match client.count_tasks(None).await {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) => {
                for shown in every_rendering(&e) {
                    assert_hidden(&secret, "an error after the kill", &shown);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the pool reconnected");
    let report = crate::worker::drain_with_noop_worker(&client, "secret-keeper").await;
    assert_eq!(report.completed, 20);
    for _ in 0..200 {
        if logs.text().contains("notification listener reconnected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = logs.text();
    assert!(
        text.contains("lost the Postgres notification listener")
            && text.contains("notification listener reconnected"),
        "the capture saw the reconnect:\n{text}"
    );
    assert_hidden(&secret, "the TRACE log", &text);
    for shown in [
        format!("{client:?}"),
        format!("{client:#?}"),
        format!("{:?}", client.store()),
        format!("{:?}", client.ops()),
    ] {
        assert_hidden(&secret, "a Debug print", &shown);
    }
}
