//! `/metrics` parses as Prometheus text, and after a drain its numbers match the database:
//! tasks per status and type, runs completed, failed and given back, one duration sample
//! per finished run.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_client::models::{NewTask, TaskStatus};
use hive_client::store::testing::fixtures::{claim_params, failure, success};
use hive_client::store::{Outcome, RunOutcome, Store};
use hive_client::{Client, OpsConfig};
use hive_metrics::{Counting, Metrics};
use prometheus_parse::{Scrape, Value};

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) | Value::Summary(_) => f64::NAN,
        })
        .sum()
}

async fn parse(metrics: &Metrics, client: &Client) -> Scrape {
    let text = metrics.scrape(client).await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

async fn numbers_match_the_database_after_a_drain(store: Arc<dyn Store>) {
    let client = Client::from_store(store.clone(), OpsConfig::default());
    let metrics = Metrics::new().unwrap();
    metrics.watch(client.clone()).await.unwrap();
    let mut tasks: Vec<NewTask> = (0..6)
        .map(|i| NewTask::new(format!("a{i}"), "alpha"))
        .collect();
    tasks.extend((0..3).map(|i| NewTask::new(format!("b{i}"), "beta")));
    client.create_tasks(tasks).await.unwrap();
    // One run given back first (its worker cut off from the store): counted apart, and its
    // task drained with the rest.
    let held = store
        .claim_tasks(&claim_params("cut-off", 1))
        .await
        .unwrap();
    store
        .finish_runs(&[RunOutcome {
            outcome: Outcome::GiveBack {
                reason: "no heartbeat stored for longer than the lease".into(),
            },
            ..success(held[0].run.id)
        }])
        .await
        .unwrap();
    // Drain: every third claim fails for good, the rest succeed.
    let mut n = 0;
    loop {
        let claims = store
            .claim_tasks(&claim_params("drainer", 4))
            .await
            .unwrap();
        if claims.is_empty() {
            break;
        }
        let outcomes: Vec<_> = claims
            .iter()
            .map(|c| {
                n += 1;
                if n % 3 == 0 {
                    failure(c.run.id, None)
                } else {
                    success(c.run.id)
                }
            })
            .collect();
        store.finish_runs(&outcomes).await.unwrap();
    }
    let counts = client.count_tasks(None).await.unwrap();
    let completed = counts.get(&TaskStatus::Completed).copied().unwrap_or(0) as f64;
    let failed = counts.get(&TaskStatus::Failed).copied().unwrap_or(0) as f64;
    assert_eq!((completed, failed), (6.0, 3.0));
    // The counters follow the bus: wait (bounded) until they caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let s = parse(&metrics, &client).await;
        // All three numbers, since the watcher counts behind the drain. Once caught up, the
        // durations must match in the same scrape: the registry gathers its metrics in no
        // fixed order, and it once read the histogram before, and the counters after, a
        // run's count. One lost or doubled event still fails below.
        if value(&s, "hive_runs_started_total", &[]) == 10.0
            && value(&s, "hive_runs_given_back_total", &[]) == 1.0
            && value(&s, "hive_runs_completed_total", &[]) == completed
            && value(&s, "hive_runs_failed_total", &[]) == failed
            || Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(value(&scrape, "hive_runs_started_total", &[]), 10.0);
    assert_eq!(value(&scrape, "hive_runs_given_back_total", &[]), 1.0);
    assert_eq!(value(&scrape, "hive_runs_completed_total", &[]), completed);
    assert_eq!(value(&scrape, "hive_runs_failed_total", &[]), failed);
    assert_eq!(value(&scrape, "hive_runs_stale_total", &[]), 0.0);
    let gauge_total = value(&scrape, "hive_tasks", &[]);
    assert_eq!(gauge_total, 9.0);
    let stats = client.queue_stats(None).await.unwrap();
    for c in &stats.counts {
        assert_eq!(
            value(
                &scrape,
                "hive_tasks",
                &[
                    ("status", c.status.as_str()),
                    ("task_type", c.task_type.as_str())
                ]
            ),
            c.count as f64,
            "{c:?}"
        );
    }
    assert_eq!(
        value(&scrape, "hive_tasks", &[("status", "completed")]),
        completed
    );
    let samples = value(
        &scrape,
        "hive_run_duration_seconds_count",
        &[("task_type", "alpha")],
    ) + value(
        &scrape,
        "hive_run_duration_seconds_count",
        &[("task_type", "beta")],
    );
    assert_eq!(samples, 9.0, "one duration per finished run");
    assert_eq!(
        value(&scrape, "hive_oldest_ready_task_age_seconds", &[]),
        0.0
    );
    client
        .create_tasks(vec![NewTask::new("waiting", "gamma")])
        .await
        .unwrap();
    let s = parse(&metrics, &client).await;
    let ages: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == "hive_oldest_ready_task_age_seconds")
        .collect();
    assert_eq!(ages.len(), 1, "the ready task's type only");
    assert_eq!(ages[0].labels.get("task_type"), Some("gamma"));
}

