//! The actions' refusals over plain HTTP (no browser): what would run a task twice, act on
//! nothing, or let another site in is refused with a status naming why, and changes nothing.

use hive_client::models::{NewTask, TaskId, TaskStatus};
use hive_client::store::testing::fixtures::{claim_params, failure};

use super::harness::{Dashboard, LIMIT, http};
use super::store;

/// The `hive_token_<port>` cookie a page hands this machine's browser.
fn cookie(response: &str) -> String {
    response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: "))
        .map(|l| &l["set-cookie: ".len()..])
        .and_then(|c| c.split(';').next())
        .expect("a page sets the token cookie")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_refuse_what_would_go_wrong() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        let dash = Dashboard::start(s.clone(), "127.0.0.1:0", None).await;
        let addr = dash.addr;
        let get = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");

        // Another name for this address (a DNS rebinding) is not this dashboard.
        let (code, body) = http(addr, &get(&format!("evil.example:{}", addr.port()))).await;
        assert_eq!(code, 421, "{body}");
        assert!(
            !body.to_ascii_lowercase().contains("set-cookie"),
            "no token handed out: {body}"
        );
        let (code, _) = http(addr, &get(&format!("localhost:{}", addr.port()))).await;
        assert_eq!(code, 200);
        let (code, page) = http(addr, &get(&addr.to_string())).await;
        assert_eq!(code, 200);
        let token = cookie(&page);
        let named = format!("hive_token_{}=", addr.port());
        assert!(token.starts_with(&named), "named for the port: {token}");
        let post = |path: &str, body: &str| {
            let json = if body.is_empty() {
                ""
            } else {
                "Content-Type: application/json\r\n"
            };
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: {token}\r\n\
                 {json}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };

        // A running task is not requeued from under its worker.
        let running = dash.client.create_task(NewTask::new("busy", "x")).await.unwrap();
        let claim = s.claim_tasks(&claim_params("w", 1)).await.unwrap().remove(0);
        let (code, body) = http(addr, &post(&format!("/api/tasks/{running}/requeue"), "")).await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("a worker holds them"), "{body}");
        let task = s.get_task(running).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::InProgress);
        // Once it failed, it is.
        s.finish_runs(&[failure(claim.run.id, None)]).await.unwrap();
        let (code, body) = http(addr, &post(&format!("/api/tasks/{running}/requeue"), "")).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(s.get_task(running).await.unwrap().unwrap().status, TaskStatus::Queued);

        // Acting on nothing is not found.
        let ghost = TaskId::new();
        for action in ["requeue", "cancel"] {
            let (code, body) = http(addr, &post(&format!("/api/tasks/{ghost}/{action}"), "")).await;
            assert_eq!(code, 404, "{action}: {body}");
            assert!(body.contains(&format!("task `{ghost}` not found")), "{body}");
        }

        // A bulk requeue names only failed tasks, and its limit holds.
        let (code, body) = http(addr, &post("/api/requeue-failed", r#"{"status": "cancelled"}"#)).await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("only failed tasks"), "{body}");
        let ids = dash
            .client
            .create_tasks((0..3).map(|i| NewTask::new(format!("f{i}"), "y").max_retries(0)).collect())
            .await
            .unwrap();
        for c in s.claim_tasks(&claim_params("w", 10)).await.unwrap() {
            if ids.contains(&c.task.id) {
                s.finish_runs(&[failure(c.run.id, None)]).await.unwrap();
            }
        }
        let (code, body) = http(addr, &post("/api/requeue-failed", r#"{"type": "y", "limit": 2}"#)).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""requeued":2"#), "{body}");
        let mut left = 0;
        for id in ids {
            left += usize::from(s.get_task(id).await.unwrap().unwrap().status == TaskStatus::Failed);
        }
        assert_eq!(left, 1, "the limit held");
    })
    .await
    .expect("the test finished in time");
}
