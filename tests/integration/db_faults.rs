//! Database faults: every connection of the workers killed mid-drain, the LISTEN ones
//! included; a server unreachable when a worker starts; a pool far smaller than a worker's
//! concurrency. Nothing is lost or done twice, and work proceeds once the database answers.

use hive_store::testing::fixtures::tasks;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hive_client::{
    Client, ConnectOptions, ConnectRetry, NewTask, OpsConfig, RunStatus, TaskContext, TaskError,
    TaskStatus, WorkerReport,
};
use hive_store::Store;
use hive_store::testing::size;
use sqlx::{Connection, PgConnection, Row};

use crate::calls::Calls;
use crate::log_capture::Logs;
use crate::proxy::{Cut, Proxy};

hive_store::per_backend!([postgres], hive_store::testing::TestStore::run_with_url =>
    killed_connections_mid_drain_lose_and_double_nothing,
    refused_connect_fails_at_once,
    pool_of_two_serves_concurrency_sixteen,
    stopping_at_once_with_the_database_gone_loses_nothing,
    stopping_at_once_during_a_claim_never_answered,
    a_graceful_stop_during_a_claim_never_answered,
    a_worker_cut_off_longer_than_its_lease_gives_its_runs_back,
    a_worker_cut_off_while_stopping_tells_its_handlers_to_stop,
    a_database_blip_at_shutdown_still_gives_held_tasks_back,
    told_to_stop_before_it_runs_with_the_database_gone,
    a_graceful_stop_with_the_database_gone_ends_and_loses_nothing,
    a_claim_never_answered_is_given_up_and_tried_again,
);

/// A claim whose connection stops answering (cut silently: no error comes until TCP gives
/// up, some 15 minutes) is given up after 10 s (three leases, at least 10 s), and the
/// worker claims again on another connection: the task runs, once, without a restart.
async fn a_claim_never_answered_is_given_up_and_tried_again(store: Arc<dyn Store>, url: String) {
    const TYPE: &str = "silenced-claim";
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let silenced = through(&proxied).await;
    let calls = Calls::default();
    let worker = silenced
        .worker("silenced")
        .task_types([TYPE])
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100));
    let (stop, run) = run_recording(&operator, worker, "silenced", &calls).await;
    // Only a claim binds the task type (registration, which names it too, is done).
    proxy.cut_next_sending(TYPE.as_bytes(), Cut::Silence);
    let id = operator.create_task(NewTask::new("t", TYPE)).await.unwrap();
    let created = Instant::now();
    while operator.get_task(id).await.unwrap().unwrap().status != TaskStatus::Completed {
        assert!(
            created.elapsed() < Duration::from_secs(40),
            "the claim that never answered was never given up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "SILENCED CLAIM: the task completed {:?} after it was created (lease 2 s)",
        created.elapsed()
    );
    stop.shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(30), run).await;
    proxy.close();
    stopped.expect("the worker stopped").unwrap().unwrap();
    assert_eq!(calls.all().len(), 1, "{:?}", calls.all());
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pool_of_two_serves_concurrency_sixteen() {
        let ts = hive_store::testing::sqlite().await.unwrap();
        hive_store::testing::TestStore::run_with_url(
            ts,
            super::pool_of_two_serves_concurrency_sixteen,
        )
        .await;
    }
}

mod startup {
    use hive_store::testing::{TestStore, postgres, report_skip};

    // Current-thread: the log capture sees only its own thread, and every task runs here.
    #[tokio::test]
    async fn unreachable_at_start_then_work_proceeds() {
        let Some(ts) = postgres().await else {
            return report_skip("db_faults::startup::unreachable_at_start_then_work_proceeds");
        };
        TestStore::run_with_url(ts, super::unreachable_at_start_then_work_proceeds).await;
    }
}

fn with_query(url: &str, key: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.query_pairs_mut().append_pair(key, value);
    u.into()
}

/// The test's own connection for inspecting and killing; its pid is never killed.
async fn admin(url: &str) -> PgConnection {
    PgConnection::connect(&with_query(url, "application_name", "hive-fault-admin"))
        .await
        .unwrap()
}

