//! Live updates never take what the operator is typing: while a field of the page has the
//! focus, or holds a change not yet sent, events arrive and the page waits (its live dot
//! says so); once the form is sent, or the field is left unchanged, the page follows the
//! queue again.

use std::time::Duration;

use fantoccini::Locator;
use fantoccini::key::Key;
use hive_client::models::NewTask;
use serde_json::json;

use super::harness::{Dashboard, Driver, LIMIT, eventually};
use super::{click, store};

/// Marks the page's `<main>`: a swap replaces the element, and the mark with it.
const MARK: &str = "document.getElementById('main').__kept = true;";

/// The `q` field's text, whether it has the focus, whether `<main>` is the one marked,
/// and whether the live dot says a refresh waits.
const STATE: &str = "const f = document.querySelector('input[name=q]'); \
     return [f.value, document.activeElement === f, \
             document.getElementById('main').__kept === true, \
             document.getElementById('live').classList.contains('held')];";

async fn js(b: &fantoccini::Client, script: &str) -> serde_json::Value {
    b.execute(script, vec![]).await.unwrap()
}

/// The titles in the tasks table.
async fn titles(b: &fantoccini::Client) -> Vec<String> {
    let mut out = Vec::new();
    for cell in b
        .find_all(Locator::Css("#tasks td.title"))
        .await
        .unwrap_or_default()
    {
        out.push(cell.text().await.unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_in_a_filter_survives_live_updates() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        let driver = Driver::start().await;
        let dash = Dashboard::start(s, "127.0.0.1:0", None).await;
        let c = &dash.client;
        let create = |n: u32| async move {
            c.create_task(NewTask::new(format!("import {n}"), "import"))
                .await
                .unwrap();
        };
        create(1).await;
        let b = driver.browser().await;
        b.goto(&dash.url("/tasks")).await.unwrap();
        eventually("the live stream", Duration::from_secs(20), || async {
            js(
                &b,
                "return document.getElementById('live').classList.contains('on');",
            )
            .await
                == json!(true)
        })
        .await;
        js(&b, MARK).await;

        // Typing while tasks are created, each an event that would refresh the page within
        // 300 ms: twelve events over two and a half seconds, between the keys.
        let field = b.find(Locator::Css("input[name=q]")).await.unwrap();
        field.click().await.unwrap();
        for (i, keys) in ["imp", "ort", " 1"].into_iter().enumerate() {
            field.send_keys(keys).await.unwrap();
            for n in 0..4 {
                create(2 + 4 * i as u32 + n).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        eventually("a refresh to wait", Duration::from_secs(20), || async {
            js(&b, STATE).await[3] == json!(true)
        })
        .await;
        assert_eq!(
            js(&b, STATE).await,
            json!(["import 1", true, true, true]),
            "the typed text, the focus and the page were kept"
        );

        // Sent, the filter shows its tasks, and the page follows the queue again.
        field
            .send_keys(&char::from(Key::Enter).to_string())
            .await
            .unwrap();
        eventually("the filtered page", Duration::from_secs(20), || async {
            b.current_url()
                .await
                .is_ok_and(|u| u.query().is_some_and(|q| q.ends_with("&q=import+1")))
        })
        .await;
        js(&b, MARK).await;
        create(14).await;
        eventually("the new task, live", Duration::from_secs(20), || async {
            titles(&b).await.contains(&"import 14".to_owned())
        })
        .await;
        assert_eq!(
            js(
                &b,
                "return document.getElementById('main').__kept === true;"
            )
            .await,
            json!(false),
            "refreshed in place"
        );

        // A field that only has the focus holds the page too, until the focus leaves it.
        js(&b, MARK).await;
        click(&b, Locator::Css("input[name=type]")).await;
        create(15).await;
        eventually("a refresh to wait", Duration::from_secs(20), || async {
            js(&b, STATE).await[3] == json!(true)
        })
        .await;
        assert!(!titles(&b).await.contains(&"import 15".to_owned()));
        click(&b, Locator::Css("main h1")).await;
        eventually("the held refresh", Duration::from_secs(20), || async {
            titles(&b).await.contains(&"import 15".to_owned())
        })
        .await;
        assert_eq!(
            js(&b, STATE).await[3],
            json!(false),
            "the dot says live again"
        );
        b.close().await.unwrap();
    })
    .await
    .expect("the browser test finished in time");
}
