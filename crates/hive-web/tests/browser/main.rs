//! The dashboard in a real headless Chromium (chromedriver on a loopback port): the
//! overview loads; a plan's DAG has one node per subtask in its status colour and turns a
//! node green live when its task completes; requeue from the page changes the database; a
//! hostile title is shown as text and runs nothing; a task type's queue is paused and
//! resumed from its page, and so is a schedule, which also runs by hand from there; and,
//! without the token, a change is refused on a dashboard that
//! requires one; a failed plan is retried from its page; live updates wait while the
//! operator types in a field.
//!
//! `HIVE_SAVE_SCREENSHOTS=1` also writes the overview and the DAG page to `docs/img/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod actions;
mod harness;
mod live;
mod queues;

use std::sync::Arc;
use std::time::Duration;

use fantoccini::Locator;
use harness::{Dashboard, Driver, LIMIT, eventually, http};
use hive_client::models::{
    NewPlan, NewSchedule, NewTask, Overlap, ScheduledTask, SubTask, TaskStatus,
};
use hive_client::store::Store;
use hive_client::store::testing::fixtures::{claim_params, failure, success};

const GREEN: &str = "#2e7d32";
const BLUE: &str = "#1565c0";
const AMBER: &str = "#f9a825";

async fn store() -> (Arc<dyn Store>, hive_client::store::testing::TestStore) {
    let ts = hive_client::store::testing::sqlite()
        .await
        .expect("a SQLite test store");
    (ts.store.clone(), ts)
}