/// Terminates every backend whose application name is in `names`, all at once; returns
/// the pid and name of each connection killed.
async fn kill(db: &mut PgConnection, names: &[String]) -> Vec<(i32, String)> {
    let rows = sqlx::query(
        "SELECT pid, application_name, pg_terminate_backend(pid) AS signalled \
         FROM pg_stat_activity WHERE application_name = ANY($1) AND pid <> pg_backend_pid()",
    )
    .bind(names)
    .fetch_all(&mut *db)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            assert!(
                r.get::<bool, _>("signalled"),
                "could not terminate a backend"
            );
            (r.get("pid"), r.get("application_name"))
        })
        .collect()
}

/// Waits until a backend other than the `dead` ones is connected under each of `names`;
/// returns how long that took.
async fn wait_connected(
    db: &mut PgConnection,
    names: &[String],
    dead: &[i32],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let up: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity \
             WHERE application_name = ANY($1) AND NOT pid = ANY($2)",
        )
        .bind(names)
        .bind(dead)
        .fetch_one(&mut *db)
        .await
        .unwrap();
        if up as usize == names.len() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "only {up} of {names:?} connected after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn completed(db: &mut PgConnection) -> usize {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'completed'")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    n as usize
}

async fn wait_completed(db: &mut PgConnection, at_least: usize, within: Duration) {
    let started = Instant::now();
    loop {
        let done = completed(db).await;
        if done >= at_least {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{done} of {at_least} tasks completed after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Four workers (each with its own pool and listener) drain the queue while every one of
/// their connections is terminated by the server, twice.
async fn killed_connections_mid_drain_lose_and_double_nothing(store: Arc<dyn Store>, url: String) {
    const WORKERS: usize = 4;
    let n = size(3000, 20_000);
    // Pool connections carry this name; each store's listener is `hive-listen-<origin>`.
    let tag = format!("hive-fault-{}", uuid::Uuid::new_v4().simple());
    let worker_url = with_query(&url, "application_name", &tag);
    let mut db = admin(&url).await;
    let app = Client::from_store(store, OpsConfig::default());
    app.create_tasks(tasks("t", "drain", n)).await.unwrap();

    let calls = Calls::default();
    let mut listeners = Vec::new();
    let mut stops = Vec::new();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let options = ConnectOptions {
            max_connections: Some(4),
            ..ConnectOptions::default()
        };
        let store = hive_store::connect_with(&worker_url, &options)
            .await
            .unwrap();
        listeners.push(format!("hive-listen-{}", store.origin().simple()));
        let worker = Client::from_store(store, OpsConfig::default())
            .worker(format!("drain-{w}"))
            .concurrency(16)
            .lease(Duration::from_secs(5))
            .reap_interval(Duration::from_millis(500))
            // Long enough that only a notification explains a prompt pickup.
            .poll_interval(Duration::from_secs(30))
            .shutdown_grace(Duration::from_secs(5))
            .handle_signals(false);
        stops.push(worker.shutdown_handle());
        let calls = calls.clone();
        workers.push(tokio::spawn(worker.run(move |ctx: TaskContext| {
            let calls = calls.clone();
            async move {
                calls.record(&ctx);
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, TaskError>(())
            }
        })));
    }
    let mut victims = listeners.clone();
    victims.push(tag);
    wait_connected(&mut db, &listeners, &[], Duration::from_secs(30)).await;

    let drain_started = Instant::now();
    let mut last_kill = Instant::now();
    for round in 1..=2 {
        wait_completed(&mut db, n * round / 3, Duration::from_secs(60)).await;
        let killed = kill(&mut db, &victims).await;
        last_kill = Instant::now();
        let at = completed(&mut db).await;
        assert!(
            at < n,
            "kill {round} came after the drain ended: make the drain longer"
        );
        let listens = killed
            .iter()
            .filter(|(_, a)| a.starts_with("hive-listen-"))
            .count();
        assert_eq!(listens, WORKERS, "every listener was connected and killed");
        assert!(killed.len() > WORKERS, "pool connections were killed too");
        let dead: Vec<i32> = killed.iter().map(|(pid, _)| *pid).collect();
        let back = wait_connected(&mut db, &listeners, &dead, Duration::from_secs(30)).await;
        eprintln!(
            "kill {round}: {} connections ({listens} LISTEN) at {at}/{n} completed; \
             every listener back after {back:?}",
            killed.len(),
        );
    }
    wait_completed(&mut db, n, Duration::from_secs(60)).await;
    eprintln!(
        "drained {n} tasks in {:?}, {:?} after the last kill",
        drain_started.elapsed(),
        last_kill.elapsed()
    );

    // Idle workers poll every 30 s: a prompt pickup proves the listeners are back.
    let created = Instant::now();
    let late = app
        .create_task(NewTask::new("late", "drain"))
        .await
        .unwrap();
    loop {
        let t = app.get_task(late).await.unwrap().unwrap();
        if t.status == TaskStatus::Completed {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(10),
            "a task created after the kills waited {:?} (status {}): no notification woke a worker",
            created.elapsed(),
            t.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "task created after the kills completed in {:?}",
        created.elapsed()
    );

    for stop in &stops {
        stop.shutdown();
    }
    let mut total = WorkerReport::default();
    for w in workers {
        let r = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        total += &r;
    }
    let all = n as u64 + 1;
    let row = sqlx::query(
        "SELECT \
           (SELECT count(*) FROM tasks) AS tasks, \
           (SELECT count(*) FROM tasks WHERE status = 'completed') AS completed, \
           (SELECT count(*) FROM runs WHERE status = 'success') AS successes, \
           (SELECT count(*) FROM (SELECT task_id FROM runs WHERE status = 'success' \
              GROUP BY task_id HAVING count(*) > 1) d) AS doubled, \
           (SELECT count(*) FROM runs WHERE status = 'timeout') AS timeouts, \
           (SELECT count(*) FROM runs WHERE status NOT IN ('success', 'timeout')) AS other",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let get = |c: &str| row.get::<i64, _>(c) as u64;
    eprintln!(
        "runs: {} success, {} timeout; workers: {total:?}",
        get("successes"),
        get("timeouts")
    );
    assert_eq!(get("tasks"), all);
    assert_eq!(get("completed"), all, "a task was left unfinished");
    assert_eq!(get("doubled"), 0, "a task completed twice");
    assert_eq!(get("successes"), all);
    assert_eq!(get("other"), 0, "a run was left running or failed");

    // Every run a handler executed succeeded, and no other run did: an outcome lost with a
    // connection would leave its run to time out and the task to run again. A timed-out
    // run may only be a claim whose reply was lost, which no handler ever saw.
    let succeeded: HashSet<(uuid::Uuid, i32)> =
        sqlx::query_as("SELECT task_id, run_number FROM runs WHERE status = 'success'")
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let calls = calls.all();
    let executed: HashSet<(uuid::Uuid, i32)> = calls
        .iter()
        .map(|(task, run)| (task.0, *run as i32))
        .collect();
    assert_eq!(executed.len(), calls.len(), "one run was executed twice");
    let lost: Vec<_> = executed.difference(&succeeded).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} executed runs did not succeed (their outcomes were lost), e.g. {lost:?}",
        executed.difference(&succeeded).count()
    );
    assert_eq!(
        executed, succeeded,
        "a run succeeded that no handler executed"
    );

    // A completion whose commit succeeded but whose reply was lost is retried and then
    // reported stale: never counted twice, never lost.
    assert_eq!(total.failed, 0);
    assert!(
        total.completed <= all,
        "completions counted twice: {total:?}"
    );
    assert!(total.completed + total.stale >= all, "{total:?}");
}

/// A worker whose database is down when it starts: a plain connect fails at once with a
/// clear error; a retrying connect logs each failure and succeeds once the port opens.
async fn unreachable_at_start_then_work_proceeds(_: Arc<dyn Store>, url: String) {
    let (logs, _capture) = Logs::capture();
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    let target = proxy.addr().to_string();

    let err = Client::connect(&proxied)
        .await
        .expect_err("nothing listens yet");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("database unavailable at {target}: ")),
        "{shown}"
    );
    if let Some(password) = url::Url::parse(&url).unwrap().password() {
        assert!(!shown.contains(password), "{shown}");
    }

    let retry = ConnectRetry {
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        give_up_after: Some(Duration::from_secs(30)),
    };
    let connecting = tokio::spawn({
        let proxied = proxied.clone();
        async move { Client::connect_with_retry(&proxied, &retry).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !connecting.is_finished(),
        "connect_with_retry returned while the port was closed"
    );
    let failures = logs
        .text()
        .lines()
        .filter(|l| l.contains("cannot connect to the database; retrying") && l.contains(&target))
        .count();
    assert!(failures >= 3, "each failure is logged:\n{}", logs.text());

    proxy.listen().await;
    let opened = Instant::now();
    let client = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .expect("connected within 20 s of the server answering")
        .unwrap()
        .expect("connects once the server answers");
    eprintln!(
        "{failures} failed attempts logged in the first second; connected {:?} after the port opened",
        opened.elapsed()
    );

    let n = 50;
    client
        .create_tasks(
            (0..n)
                .map(|i| NewTask::new(format!("t{i}"), "late-start"))
                .collect(),
        )
        .await
        .unwrap();
    let report = crate::worker::drain_with_noop_worker(&client, "late-start").await;
    assert_eq!(report.completed, n as u64);
    let counts = client.count_tasks(None).await.unwrap();
    assert_eq!(counts.get(&TaskStatus::Completed), Some(&(n as u64)));
}

/// A server that answers but refuses the connection (here: no such database) gives a
/// clear error at once; retrying would only hang a misconfigured worker.
async fn refused_connect_fails_at_once(_: Arc<dyn Store>, url: String) {
    let mut wrong = url::Url::parse(&url).unwrap();
    let database = format!("hive_no_such_db_{}", uuid::Uuid::new_v4().simple());
    wrong.set_path(&database);
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        Client::connect_with_retry(wrong.as_str(), &ConnectRetry::default()),
    )
    .await
    .expect("a refused connect is not retried")
    .expect_err("the database does not exist");
    let shown = err.to_string();
    assert!(
        !shown.starts_with("database unavailable"),
        "the server answered: {shown}"
    );
    assert!(shown.contains(&database), "{shown}");
}

/// A pool of two connections feeding sixteen concurrent handlers: claims, completions,
/// heartbeats and the reaper queue for connections, yet no lease runs out waiting.
async fn pool_of_two_serves_concurrency_sixteen(_: Arc<dyn Store>, url: String) {
    let options = ConnectOptions {
        max_connections: Some(2),
        ..ConnectOptions::default()
    };
    let store = hive_store::connect_with(&url, &options).await.unwrap();
    let c = Client::from_store(store, OpsConfig::default());
    let n = size(500, 5000);
    let ids = c.create_tasks(tasks("t", "slow", n)).await.unwrap();
    let started = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(600),
        c.worker("small-pool")
            .concurrency(16)
            .lease(Duration::from_secs(3))
            // Reap often, so a lease that ran out would be taken back during the drain.
            .reap_interval(Duration::from_millis(250))
            .exit_when_idle(true)
            .handle_signals(false)
            .poll_interval(Duration::from_millis(50))
            .run(|_ctx: TaskContext| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, TaskError>(())
            }),
    )
    .await
    .unwrap()
    .unwrap();
    eprintln!(
        "{n} tasks of 100 ms through 2 connections at concurrency 16 in {:?}",
        started.elapsed()
    );
    assert_eq!(
        report,
        WorkerReport {
            completed: n as u64,
            ..WorkerReport::default()
        }
    );
    for id in ids {
        let runs = c.list_runs(id).await.unwrap();
        let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [RunStatus::Success],
            "task {id}: a lease ran out while waiting for a connection"
        );
    }
}

