//! The JSON API over HTTP on a memory store: a plan too large to answer whole, the plans
//! list's query, and every error as `{"error": …}` with the status its kind calls for (a
//! database fault, through a mock store, as a generic 500).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use hive_client::Client;
use hive_client::models::{NewPlan, SubTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{PLAN_API_MAX_LIMIT, PlanListQuery, plans};
use crate::extract::ApiQuery;

/// A dashboard on a fresh memory store, served until the sender is dropped.
async fn serve() -> (SocketAddr, Client, tokio::sync::oneshot::Sender<()>) {
    let client = Client::connect("memory:").await.unwrap();
    let server = crate::Server::bind(
        client.clone(),
        crate::Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            token: None,
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, client, stop)
}

/// A GET's status, head (lowercase) and JSON body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {out}"));
    (code, head.to_ascii_lowercase(), json)
}

/// The message of an error body, which must be `{"error": "…"}`.
fn message(body: &serde_json::Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

fn steps(n: u32) -> Vec<SubTask> {
    (0..n)
        .map(|i| SubTask::new(format!("s{i}"), "step", "bulk"))
        .collect()
}

#[tokio::test]
async fn a_plan_too_large_to_answer_whole_is_refused_and_its_parts_are_not() {
    let (addr, client, _stop) = serve().await;
    let small = client
        .submit_plan(NewPlan::new("small", steps(3)))
        .await
        .unwrap();
    let (code, _, body) = get(addr, &format!("/api/plans/{small}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["subtasks"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(body["plan"]["title"], "small", "{body}");

    let over = PLAN_API_MAX_LIMIT + 1;
    let large = client
        .submit_plan(NewPlan::new("large", steps(over)))
        .await
        .unwrap();
    let (code, _, body) = get(addr, &format!("/api/plans/{large}")).await;
    assert_eq!(code, 400, "{body}");
    let m = message(&body);
    for says in [
        &large.to_string(),
        "10001 subtasks",
        "?status=",
        "?limit=N",
        "at most 10000",
    ] {
        assert!(m.contains(says), "names {says}: {m}");
    }
    // Parts of it are answered, as before.
    let (code, _, body) = get(addr, &format!("/api/plans/{large}?limit=5")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["subtasks"].as_array().unwrap().len(), 5);
    assert_eq!(body["more"], true);
    let (code, _, body) = get(addr, &format!("/api/plans/{large}?status=failed")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["subtasks"].as_array().unwrap().len(), 0);

    let ghost = hive_client::PlanId::new();
    let (code, _, body) = get(addr, &format!("/api/plans/{ghost}")).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(message(&body), format!("plan `{ghost}` not found"));
}

#[tokio::test]
async fn bad_ids_and_queries_are_400_and_unknown_rows_404_all_as_json() {
    let (addr, _client, _stop) = serve().await;
    let ghost = hive_client::TaskId::new();
    for (path, code, says) in [
        // Refused by axum's extractors: the same JSON body as the API's own refusals.
        (
            "/api/tasks?limit=abc".to_owned(),
            400,
            "invalid digit".to_owned(),
        ),
        ("/api/plans?limit=-1".to_owned(), 400, "limit".to_owned()),
        ("/api/tasks/%FF".to_owned(), 400, "UTF-8".to_owned()),
        (
            "/api/tasks/nope".to_owned(),
            400,
            "`nope` is not a task id".to_owned(),
        ),
        (
            "/api/tasks?status=runing".to_owned(),
            400,
            "runing".to_owned(),
        ),
        (
            format!("/api/tasks/{ghost}"),
            404,
            "task not found".to_owned(),
        ),
        (
            format!("/api/tasks/{ghost}/runs"),
            404,
            "task not found".to_owned(),
        ),
    ] {
        let (got, head, body) = get(addr, &path).await;
        assert_eq!(got, code, "{path}: {body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(message(&body).contains(&says), "{path}: {body}");
    }
}

#[tokio::test]
async fn the_plans_list_takes_a_status_and_a_limit() {
    let (addr, client, _stop) = serve().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let plan = NewPlan::new(format!("p{i}"), steps(1));
        ids.push(client.submit_plan(plan).await.unwrap());
    }
    assert!(client.cancel_plan(ids[1]).await.unwrap());
    let (code, head, body) = get(addr, "/api/plans").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 3);
    assert!(!head.contains("hive-more"), "{head}");
    let (code, _, body) = get(addr, "/api/plans?status=cancelled").await;
    assert_eq!(code, 200, "{body}");
    let listed = body.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["id"], ids[1].to_string());
    let (code, head, body) = get(addr, "/api/plans?limit=2").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
    assert!(head.contains("hive-more: true"), "{head}");
    for (query, says) in [
        ("status=sideways", "sideways"),
        ("limit=0", "limit 0 is out of range; expected 1 to 1000"),
        ("limit=1001", "limit 1001 is out of range"),
        ("limit=abc", "invalid digit"),
    ] {
        let (code, _, body) = get(addr, &format!("/api/plans?{query}")).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(message(&body).contains(says), "{query}: {body}");
    }
}

/// A database fault is the server's: 500, a message that tells nothing of the database
/// (its full text goes to the log).
#[tokio::test]
async fn a_database_fault_is_a_generic_500() {
    let mut store = hive_client::store::MockStore::new();
    store.expect_list_plan_headers().returning(|_, _| {
        Err(hive_client::store::Error::Database(
            "relation \"plans\" lives in /srv/secret".into(),
        ))
    });
    let state = crate::AppState {
        client: Client::from_store(Arc::new(store), Default::default()),
        security: Arc::new(
            crate::security::Security::for_bind("127.0.0.1:0".parse().unwrap(), None).unwrap(),
        ),
        metrics: hive_metrics::Metrics::new().unwrap(),
        stopping: tokio::sync::watch::channel(false).1,
    };
    let r = plans(State(state), ApiQuery(PlanListQuery::default())).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "error": crate::failure::INTERNAL })
    );
}

/// The Workers page lists each worker with the tasks it runs now, read in one query for
/// all workers: a worker's row names its own tasks only.
#[tokio::test]
async fn the_workers_page_shows_each_workers_running_tasks() {
    let (addr, client, _stop) = serve().await;
    for w in ["busy", "idle"] {
        client.register_worker(w, "r", Vec::new()).await.unwrap();
    }
    let ids = client
        .create_tasks(vec![
            hive_client::NewTask::new("a", "mail"),
            hive_client::NewTask::new("b", "mail"),
        ])
        .await
        .unwrap();
    let busy = hive_client::WorkerId::parse("busy").unwrap();
    let lease = std::time::Duration::from_secs(60);
    let claimed = client.claim_tasks(&busy, &[], 2, lease).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /workers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    s.write_all(request.as_bytes()).await.unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let row = |w: &str| {
        let at = page
            .find(&format!("<td>{w}</td>"))
            .unwrap_or_else(|| panic!("no row for {w}: {page}"));
        let end = page[at..].find("</tr>").unwrap();
        page[at..at + end].to_owned()
    };
    for id in &ids {
        let short = &id.to_string()[..8];
        assert!(row("busy").contains(short), "{}", row("busy"));
        assert!(!row("idle").contains(short), "{}", row("idle"));
    }
}