/// A process counting its own runs counts none of another process's, while a watcher of
/// every run counts both: Prometheus can add workers' counters up.
async fn a_process_counting_its_own_runs_leaves_others_out(store: Arc<dyn Store>, url: String) {
    let here = Client::from_store(store.clone(), OpsConfig::default());
    let own = Metrics::new().unwrap();
    own.watch_with(here.clone(), Counting::ThisProcess)
        .await
        .unwrap();
    let every = Metrics::new().unwrap();
    every.watch(here.clone()).await.unwrap();
    let elsewhere = hive_client::store::connect_with(&url, &hive_client::ConnectOptions::default())
        .await
        .unwrap();
    let tasks = (0..4).map(|i| NewTask::new(format!("t{i}"), "alpha"));
    here.create_tasks(tasks.collect()).await.unwrap();
    for (s, n) in [(&elsewhere, 3), (&store, 1)] {
        let claims = s.claim_tasks(&claim_params("w", n)).await.unwrap();
        assert_eq!(claims.len(), n as usize);
        let done: Vec<_> = claims.iter().map(|c| success(c.run.id)).collect();
        s.finish_runs(&done).await.unwrap();
    }
    // Both watchers follow the bus behind the commits: wait (bounded) until they caught up,
    // then a little longer, so that a count of other processes' runs would have shown.
    let deadline = Instant::now() + Duration::from_secs(20);
    let completed = |m: &Metrics| {
        let (m, here) = (m.clone(), here.clone());
        async move { value(&parse(&m, &here).await, "hive_runs_completed_total", &[]) }
    };
    while completed(&every).await < 4.0 || completed(&own).await < 1.0 {
        assert!(Instant::now() < deadline, "the watchers saw every run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mine = parse(&own, &here).await;
    assert_eq!(value(&mine, "hive_runs_started_total", &[]), 1.0);
    assert_eq!(value(&mine, "hive_runs_completed_total", &[]), 1.0);
    let samples = value(
        &mine,
        "hive_run_duration_seconds_count",
        &[("task_type", "alpha")],
    );
    assert_eq!(samples, 1.0);
    assert_eq!(
        value(&mine, "hive_tasks", &[]),
        4.0,
        "gauges are the database's"
    );
    elsewhere.close().await;
}

/// A burst of events larger than the bus holds for a subscriber cannot be counted run by
/// run; what the counters missed is counted instead, so a reader can tell they are short.
#[tokio::test(flavor = "current_thread")]
async fn events_missed_in_a_burst_are_counted() {
    let store: Arc<dyn Store> = Arc::new(hive_client::store::MemoryStore::new());
    let client = Client::from_store(store.clone(), OpsConfig::default());
    let metrics = Metrics::new().unwrap();
    metrics.watch(client.clone()).await.unwrap();
    let n = 40_000;
    let tasks = (0..n).map(|i| NewTask::new(format!("t{i}"), "burst"));
    client.create_tasks(tasks.collect()).await.unwrap();
    // Claimed in one go on this one thread: the watcher runs only after every claim's
    // event was sent, more than the bus keeps for it.
    let mut claimed = 0;
    while claimed < n {
        let claims = store.claim_tasks(&claim_params("w", 5000)).await.unwrap();
        assert!(!claims.is_empty());
        claimed += claims.len();
    }
    let (mut started, mut missed) = (0.0, 0.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while started + missed < n as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = parse(&metrics, &client).await;
        started = value(&s, "hive_runs_started_total", &[]);
        missed = value(&s, "hive_events_missed_total", &[]);
    }
    assert!(missed > 0.0, "started {started}, missed {missed}");
    assert!(started < n as f64, "started {started}");
    // Missed events are of every kind (the tasks' creation too): each claim is counted or
    // among them.
    assert!(
        started + missed >= n as f64,
        "started {started}, missed {missed}"
    );
}

hive_client::store::per_backend!(hive_client::store::testing::TestStore::run =>
    numbers_match_the_database_after_a_drain,
    schedules_show_whether_they_run_when_and_how_their_last_run_stands);

/// Each schedule's gauges: active or paused, its last and next slot, its last run's status;
/// a deleted schedule's gone at the next scrape.
async fn schedules_show_whether_they_run_when_and_how_their_last_run_stands(store: Arc<dyn Store>) {
    use hive_client::models::{NewSchedule, ScheduledTask};
    let client = Client::from_store(store.clone(), OpsConfig::default());
    let metrics = Metrics::new().unwrap();
    let nightly = NewSchedule::new("nightly", "0 2 * * *", ScheduledTask::new("n", "report"));
    let s = client.add_schedule(nightly).await.unwrap();
    let paused =
        NewSchedule::new("paused", "0 3 * * *", ScheduledTask::new("p", "report")).enabled(false);
    client.add_schedule(paused).await.unwrap();
    let behind = hive_client::store::testing::fixtures::schedule_behind(&s, 2 * 86_400);
    assert!(store.advance_schedule(&behind).await.unwrap());
    assert_eq!(client.fire_due_schedules().await.unwrap().slots, 1);

    let listed = |scrape: &Scrape, name: &str, metric: &str| {
        scrape
            .samples
            .iter()
            .any(|s| s.metric == metric && s.labels.get("schedule") == Some(name))
    };
    let scrape = parse(&metrics, &client).await;
    fn on(name: &str) -> [(&str, &str); 1] {
        [("schedule", name)]
    }
    assert_eq!(value(&scrape, "hive_schedule_enabled", &on("nightly")), 1.0);
    assert_eq!(value(&scrape, "hive_schedule_enabled", &on("paused")), 0.0);
    assert!(
        listed(&scrape, "paused", "hive_schedule_enabled"),
        "shown, as 0"
    );
    let fired = client.get_schedule("nightly").await.unwrap().unwrap();
    let at = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis() as f64 / 1000.0;
    assert_eq!(
        value(
            &scrape,
            "hive_schedule_last_fired_timestamp_seconds",
            &on("nightly")
        ),
        at(fired.last_fired.unwrap())
    );
    assert_eq!(
        value(
            &scrape,
            "hive_schedule_next_slot_timestamp_seconds",
            &on("nightly")
        ),
        at(fired.next_slot.unwrap())
    );
    assert!(
        !listed(
            &scrape,
            "paused",
            "hive_schedule_next_slot_timestamp_seconds"
        ),
        "a paused schedule is never due"
    );
    let run = [
        ("schedule", "nightly"),
        ("kind", "task"),
        ("status", "queued"),
    ];
    assert_eq!(value(&scrape, "hive_schedule_last_run", &run), 1.0);
    assert!(
        !listed(&scrape, "paused", "hive_schedule_last_run"),
        "never fired"
    );

    // The run ends; the gauge follows. A deleted schedule's gauges go.
    let task = client.list_tasks(&Default::default()).await.unwrap()[0].id;
    client.cancel_task(task, Some("not today")).await.unwrap();
    client.delete_schedule("paused").await.unwrap();
    let scrape = parse(&metrics, &client).await;
    let run = [
        ("schedule", "nightly"),
        ("kind", "task"),
        ("status", "cancelled"),
    ];
    assert_eq!(value(&scrape, "hive_schedule_last_run", &run), 1.0);
    let queued = [("schedule", "nightly"), ("status", "queued")];
    assert_eq!(value(&scrape, "hive_schedule_last_run", &queued), 0.0);
    assert!(!listed(&scrape, "paused", "hive_schedule_enabled"));

    // A schedule whose work cannot be created (a payload over a limit lowered since) is put
    // off a minute at a time, yet its gauge keeps its first slot not handled: overdue.
    let mut big = ScheduledTask::new("big", "report");
    big.payload = [("blob", "x".repeat(600))].into_iter().collect();
    let s = client
        .add_schedule(NewSchedule::new("big", "0 4 * * *", big))
        .await
        .unwrap();
    let behind = hive_client::store::testing::fixtures::schedule_behind(&s, 2 * 86_400);
    assert!(store.advance_schedule(&behind).await.unwrap());
    let stricter = OpsConfig {
        max_payload_bytes: 100,
        ..OpsConfig::default()
    };
    let strict = Client::from_store(store.clone(), stricter);
    assert_eq!(strict.fire_due_schedules().await.unwrap().failed.len(), 1);
    let put_off = client.get_schedule("big").await.unwrap().unwrap();
    assert!(put_off.next_slot.unwrap() > put_off.done_until + chrono::Duration::days(1));
    let scrape = parse(&metrics, &client).await;
    let next = value(
        &scrape,
        "hive_schedule_next_slot_timestamp_seconds",
        &on("big"),
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        now - next > 86_400.0,
        "overdue by a day or more: {next} at {now}"
    );
}

/// Postgres only: there, another process's runs reach the bus as events of their own.
mod between_processes {
    use super::*;
    hive_client::store::per_backend!([postgres], hive_client::store::testing::TestStore::run_with_url =>
        a_process_counting_its_own_runs_leaves_others_out);
}

/// A scrape the database cannot answer still gives the run counters, with `hive_store_up`
/// 0, and nothing of the driver's text (which names the database); that goes to the log.
#[tokio::test]
async fn a_failed_scrape_tells_the_scraper_nothing_of_the_database() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut store = hive_store::MockStore::new();
    store.expect_queue_stats().returning(|_| {
        Err(hive_store::Error::Database(
            "relation \"tasks\" at db.internal:5432 (secret)".into(),
        ))
    });
    let client = Client::from_store(Arc::new(store), OpsConfig::default());
    let app = hive_metrics::router(client, Metrics::new().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.contains("\nhive_store_up 0\n"), "{answer}");
    assert!(
        answer.contains("\nhive_runs_completed_total 0\n"),
        "{answer}"
    );
    assert!(
        !answer.contains("secret") && !answer.contains("db.internal"),
        "{answer}"
    );
}