/// The worker (a client of its own, through the proxy) and the store behind it.
async fn through(proxied: &str) -> Client {
    let options = ConnectOptions {
        schema: hive_store::SchemaPolicy::Existing,
        ..Default::default()
    };
    Client::from_store(
        hive_store::connect_with(proxied, &options).await.unwrap(),
        OpsConfig::default(),
    )
}

/// A worker told to stop at once while its database is gone (the commit of its handlers'
/// outcomes retrying) stops without waiting for the database; its tasks come back with
/// their leases, and another worker finishes every one.
async fn stopping_at_once_with_the_database_gone_loses_nothing(store: Arc<dyn Store>, url: String) {
    stopping_with_the_database_gone_loses_nothing(store, url, true).await;
}

/// A worker stopped gracefully while its database is gone (its handlers' outcomes retrying)
/// still stops, once the last commits have had their time; their tasks come back with
/// their leases and another worker finishes every one.
async fn a_graceful_stop_with_the_database_gone_ends_and_loses_nothing(
    store: Arc<dyn Store>,
    url: String,
) {
    stopping_with_the_database_gone_loses_nothing(store, url, false).await;
}

/// A worker whose handlers returned after its database went away, stopped at once or
/// gracefully: it stops, and another worker finishes every task.
async fn stopping_with_the_database_gone_loses_nothing(
    store: Arc<dyn Store>,
    url: String,
    at_once: bool,
) {
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let cut_off = through(&proxied).await;
    let ids: HashSet<_> = operator
        .create_tasks(tasks("t", "cut-off", 4))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let calls = Calls::default();
    let (go, gate) = tokio::sync::watch::channel(false);
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let worker = cut_off
        .worker("cut-off")
        .concurrency(4)
        .lease(Duration::from_secs(2))
        .shutdown_grace(Duration::from_secs(3600))
        .handle_signals(false);
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(worker.run({
        let calls = calls.clone();
        move |ctx: TaskContext| {
            calls.record(&ctx);
            let _ = started_tx.send(());
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|go| *go).await;
                Ok::<_, TaskError>(())
            }
        }
    }));
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .expect("every handler starts");
    }
    proxy.close();
    // The handlers return; their outcomes' commit fails and is retried.
    go.send_replace(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    if at_once {
        stop.shutdown_now();
    } else {
        stop.shutdown();
    }
    tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the worker stopped without waiting for the database")
        .unwrap()
        .unwrap();
    finish_the_rest(&operator, &calls).await;
    for id in &ids {
        let t = operator.get_task(*id).await.unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    }
    let called: HashSet<_> = calls.all().iter().map(|(t, _)| *t).collect();
    assert_eq!(called, ids);
}