fn save(name: &str, png: &[u8]) {
    if std::env::var_os("HIVE_SAVE_SCREENSHOTS").is_some() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/img");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// The text of the first element the locator finds.
async fn text(b: &fantoccini::Client, at: Locator<'_>) -> String {
    b.find(at).await.unwrap().text().await.unwrap()
}

async fn click(b: &fantoccini::Client, at: Locator<'_>) {
    b.find(at).await.unwrap().click().await.unwrap()
}

async fn fill(b: &fantoccini::Client, subtask: &str) -> String {
    let sel = format!(".dag .node[data-subtask='{subtask}'] rect");
    match b.find(Locator::Css(&sel)).await {
        Ok(rect) => rect.attr("fill").await.ok().flatten().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_and_a_plans_dag_update_live() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        let driver = Driver::start().await;
        let dash = Dashboard::start(s.clone(), "127.0.0.1:0", None).await;
        let c = &dash.client;
        c.create_tasks(
            (0..5)
                .map(|i| NewTask::new(format!("import {i}"), "import"))
                .collect(),
        )
        .await
        .unwrap();
        let plan = NewPlan::new(
            "nightly build",
            vec![
                SubTask::new("fetch", "fetch sources", "step"),
                SubTask::new("compile", "compile", "step").depends_on(["fetch"]),
                SubTask::new("lint", "lint", "step").depends_on(["fetch"]),
                SubTask::new("package", "package", "step").depends_on(["compile", "lint"]),
            ],
        )
        .idempotency_key("nightly-2026-12-06");
        let plan_id = c.submit_plan(plan).await.unwrap();
        // Imports first in queue order: finish them (two fail), then fetch, then claim one
        // of compile and lint and leave it running.
        let mut n = 0;
        loop {
            let claims = s.claim_tasks(&claim_params("w1", 1)).await.unwrap();
            let Some(cl) = claims.first() else { break };
            if cl.task.plan_id.is_some() && cl.task.plan_subtask_id.as_deref() != Some("fetch") {
                break;
            }
            n += 1;
            let outcome = if cl.task.task_type == "import" && n % 3 == 0 {
                failure(cl.run.id, None)
            } else {
                success(cl.run.id)
            };
            s.finish_runs(&[outcome]).await.unwrap();
        }
        let in_plan = c
            .list_tasks(&hive_client::store::TaskFilter::in_plan(plan_id))
            .await
            .unwrap();
        let states: Vec<_> = in_plan
            .iter()
            .map(|t| (t.plan_subtask_id.clone(), t.status))
            .collect();
        let running = in_plan
            .into_iter()
            .find(|t| t.status == TaskStatus::InProgress)
            .unwrap_or_else(|| panic!("one plan task running: {states:?}"));
        let running_name = running.plan_subtask_id.clone().unwrap();
        let other = if running_name == "compile" {
            "lint"
        } else {
            "compile"
        };

        let b = driver.browser().await;
        b.goto(&dash.url("/")).await.unwrap();
        let h1 = text(&b, Locator::Css("main h1")).await;
        assert_eq!(h1, "Overview");
        let alive = text(&b, Locator::Css("#throughput b")).await;
        assert_eq!(
            alive, "6",
            "five imports and fetch finished in the last hour"
        );
        assert!(
            b.find(Locator::Css("svg.chart rect.bad")).await.is_ok(),
            "failures charted"
        );
        save("overview.png", &b.screenshot().await.unwrap());

        b.goto(&dash.url(&format!("/plans/{plan_id}")))
            .await
            .unwrap();
        let nodes = b.find_all(Locator::Css(".dag .node")).await.unwrap();
        assert_eq!(nodes.len(), 4, "one node per subtask");
        let key = text(&b, Locator::Id("plan-key")).await;
        assert_eq!(key, "nightly-2026-12-06");
        assert_eq!(fill(&b, "fetch").await, GREEN);
        assert_eq!(fill(&b, &running_name).await, BLUE);
        assert_eq!(fill(&b, other).await, AMBER);
        assert_eq!(fill(&b, "package").await, AMBER);
        let fetch_row = b
            .find(Locator::XPath("//table//tr[td/a[text()='fetch']]"))
            .await
            .unwrap();
        assert_duration(&fetch_row, "the completed subtask").await;
        click(&b, Locator::Css(".dag .node[data-subtask='fetch']")).await;
        let details = text(&b, Locator::Id("node-details")).await;
        assert!(
            details.contains("completed") && details.contains("w1"),
            "{details}"
        );
        save("plan-dag.png", &b.screenshot().await.unwrap());

        // Completing the running task turns its node green without a reload.
        b.execute("window.__same_page = 42;", vec![]).await.unwrap();
        s.finish_runs(&[success(running.current_run_id.unwrap())])
            .await
            .unwrap();
        eventually(
            "the node to turn green",
            Duration::from_secs(20),
            || async { fill(&b, &running_name).await == GREEN },
        )
        .await;
        let same = b
            .execute("return window.__same_page;", vec![])
            .await
            .unwrap();
        assert_eq!(same, serde_json::json!(42), "updated live, not reloaded");

        // A plan too large to draw: its page says so, and lists the failed subtask first.
        let large = NewPlan::new(
            "large",
            (0..1_001)
                .map(|i| SubTask::new(format!("s{i}"), "step", "bulk"))
                .collect(),
        );
        let large_id = c.submit_plan(large).await.unwrap();
        let claimed = s
            .claim_tasks(&hive_client::store::ClaimParams {
                task_types: vec!["bulk".into()],
                ..claim_params("w2", 1)
            })
            .await
            .unwrap();
        s.finish_runs(&[failure(claimed[0].run.id, None)])
            .await
            .unwrap();
        b.goto(&dash.url(&format!("/plans/{large_id}")))
            .await
            .unwrap();
        let notice = text(&b, Locator::Id("plan-too-large")).await;
        assert!(
            notice.contains("The graph of 1001 subtasks is not drawn"),
            "{notice}"
        );
        assert!(
            b.find(Locator::Css(".dag")).await.is_err(),
            "no graph drawn"
        );
        let rows = b.find_all(Locator::Css("table tr")).await.unwrap();
        assert_eq!(rows.len(), 1 + 200, "a header and 200 subtasks");
        let first = rows[1].text().await.unwrap();
        assert!(
            first.starts_with(&claimed[0].task.plan_subtask_id.clone().unwrap()),
            "{first}"
        );
        assert!(first.contains("failed"), "{first}");
        assert_duration(&rows[1], "the failed subtask").await;
        assert!(rows[2].text().await.unwrap().contains("queued"));
        // Every subtask is a link away, on the tasks page filtered by plan and status.
        click(&b, Locator::LinkText("failed")).await;
        eventually(
            "the plan's failed tasks",
            Duration::from_secs(20),
            || async { b.current_url().await.is_ok_and(|u| u.path() == "/tasks") },
        )
        .await;
        let listed = b.find_all(Locator::Css("#tasks tr")).await.unwrap();
        assert_eq!(listed.len(), 1 + 1, "the one failed subtask");
        b.back().await.unwrap();

        // The API gives the same part of the plan as `hive plan status --json --status`.
        let get = |q: &str| {
            format!(
                "GET /api/plans/{large_id}{q} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                dash.addr
            )
        };
        let (code, body) = http(dash.addr, &get("?status=failed,in_progress")).await;
        assert_eq!(code, 200, "{body}");
        let part: serde_json::Value =
            serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(part["more"], false, "{part}");
        assert_eq!(part["plan"]["failed_subtasks"], 1, "{part}");
        let subtasks = part["subtasks"].as_array().unwrap();
        assert_eq!(subtasks.len(), 1, "{part}");
        assert_eq!(subtasks[0]["id"], claimed[0].task.id.to_string());
        assert!(
            subtasks[0]["started_at"].is_string() && subtasks[0]["duration_secs"].is_number(),
            "the failed subtask's run timing beside its fields: {part}"
        );
        let (code, body) = http(dash.addr, &get("?limit=3")).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"more\":true"), "{body}");
        for (q, says) in [
            ("?status=sideways", "sideways"),
            ("?limit=0", "limit 0 is out of range"),
            ("?limit=10001", "limit 10001 is out of range"),
        ] {
            let (code, body) = http(dash.addr, &get(q)).await;
            assert!(code == 400 && body.contains(says), "{q}: {code} {body}");
        }

        // A failed plan offers a retry, and a cancel of what is still open in it (what did
        // not depend on the failure runs on); the retry queues the failure again.
        let cancel = b.find(Locator::Id("cancel-plan")).await.unwrap();
        assert_eq!(cancel.text().await.unwrap(), "Cancel open subtasks");
        click(&b, Locator::Id("retry-plan")).await;
        b.accept_alert().await.unwrap();
        eventually("the plan to run again", Duration::from_secs(20), || async {
            s.get_plan_counters(large_id).await.unwrap().unwrap().status
                == hive_client::PlanStatus::InProgress
        })
        .await;
        assert_eq!(
            s.get_task(claimed[0].task.id)
                .await
                .unwrap()
                .unwrap()
                .status,
            TaskStatus::Queued
        );
        eventually(
            "the page to offer a cancel",
            Duration::from_secs(20),
            || async { b.find(Locator::Id("cancel-plan")).await.is_ok() },
        )
        .await;
        b.close().await.unwrap();
    })
    .await
    .expect("the browser test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_text_and_requeue_from_the_page_changes_the_database() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        let driver = Driver::start().await;
        let dash = Dashboard::start(s.clone(), "127.0.0.1:0", None).await;
        let title = "<img src=x onerror=alert(1)>";
        let mut task = NewTask::new(title, "evil");
        task.payload = serde_json::json!({ "html": "<script>window.__pwned = 1</script>" });
        let id = dash.client.create_task(task).await.unwrap();
        let claim = s
            .claim_tasks(&claim_params("w", 1))
            .await
            .unwrap()
            .remove(0);
        let mut bad = failure(claim.run.id, None);
        bad.output_log = Some("<script>window.__pwned = 2</script>".into());
        s.finish_runs(&[bad]).await.unwrap();

        let b = driver.browser().await;
        b.goto(&dash.url(&format!("/tasks/{id}"))).await.unwrap();
        let h1 = text(&b, Locator::Css("main h1")).await;
        assert_eq!(h1, title, "the title is shown as text");
        let payload = text(&b, Locator::Id("payload")).await;
        assert!(
            payload.contains("<script>window.__pwned = 1</script>"),
            "{payload}"
        );
        let injected = b
            .execute(
                "return [document.querySelectorAll('main img, main script').length, \
                 typeof window.__pwned];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(injected, serde_json::json!([0, "undefined"]), "nothing ran");
        assert!(b.get_alert_text().await.is_err(), "no alert opened");
        b.goto(&dash.url("/tasks?status=failed")).await.unwrap();
        let cell = text(&b, Locator::Css("#tasks td.title")).await;
        assert_eq!(cell, title);

        b.goto(&dash.url(&format!("/tasks/{id}"))).await.unwrap();
        click(&b, Locator::Id("requeue")).await;
        eventually("the task to be queued", Duration::from_secs(20), || async {
            s.get_task(id).await.unwrap().unwrap().status == TaskStatus::Queued
        })
        .await;
        b.close().await.unwrap();
    })
    .await
    .expect("the browser test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_a_change_is_refused() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        // 127.0.0.2 is loopback too, but with a token given the dashboard behaves as on any
        // other address (which `Security::for_bind` refuses without one: see its tests).
        let dash = Dashboard::start(s.clone(), "127.0.0.2:0", Some("s3cret")).await;
        let id = dash.client.create_task(NewTask::new("t", "x")).await.unwrap();
        let claim = s.claim_tasks(&claim_params("w", 1)).await.unwrap().remove(0);
        s.finish_runs(&[failure(claim.run.id, None)]).await.unwrap();
        let host = dash.addr;
        let post = |extra: &str| {
            format!(
                "POST /api/tasks/{id}/requeue HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
            )
        };
        let (code, _) = http(host, &post("")).await;
        assert_eq!(code, 401, "no token");
        let (code, _) = http(host, &post("x-hive-token: wrong\r\n")).await;
        assert_eq!(code, 401, "a wrong token");
        let (code, _) = http(
            host,
            &post("x-hive-token: s3cret\r\nOrigin: http://evil.example\r\n"),
        )
        .await;
        assert_eq!(code, 403, "another site's origin");
        let get = format!("GET /api/tasks/{id}/requeue HTTP/1.1\r\nHost: {host}\r\nx-hive-token: s3cret\r\nConnection: close\r\n\r\n");
        let (code, _) = http(host, &get).await;
        assert_eq!(code, 405, "no change on GET");
        assert_eq!(s.get_task(id).await.unwrap().unwrap().status, TaskStatus::Failed);
        let (code, _) = http(host, &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(code, 303, "pages ask for the token");
        for probe in ["/healthz", "/readyz"] {
            let (code, body) = http(
                host,
                &format!("GET {probe} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(code, 200, "{probe} is open: {body}");
            assert!(body.ends_with("\r\n\r\nok\n"), "{body}");
        }
        let (code, body) = http(
            host,
            &post(&format!("x-hive-token: s3cret\r\nOrigin: http://{host}\r\n")),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(s.get_task(id).await.unwrap().unwrap().status, TaskStatus::Queued);
    })
    .await
    .expect("the test finished in time");
}

/// GETs `path` on loopback without a token, which hands out the generated one as a
/// cookie: the body, and a maker of POST requests that carry the cookie (and, after a
/// space in the argument, a JSON body: `"/api/x {…}"`).
async fn api_session(host: std::net::SocketAddr, path: &str) -> (String, impl Fn(&str) -> String) {
    let (code, body) = http(
        host,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let cookie = body
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("reads hand out the token")
        .to_owned();
    let post = move |request: &str| {
        let (path, body) = request.split_once(' ').unwrap_or((request, ""));
        let kind = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/json\r\n"
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nCookie: {cookie}\r\n{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    (body, post)
}

async fn schedule_cell(b: &fantoccini::Client, name: &str, cell: &str) -> String {
    let sel = format!("#schedules tr[data-name='{name}'] td.{cell}");
    match b.find(Locator::Css(&sel)).await {
        Ok(cell) => cell.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn enabled(s: &Arc<dyn Store>, name: &str) -> bool {
    s.get_schedule(name).await.unwrap().unwrap().enabled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_is_paused_and_resumed_from_its_page() {
    tokio::time::timeout(LIMIT, async {
        let (s, _keep) = store().await;
        let driver = Driver::start().await;
        let dash = Dashboard::start(s.clone(), "127.0.0.1:0", None).await;
        let etl = NewPlan::new(
            "nightly etl",
            vec![
                SubTask::new("extract", "Extract", "etl"),
                SubTask::new("load", "Load", "etl").depends_on(["extract"]),
            ],
        );
        let c = &dash.client;
        c.add_schedule(NewSchedule::new("etl", "0 2 * * *", etl))
            .await
            .unwrap();
        let tick = ScheduledTask::new("<b>tick</b>", "tick");
        let tick = NewSchedule::new("tick", "*/5 * * * *", tick).overlap(Overlap::Queue);
        c.add_schedule(tick).await.unwrap();
        // `tick` fired once: its last slot's task shows with its status.
        let tick_row = s.get_schedule("tick").await.unwrap().unwrap();
        let behind = hive_client::store::testing::fixtures::schedule_behind(&tick_row, 600);
        assert!(s.advance_schedule(&behind).await.unwrap());
        assert_eq!(c.fire_due_schedules().await.unwrap().slots, 1);
        // `late` is due since ten minutes and no scheduler has handled it: overdue.
        let late = NewSchedule::new("late", "*/5 * * * *", ScheduledTask::new("l", "tick"));
        let late = c.add_schedule(late).await.unwrap();
        let behind = hive_client::store::testing::fixtures::schedule_behind(&late, 600);
        assert!(s.advance_schedule(&behind).await.unwrap());
        let b = driver.browser().await;
        b.goto(&dash.url("/schedules")).await.unwrap();
        let overdue = b
            .find(Locator::Css(
                "#schedules tr[data-name='late'] td.next span.overdue",
            ))
            .await
            .unwrap();
        assert_eq!(overdue.text().await.unwrap(), "overdue");
        let last = b
            .find(Locator::Css(
                "#schedules tr[data-name='tick'] td.last a.last-run",
            ))
            .await
            .unwrap();
        assert_eq!(last.text().await.unwrap(), "task queued");
        let href = last.attr("href").await.unwrap().unwrap_or_default();
        assert!(href.starts_with("/tasks/"), "{href}");
        assert_eq!(
            schedule_cell(&b, "etl", "creates").await,
            "plan of 2 subtasks"
        );
        assert_eq!(schedule_cell(&b, "etl", "title").await, "nightly etl");
        assert_eq!(
            schedule_cell(&b, "tick", "creates").await,
            "task of type tick"
        );
        assert_eq!(
            schedule_cell(&b, "tick", "title").await,
            "<b>tick</b>",
            "a title is text, not markup"
        );
        assert_eq!(schedule_cell(&b, "etl", "state").await, "active");
        assert_eq!(
            schedule_cell(&b, "tick", "state").await,
            "active\noverlaps: queue"
        );
        assert_ne!(schedule_cell(&b, "etl", "next").await, "–");
        assert!(
            !schedule_cell(&b, "etl", "next").await.contains("overdue"),
            "handled on time"
        );
        click(
            &b,
            Locator::Css("#schedules tr[data-name='etl'] button.pause"),
        )
        .await;
        // The confirmation names the row the operator hit.
        assert_eq!(b.get_alert_text().await.unwrap(), "Pause etl?");
        b.accept_alert().await.unwrap();
        eventually(
            "the schedule to be paused",
            Duration::from_secs(20),
            || async {
                !enabled(&s, "etl").await && schedule_cell(&b, "etl", "state").await == "paused"
            },
        )
        .await;
        assert_eq!(
            schedule_cell(&b, "etl", "next").await,
            "–",
            "a paused schedule has no next"
        );
        assert!(enabled(&s, "tick").await, "the other schedule is untouched");
        click(
            &b,
            Locator::Css("#schedules tr[data-name='etl'] button.resume"),
        )
        .await;
        // The confirmation names the row the operator hit.
        assert_eq!(b.get_alert_text().await.unwrap(), "Resume etl?");
        b.accept_alert().await.unwrap();
        eventually(
            "the schedule to be resumed",
            Duration::from_secs(20),
            || async {
                enabled(&s, "etl").await && schedule_cell(&b, "etl", "state").await == "active"
            },
        )
        .await;
        // Run by hand: the page of the plan it submitted opens.
        click(
            &b,
            Locator::Css("#schedules tr[data-name='etl'] button.trigger"),
        )
        .await;
        b.accept_alert().await.unwrap();
        eventually(
            "the manual run's plan page",
            Duration::from_secs(20),
            || async {
                b.current_url()
                    .await
                    .is_ok_and(|u| u.path().starts_with("/plans/"))
            },
        )
        .await;
        let plans = s.list_plan_headers(None, None).await.unwrap();
        assert_eq!(plans.len(), 1, "one plan, run by hand");
        assert_eq!(plans[0].metadata["manual"], true);
        let shown = b.current_url().await.unwrap();
        assert_eq!(shown.path(), format!("/plans/{}", plans[0].id));
        // The API does the same, and an unknown name is not found.
        let host = dash.addr;
        let (body, post) = api_session(host, "/api/schedules").await;
        assert!(
            body.contains("\"name\":\"etl\"") && body.contains("\"plan\":"),
            "{body}"
        );
        let (code, body) = http(host, &post("/api/schedules/tick/pause")).await;
        assert_eq!(code, 200, "{body}");
        assert!(!enabled(&s, "tick").await);
        let (code, body) = http(host, &post("/api/schedules/tick/trigger")).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"kind\":\"task\""), "{body}");
        // With a key, a repeated request (a client's retry) runs it once.
        let keyed = r#"/api/schedules/tick/trigger {"idempotency_key":"retry-1"}"#;
        let (code, first) = http(host, &post(keyed)).await;
        assert_eq!(code, 200, "{first}");
        let (_, again) = http(host, &post(keyed)).await;
        let id = |resp: &str| resp.split("\"id\":\"").nth(1).map(|r| r[..36].to_owned());
        assert_eq!(id(&first), id(&again), "{first} / {again}");
        let tick_tasks = s
            .list_tasks(&hive_client::store::TaskFilter {
                task_type: Some("tick".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            tick_tasks.len(),
            3,
            "its slot's, one unkeyed run, one keyed"
        );
        // The page's form route takes a bare POST too (no form body: no key).
        let (code, body) = http(host, &post("/actions/schedules/tick/trigger")).await;
        assert_eq!(code, 303, "{body}");
        assert!(body.contains("location: /tasks/"), "{body}");
        let (code, body) = http(host, &post("/api/schedules/ghost/pause")).await;
        assert_eq!(code, 404, "{body}");
        assert!(
            body.contains("ghost"),
            "the error names the schedule: {body}"
        );
        b.close().await.unwrap();
    })
    .await
    .expect("the browser test finished in time");
}

/// A plan table's row shows a duration ("12 ms", "3.4 s") in its duration cell.
async fn assert_duration(row: &fantoccini::elements::Element, what: &str) {
    let cell = row
        .find(Locator::Css("td.duration"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        cell.ends_with("ms") || cell.ends_with(" s"),
        "{what}'s duration: {cell:?}"
    );
}
