//! Limits under sixteen claimers at once, each on a store of its own (its own connections,
//! on SQLite its own writer queue), claiming, holding and finishing tasks as fast as they
//! can. Every handler's start and end is recorded inside its claim's lifetime, so the
//! recorded overlap can only understate the real one: it must never pass a limit, and must
//! reach it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hive_models::{FlowRule, NewTask, Scope};
use hive_store::testing::fixtures::{claim_params, success};
use hive_store::{ConnectOptions, Store};

hive_store::per_backend!(hive_store::testing::TestStore::run_with_url =>
    limits_hold_under_sixteen_concurrent_claimers,
    a_rate_holds_in_every_window_under_sixteen_claimers,
);

const CLAIMERS: usize = 16;

/// (scope it counts against, start, end) of every handler run.
type Spans = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

async fn limits_hold_under_sixteen_concurrent_claimers(store: Arc<dyn Store>, url: String) {
    let now = store.now().await.unwrap();
    let mut api = FlowRule::new(Scope::Type("api".into()), now);
    api.max_running = Some(4);
    store.put_flow_rule(&api).await.unwrap();
    let mut k0 = FlowRule::new(Scope::Key("k0".into()), now);
    k0.max_running = Some(2);
    store.put_flow_rule(&k0).await.unwrap();
    let mut tasks: Vec<NewTask> = (0..40)
        .map(|i| NewTask::new(format!("api-{i}"), "api"))
        .collect();
    for i in 0..48 {
        tasks
            .push(NewTask::new(format!("keyed-{i}"), "job").concurrency_key(format!("k{}", i % 4)));
    }
    tasks.extend((0..40).map(|i| NewTask::new(format!("free-{i}"), "free")));
    let total = tasks.len();
    store.insert_tasks(tasks).await.unwrap();

    let spans: Spans = Arc::default();
    let started = Instant::now();
    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let s = claimer_store(&store, &url).await;
        let spans = spans.clone();
        claimers.push(tokio::spawn(async move {
            let p = claim_params(&format!("claimer-{c}"), 2);
            let mut done = 0;
            let mut busy = Instant::now();
            // Until nothing came for 2 s: tasks of a full key wait for others to finish.
            while busy.elapsed() < Duration::from_secs(2)
                && started.elapsed() < Duration::from_secs(60)
            {
                let claims = s.claim_tasks(&p).await.unwrap();
                if claims.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let begin = Instant::now();
                // Long enough for every limit to fill while other claimers keep asking.
                tokio::time::sleep(Duration::from_millis(100 + (c as u64 % 5) * 5)).await;
                let end = Instant::now();
                let outcomes: Vec<_> = claims.iter().map(|cl| success(cl.run.id)).collect();
                s.finish_runs(&outcomes).await.unwrap();
                let mut spans = spans.lock().unwrap();
                for cl in &claims {
                    let scope = match &cl.task.concurrency_key {
                        Some(k) => format!("key:{k}"),
                        None => format!("type:{}", cl.task.task_type),
                    };
                    spans.push((scope, begin, end));
                }
                done += claims.len();
                busy = Instant::now();
            }
            done
        }));
    }
    let mut done = 0;
    for c in claimers {
        done += c.await.unwrap();
    }
    assert_eq!(done, total, "every task ran once");

    let spans = spans.lock().unwrap();
    let peaks = peaks(&spans);
    let want = [
        ("type:api", 4),
        ("key:k0", 2),
        ("key:k1", 1),
        ("key:k2", 1),
        ("key:k3", 1),
    ];
    for (scope, limit) in want {
        assert_eq!(
            peaks.get(scope).copied(),
            Some(limit),
            "{scope} ran at most {limit} at once and reached it; peaks {peaks:?}"
        );
    }
    assert!(
        peaks["type:free"] > 2,
        "unlimited tasks ran wide: {peaks:?}"
    );
    eprintln!(
        "FLOW {}: {CLAIMERS} claimers, {total} tasks in {:.2} s, peaks {peaks:?}",
        store.backend(),
        started.elapsed().as_secs_f64()
    );
}

/// A store per claimer: its own connections (memory has only the one store).
async fn claimer_store(store: &Arc<dyn Store>, url: &str) -> Arc<dyn Store> {
    if url.starts_with("memory") {
        return store.clone();
    }
    let options = ConnectOptions {
        max_connections: Some(2),
        ..Default::default()
    };
    hive_store::connect_with(url, &options).await.unwrap()
}

async fn a_rate_holds_in_every_window_under_sixteen_claimers(store: Arc<dyn Store>, url: String) {
    let per = Duration::from_millis(400);
    let mut paced = FlowRule::new(Scope::Type("paced".into()), store.now().await.unwrap());
    paced.rate = Some(hive_models::Rate { max: 5, per });
    store.put_flow_rule(&paced).await.unwrap();
    let ids = store
        .insert_tasks(
            (0..20)
                .map(|i| NewTask::new(format!("p{i}"), "paced"))
                .collect(),
        )
        .await
        .unwrap()
        .ids;
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let s = claimer_store(&store, &url).await;
        let done = done.clone();
        claimers.push(tokio::spawn(async move {
            let p = claim_params(&format!("claimer-{c}"), 3);
            while done.load(Ordering::SeqCst) < 20 && started.elapsed() < Duration::from_secs(30) {
                let claims = s.claim_tasks(&p).await.unwrap();
                let outcomes: Vec<_> = claims.iter().map(|cl| success(cl.run.id)).collect();
                s.finish_runs(&outcomes).await.unwrap();
                done.fetch_add(claims.len(), Ordering::SeqCst);
                if claims.is_empty() {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        }));
    }
    for c in claimers {
        c.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 20);
    let mut starts = Vec::new();
    for id in ids {
        starts.extend(
            store
                .list_runs(id)
                .await
                .unwrap()
                .iter()
                .map(|r| r.started_at),
        );
    }
    starts.sort();
    let per = chrono::Duration::from_std(per).unwrap();
    let most = (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|t| **t - starts[i] < per)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(
        most, 5,
        "at most 5 starts in any 400 ms, and 5 reached: {starts:?}"
    );
    let spread = (starts[19] - starts[0]).num_milliseconds();
    assert!(
        spread >= 3 * 400,
        "20 starts at 5 per 400 ms take 1.2 s at least: {spread} ms"
    );
    eprintln!(
        "RATE {}: 20 starts over {spread} ms, at most {most} per 400 ms",
        store.backend()
    );
}

/// The most spans of each scope open at one instant (an end before a start at the same
/// instant).
fn peaks(spans: &[(String, Instant, Instant)]) -> HashMap<String, usize> {
    let mut events: HashMap<&str, Vec<(Instant, i32)>> = HashMap::new();
    for (scope, begin, end) in spans {
        let e = events.entry(scope).or_default();
        e.push((*begin, 1));
        e.push((*end, -1));
    }
    events
        .into_iter()
        .map(|(scope, mut e)| {
            e.sort();
            let mut open = 0;
            let mut peak = 0;
            for (_, d) in e {
                open += d;
                peak = peak.max(open);
            }
            (scope.to_owned(), peak as usize)
        })
        .collect()
}