/// Runs `worker` (named `id`) with a handler that records each call and succeeds, and
/// returns once it registered (within 30 s): its stop handle and its run.
async fn run_recording(
    operator: &Client,
    worker: hive_client::WorkerBuilder,
    id: &str,
    calls: &Calls,
) -> (
    hive_client::ShutdownHandle,
    tokio::task::JoinHandle<hive_client::Result<WorkerReport>>,
) {
    let worker = worker.handle_signals(false);
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(worker.run({
        let calls = calls.clone();
        move |ctx: TaskContext| {
            calls.record(&ctx);
            async { Ok::<_, TaskError>(()) }
        }
    }));
    let registered = Instant::now();
    while operator.get_worker(id).await.unwrap().is_none() {
        assert!(
            registered.elapsed() < Duration::from_secs(30),
            "the worker registers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (stop, run)
}

/// Another worker, on the database itself, runs what is left (the tasks a stopped worker's
/// leases give back) until idle, recording its handler's calls in `calls`.
async fn finish_the_rest(operator: &Client, calls: &Calls) {
    let after = operator
        .worker("after")
        .concurrency(4)
        .reap_interval(Duration::from_millis(200))
        .exit_when_idle(true)
        .handle_signals(false);
    let handler = {
        let calls = calls.clone();
        move |ctx: TaskContext| {
            calls.record(&ctx);
            async { Ok::<_, TaskError>(()) }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), after.run(handler))
        .await
        .expect("the tasks came back and were finished")
        .unwrap();
}

/// A worker told to stop at once while its claim waits on a database that stopped
/// answering (its packets held, the connection open: no error ever comes) stops within
/// the bound, and another worker then runs the task once.
async fn stopping_at_once_during_a_claim_never_answered(store: Arc<dyn Store>, url: String) {
    stopping_during_a_claim_never_answered(store, url, true).await;
}

/// The same, told to stop gracefully: a claim that never answers is given up too (the
/// worker claims no more once told to stop), and so are the shutdown's own calls that
/// hang, so the stop ends instead of waiting for TCP to give up.
async fn a_graceful_stop_during_a_claim_never_answered(store: Arc<dyn Store>, url: String) {
    stopping_during_a_claim_never_answered(store, url, false).await;
}

async fn stopping_during_a_claim_never_answered(store: Arc<dyn Store>, url: String, at_once: bool) {
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let stalled = through(&proxied).await;
    let calls = Calls::default();
    let worker = stalled
        .worker("stalled")
        .concurrency(1)
        .poll_interval(Duration::from_millis(20));
    let (stop, run) = run_recording(&operator, worker, "stalled", &calls).await;
    proxy.stall();
    let id = operator
        .create_task(NewTask::new("t", "stalled"))
        .await
        .unwrap();
    // Polling every 20 ms, the worker's next claim goes out within this and hangs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if at_once {
        stop.shutdown_now();
    } else {
        stop.shutdown();
    }
    let stopped = tokio::time::timeout(Duration::from_secs(30), run).await;
    // Whatever happened, the held connections end here (a transaction whose COMMIT the
    // proxy holds keeps its locks until then), so neither the next worker nor the test's
    // cleanup waits on them.
    proxy.close();
    stopped
        .expect("the worker stopped without an answer from the database")
        .unwrap()
        .unwrap();
    finish_the_rest(&operator, &calls).await;
    let t = operator.get_task(id).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Completed, "{t:?}");
    assert_eq!(calls.all().len(), 1, "{:?}", calls.all());
}

