//! A task type's queue paused and resumed from its page and over the API, which refuses a
//! type nothing uses.

use std::sync::Arc;
use std::time::Duration;

use fantoccini::Locator;
use hive_client::models::NewTask;
use hive_client::store::Store;
use hive_client::store::testing::fixtures::claim_params;

use super::harness::{Dashboard, Driver, LIMIT, eventually, http};
use super::{api_session, click, store, text};

async fn queue_state(b: &fantoccini::Client) -> String {
    match b
        .find(Locator::Css("#queues tr[data-type='mail'] td.state"))
        .await
    {
        Ok(cell) => cell.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn paused(s: &Arc<dyn Store>) -> bool {
    s.list_flow_rules()
        .await
        .unwrap()
        .iter()
        .any(|r| r.scope == hive_client::models::Scope::Type("mail".into()) && r.paused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_paused_and_resumed_from_its_page() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        let driver = Driver::start().await;
        let dash = Dashboard::start(s.clone(), "127.0.0.1:0", None).await;
        for i in 0..2 {
            dash.client
                .create_task(NewTask::new(format!("mail {i}"), "mail"))
                .await
                .unwrap();
        }
        let b = driver.browser().await;
        b.goto(&dash.url("/queues")).await.unwrap();
        let queued = text(&b, Locator::Css("#queues tr[data-type='mail'] td.queued")).await;
        assert_eq!(queued, "2");
        assert_eq!(queue_state(&b).await, "active");
        click(
            &b,
            Locator::Css("#queues tr[data-type='mail'] button.pause"),
        )
        .await;
        // The confirmation names the row the operator hit.
        assert_eq!(b.get_alert_text().await.unwrap(), "Pause mail?");
        b.accept_alert().await.unwrap();
        eventually("the type to be paused", Duration::from_secs(20), || async {
            paused(&s).await && queue_state(&b).await == "paused"
        })
        .await;
        assert!(
            s.claim_tasks(&claim_params("w", 10))
                .await
                .unwrap()
                .is_empty(),
            "a paused type is not claimed"
        );
        click(
            &b,
            Locator::Css("#queues tr[data-type='mail'] button.resume"),
        )
        .await;
        // The confirmation names the row the operator hit.
        assert_eq!(b.get_alert_text().await.unwrap(), "Resume mail?");
        b.accept_alert().await.unwrap();
        eventually(
            "the type to be resumed",
            Duration::from_secs(20),
            || async { !paused(&s).await && queue_state(&b).await == "active" },
        )
        .await;
        // The API does the same, and refuses a type nothing uses (a likely typo).
        let host = dash.addr;
        let (body, post) = api_session(host, "/api/queues").await;
        assert!(body.contains("\"task_type\":\"mail\""), "{body}");
        let (code, body) = http(host, &post("/api/queues/mail/pause")).await;
        assert_eq!(code, 200, "{body}");
        assert!(paused(&s).await);
        let (code, body) = http(host, &post("/api/queues/mial/pause")).await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("mial"), "the error names the type: {body}");
        b.close().await.unwrap();
    })
    .await
    .expect("the browser test finished in time");
}