/// A worker cut off from its database for longer than its lease tells its handler to stop
/// (other workers may be taking the task back); once the database is back it gives the run
/// back, its attempt not counted, and runs the task again to completion.
async fn a_worker_cut_off_longer_than_its_lease_gives_its_runs_back(
    store: Arc<dyn Store>,
    url: String,
) {
    const TYPE: &str = "cut-off-long";
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let cut_off = through(&proxied).await;
    let id = operator
        .create_task(NewTask::new("long", TYPE))
        .await
        .unwrap();
    let calls = Calls::default();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (told_tx, mut told) = tokio::sync::mpsc::unbounded_channel();
    let worker = cut_off
        .worker("cut-off")
        .task_types([TYPE])
        .lease(Duration::from_secs(2))
        // Nobody takes the run back by its lease here: the give-back is what frees it.
        .reap_interval(Duration::from_secs(3600))
        .handle_signals(false);
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(worker.run({
        let calls = calls.clone();
        move |ctx: TaskContext| {
            calls.record(&ctx);
            let (started, told) = (started_tx.clone(), told_tx.clone());
            async move {
                let mut log = None;
                if ctx.run.run_number == 1 {
                    let _ = started.send(());
                    ctx.cancelled().await;
                    let _ = told.send(());
                    // Some clean-up: a handler returning at the very moment it is told
                    // would race the stop signal, and its success may be reported instead.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    log = Some("stopped half-way\n".to_owned());
                }
                Ok::<_, TaskError>(hive_client::TaskOutput {
                    result: Some(serde_json::json!("done")),
                    log,
                })
            }
        }
    }));
    tokio::time::timeout(Duration::from_secs(30), started.recv())
        .await
        .expect("the handler starts");
    proxy.close();
    tokio::time::timeout(Duration::from_secs(30), told.recv())
        .await
        .expect("the handler is told to stop once the lease has passed without a heartbeat");
    proxy.listen().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while operator.get_task(id).await.unwrap().unwrap().status != TaskStatus::Completed {
        assert!(Instant::now() < deadline, "the task did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = operator.list_runs(id).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [RunStatus::Cancelled, RunStatus::Success],
        "{runs:?}"
    );
    let why = runs[0].error_message.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("given back: its worker stored no heartbeat for")
            && why.ends_with("; the handler stopped"),
        "{why}"
    );
    assert_eq!(
        runs[0].output_log.as_deref(),
        Some("stopped half-way\n"),
        "the run given back keeps what its handler printed"
    );
    let task = operator.get_task(id).await.unwrap().unwrap();
    assert_eq!(task.attempts, 1, "the run given back is not counted");
    assert_eq!(calls.all(), [(id, 1), (id, 2)]);
    stop.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((report.completed, report.released), (1, 1), "{report:?}");
}

/// A worker told to stop gracefully with a long grace, then cut off from its database for
/// longer than its lease: its handler is told to stop then, not at the end of the grace
/// (another worker may be running the task by then).
async fn a_worker_cut_off_while_stopping_tells_its_handlers_to_stop(
    store: Arc<dyn Store>,
    url: String,
) {
    const TYPE: &str = "cut-off-stopping";
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let cut_off = through(&proxied).await;
    let id = operator
        .create_task(NewTask::new("long", TYPE))
        .await
        .unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (told_tx, mut told) = tokio::sync::mpsc::unbounded_channel();
    let worker = cut_off
        .worker("cut-off-stopping")
        .task_types([TYPE])
        .lease(Duration::from_secs(2))
        .shutdown_grace(Duration::from_secs(600))
        .reap_interval(Duration::from_secs(3600))
        .handle_signals(false);
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(worker.run(move |ctx: TaskContext| {
        let (started, told) = (started_tx.clone(), told_tx.clone());
        async move {
            let _ = started.send(());
            ctx.cancelled().await;
            let _ = told.send(());
            // As in the test above: returning at the very moment it is told would race.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, TaskError>(())
        }
    }));
    tokio::time::timeout(Duration::from_secs(30), started.recv())
        .await
        .expect("the handler starts");
    stop.shutdown();
    proxy.close();
    tokio::time::timeout(Duration::from_secs(30), told.recv())
        .await
        .expect("the stopping worker's handler is told to stop once its lease has lapsed");
    proxy.listen().await;
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    let task = operator.get_task(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Queued, "given back: {task:?}");
    let runs = operator.list_runs(id).await.unwrap();
    let why = runs[0].error_message.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("given back: its worker stored no heartbeat for"),
        "{runs:?}"
    );
}

/// The database goes away just as a worker is told to stop, and comes back a second later:
/// the shutdown's last calls are retried, so the tasks its handlers held are queued again
/// at once (not after their five-minute leases) and the worker is unregistered.
async fn a_database_blip_at_shutdown_still_gives_held_tasks_back(
    store: Arc<dyn Store>,
    url: String,
) {
    const TYPE: &str = "blip";
    let operator = Client::from_store(store, OpsConfig::default());
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let cut_off = through(&proxied).await;
    let ids = operator.create_tasks(tasks("t", TYPE, 2)).await.unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let worker = cut_off
        .worker("blip")
        .task_types([TYPE])
        .concurrency(2)
        .lease(Duration::from_secs(300))
        .reap_interval(Duration::from_secs(3600))
        .shutdown_grace(Duration::ZERO)
        .handle_signals(false);
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(worker.run(move |_ctx: TaskContext| {
        let _ = started_tx.send(());
        std::future::pending::<Result<(), TaskError>>()
    }));
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .expect("every handler starts");
    }
    proxy.close();
    stop.shutdown();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.listen().await;
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker stopped once the database was back")
        .unwrap()
        .unwrap();
    assert_eq!(report.released, 2);
    for id in ids {
        let t = operator.get_task(id).await.unwrap().unwrap();
        assert_eq!((t.status, t.attempts), (TaskStatus::Queued, 0), "{t:?}");
    }
    assert!(operator.get_worker("blip").await.unwrap().is_none());
}

/// A worker told to stop before it runs, its database gone by then, returns at once with
/// nothing done, instead of retrying its registration until the database answers.
async fn told_to_stop_before_it_runs_with_the_database_gone(_: Arc<dyn Store>, url: String) {
    let (mut proxy, proxied) = Proxy::for_url(&url).await;
    proxy.listen().await;
    let cut_off = through(&proxied).await;
    proxy.close();
    let worker = cut_off.worker("never-ran").handle_signals(false);
    worker.shutdown_handle().shutdown();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        worker.run(|_ctx: TaskContext| async { Ok::<_, TaskError>(()) }),
    )
    .await
    .expect("the worker returned without waiting for the database")
    .unwrap();
    assert_eq!(report, WorkerReport::default());
}
