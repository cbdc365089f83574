//! The LISTEN side of notifications: one background task per store that forwards every
//! notification on its schema's channel (this store's own included) into the store's [`Notifier`].

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::oneshot;

use hive_models::{PlanId, RunId, TaskId, TaskStatus, WorkerId};

use crate::{Change, Notification, Notifier, TaskStatusChange};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The listener's bounds on waiting for its connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// How long reading the channel's name, one (re)connect — connect, LISTEN — and one idle
    /// check may take. A connection that stalls partway must not keep the listener away: the
    /// attempt is dropped and made again.
    pub open: Duration,
    /// How long a listener that has heard nothing waits before checking its connection with
    /// a query. A connection that died without a word (a cut link, a server host gone, a
    /// server that gave up on it during a partition) is otherwise waited on forever, since a
    /// listener only reads.
    pub idle_check: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            open: Duration::from_secs(10),
            idle_check: Duration::from_secs(30),
        }
    }
}

/// Keeps the background listener alive: dropping it (with the store) stops the task, which
/// then closes its connection.
#[derive(Debug)]
pub(super) struct Handle {
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the listener and waits (bounded) for its connection to end.
    pub async fn stop(self) {
        let Handle { _stop, task } = self;
        drop(_stop);
        let _ = tokio::time::timeout(crate::CLOSE_WAIT, task).await;
    }
}

/// Connects and LISTENs before returning, so that every notification committed after
/// `subscribe()` returns reaches the subscriber; then forwards in the background.
/// `channel`: the store's, as its pooled connections name it.
pub(super) async fn start(
    channel: String,
    options: PgConnectOptions,
    notifier: Notifier,
    timing: Timing,
) -> Result<Handle, sqlx::Error> {
    let listening = Listening { channel, options };
    let listener = open(&listening, timing).await?;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(listener, listening, notifier, timing, stopped));
    Ok(Handle { _stop: stop, task })
}

/// The store's channel as `pool`'s connections name it, within `timing.open`.
pub(super) async fn channel(pool: &sqlx::PgPool, timing: Timing) -> Result<String, sqlx::Error> {
    let read = sqlx::query_scalar(concat!("SELECT ", channel_sql!())).fetch_one(pool);
    tokio::time::timeout(timing.open, read)
        .await
        .unwrap_or_else(|_| Err(stalled("reading the channel's name", timing.open)))
}

/// What the listener connects to and listens on.
struct Listening {
    channel: String,
    options: PgConnectOptions,
}

/// [`connect_and_listen`] within `timing.open`.
async fn open(listening: &Listening, timing: Timing) -> Result<PgListener, sqlx::Error> {
    tokio::time::timeout(timing.open, connect_and_listen(listening))
        .await
        .unwrap_or_else(|_| Err(stalled("connecting and LISTENing", timing.open)))
}

fn stalled(what: &str, after: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the notification listener's connection gave no answer to {what} within {after:?}"),
    ))
}

/// A listener on a connection of its own (a one-connection pool the listener owns), so it
/// never holds one of the store's pooled connections and dies with the listener.
async fn connect_and_listen(listening: &Listening) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(BACKOFF_MAX)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(listening.options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    // Reconnecting is ours to do (with backoff and a catch-up wake-up), not the driver's.
    listener.eager_reconnect(false);
    listener.listen(&listening.channel).await?;
    Ok(listener)
}

async fn run(
    mut listener: PgListener,
    listening: Listening,
    notifier: Notifier,
    timing: Timing,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let lost = loop {
            tokio::select! {
                _ = &mut stopped => return,
                // `try_recv` is cancel-safe: a notification is either returned or still buffered.
                received = tokio::time::timeout(timing.idle_check, listener.try_recv()) => match received {
                    Ok(Ok(Some(n))) => forward(&notifier, n.payload()),
                    Ok(Ok(None)) => break "connection closed".to_owned(),
                    Ok(Err(e)) => break e.to_string(),
                    Err(_quiet) => {
                        if let Err(e) = check(&mut listener, timing).await {
                            break e.to_string();
                        }
                    }
                },
            }
        };
        tracing::warn!(reason = %lost, "hive: lost the Postgres notification listener; reconnecting");
        drop(listener);
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        listener = loop {
            tokio::select! {
                _ = &mut stopped => return,
                opened = open(&listening, timing) => match opened {
                    Ok(l) => break l,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, retry_in = ?backoff, "hive: notification listener reconnect failed");
                    }
                },
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        tracing::info!(failures, "hive: Postgres notification listener reconnected");
        // Whatever was notified while disconnected is lost: wake every consumer to re-read.
        notifier.forward(catch_up());
    }
}

/// A round trip on a quiet listener's connection, within `timing.open`. Notifications that
/// arrive meanwhile are buffered by the listener and returned by its next `try_recv`.
async fn check(listener: &mut PgListener, timing: Timing) -> Result<(), sqlx::Error> {
    match tokio::time::timeout(timing.open, sqlx::query("SELECT 1").execute(&mut *listener)).await {
        Ok(done) => done.map(drop),
        Err(_) => Err(stalled("a check", timing.open)),
    }
}

/// The synthetic wake-up after a reconnect: anything may have changed meanwhile, so every
/// consumer re-reads (workers claim, cached plan statuses are dropped). Its origin is the
/// nil uuid, which no store has, so no consumer mistakes it for its own change and skips it.
pub(super) fn catch_up() -> Notification {
    Notification {
        origin: uuid::Uuid::nil(),
        change: Change::StoreChanged,
    }
}

/// A NOTIFY payload: one change, a batch of a transaction's changes, or one change of
/// many tasks in rows (`notify_task_rows!`). A batch is read change by change, so one a
/// newer version sends (a rolling upgrade) costs only itself.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Payload {
    Rows(TaskRows),
    One(Notification),
    Many(Vec<serde_json::Value>),
}

/// The same change of many tasks: `[task_id, run_id, plan_id]` rows under one header.
#[derive(Debug, serde::Deserialize)]
struct TaskRows {
    origin: uuid::Uuid,
    #[serde(flatten)]
    kind: RowsKind,
    tasks: Vec<(TaskId, RunId, Option<PlanId>)>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RowsKind {
    /// A worker's claims: each a [`Change::TaskClaimed`].
    TasksClaimed { worker_id: WorkerId },
    /// Runs that succeeded: each a [`Change::TaskStatus`] to completed.
    TasksCompleted,
}

impl TaskRows {
    fn into_notifications(self) -> impl Iterator<Item = Notification> {
        let TaskRows {
            origin,
            kind,
            tasks,
        } = self;
        tasks.into_iter().map(move |(task_id, run_id, plan_id)| {
            let change = match &kind {
                RowsKind::TasksClaimed { worker_id } => Change::TaskClaimed {
                    task_id,
                    run_id,
                    worker_id: worker_id.clone(),
                    plan_id,
                },
                RowsKind::TasksCompleted => Change::TaskStatus(TaskStatusChange {
                    run_id: Some(run_id),
                    plan_id,
                    ..TaskStatusChange::new(task_id, TaskStatus::Completed)
                }),
            };
            Notification { origin, change }
        })
    }
}

/// Postgres refuses payloads of 8000 bytes or more; stay clear of it.
const MAX_PAYLOAD: usize = 7000;

/// A transaction's notifications as few payloads as fit: JSON arrays under [`MAX_PAYLOAD`].
pub(super) fn encode(notes: &[Notification]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for n in notes {
        let Ok(one) = serde_json::to_string(n) else {
            continue;
        };
        if !current.is_empty() && current.len() + one.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            payloads.push(std::mem::take(&mut current));
        }
        current.push(if current.is_empty() { '[' } else { ',' });
        current.push_str(&one);
    }
    if !current.is_empty() {
        current.push(']');
        payloads.push(current);
    }
    payloads
}

/// Forwards what `payload` announces. A change this version cannot read (a newer
/// version's, or someone else's message on our channel) is forwarded as
/// [`Change::StoreChanged`], once per payload: something changed, re-read.
fn forward(notifier: &Notifier, payload: &str) {
    let mut unread = None;
    match serde_json::from_str::<Payload>(payload) {
        Ok(Payload::Rows(rows)) => rows.into_notifications().for_each(|n| notifier.forward(n)),
        Ok(Payload::One(n)) => notifier.forward(n),
        Ok(Payload::Many(items)) => {
            for item in items {
                match serde_json::from_value::<Notification>(item) {
                    Ok(n) => notifier.forward(n),
                    Err(e) => unread = Some(e),
                }
            }
        }
        Err(e) => unread = Some(e),
    }
    if let Some(e) = unread {
        tracing::debug!(error = %e, "hive: a notification this version cannot read; \
            announced as a change to re-read");
        notifier.forward(catch_up());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_under_the_limit_and_decode() {
        let notifier = Notifier::new();
        let notes: Vec<Notification> = (0..500)
            .map(|_| {
                notifier.task_status(
                    hive_models::TaskId::new(),
                    hive_models::TaskStatus::Completed,
                )
            })
            .collect();
        let payloads = encode(&notes);
        assert!(payloads.len() > 1 && payloads.len() < 20);
        let mut decoded = Vec::new();
        for p in &payloads {
            assert!(p.len() < MAX_PAYLOAD, "{} bytes", p.len());
            match serde_json::from_str::<Payload>(p).unwrap() {
                Payload::Many(items) => decoded.extend(
                    items
                        .into_iter()
                        .map(|i| serde_json::from_value::<Notification>(i).unwrap()),
                ),
                Payload::One(_) | Payload::Rows(_) => panic!("expected a batch"),
            }
        }
        assert_eq!(decoded, notes);
        assert!(encode(&[]).is_empty());
        // Single notifications from older writers still decode.
        let one = serde_json::to_string(&notes[0]).unwrap();
        assert!(matches!(
            serde_json::from_str::<Payload>(&one).unwrap(),
            Payload::One(_)
        ));
    }

    #[test]
    fn a_change_this_version_cannot_read_costs_only_itself() {
        let notifier = Notifier::new();
        let mut heard = notifier.subscribe();
        let known = notifier.task_ready(hive_models::TaskId::new());
        let mut batch = serde_json::to_value([&known, &known]).unwrap();
        batch[1]["kind"] = serde_json::json!("task_teleported");
        forward(&notifier, &batch.to_string());
        assert_eq!(heard.try_recv().unwrap(), known, "the change it can read");
        assert_eq!(
            heard.try_recv().unwrap(),
            catch_up(),
            "a re-read for the other"
        );
        assert!(heard.try_recv().is_err(), "once");
        forward(&notifier, "not json at all");
        assert_eq!(heard.try_recv().unwrap(), catch_up());
        assert!(heard.try_recv().is_err());
    }

    #[test]
    fn every_notify_uses_the_schema_channel() {
        let sources = [
            include_str!("tasks.rs"),
            include_str!("runs.rs"),
            include_str!("plans.rs"),
            include_str!("workers.rs"),
            include_str!("replay.rs"),
            include_str!("sql.rs"),
            include_str!("publish.rs"),
        ];
        let mut sites = 0;
        for src in sources {
            for (i, _) in src.match_indices("pg_notify(") {
                let site = &src[i..];
                assert!(
                    site.starts_with("pg_notify(\",") || site.starts_with("pg_notify(\n"),
                    "a pg_notify not naming its channel with channel_sql!(): {}",
                    &site[..80.min(site.len())]
                );
                sites += 1;
            }
        }
        assert!(sites >= 5, "found {sites} notify sites");
        assert!(
            !sources
                .iter()
                .any(|s| s.matches("'hive_events:'").count() > 1)
        );
    }

    const QUICK: Timing = Timing {
        open: Duration::from_millis(500),
        idle_check: Duration::from_millis(300),
    };

    /// The test server's url, or `None` (reported as a skip) when it is not set.
    fn server_url(test: &str) -> Option<String> {
        let url = std::env::var(crate::testing::POSTGRES_URL_ENV).ok();
        if url.is_none() {
            crate::testing::report_skip(test);
        }
        url
    }

    #[tokio::test]
    async fn a_listener_whose_connection_goes_silent_connects_again() {
        let Some(url) = server_url("a_listener_whose_connection_goes_silent_connects_again") else {
            return;
        };
        let proxy = Freezer::start(&url).await;
        let notifier = Notifier::new();
        let mut heard = notifier.subscribe();
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let channel: String = sqlx::query_scalar(concat!("SELECT ", channel_sql!()))
            .fetch_one(&mut db)
            .await
            .unwrap();
        let handle = start(channel, proxy.options(&url), notifier.clone(), QUICK)
            .await
            .expect("the listener starts through the proxy");

        // The link goes quiet without a word: no reset, no close, nothing relayed.
        proxy.freeze_open_connections();
        let woke = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("a silent connection is noticed and replaced")
            .expect("the notifier is open");
        assert_eq!(
            woke,
            catch_up(),
            "consumers are woken to re-read after the reconnect"
        );

        // The new connection listens on the channel.
        let sent = notifier.task_status(TaskId::new(), TaskStatus::Completed);
        sqlx::query(concat!("SELECT pg_notify(", channel_sql!(), ", $1)"))
            .bind(serde_json::to_string(&sent).unwrap())
            .execute(&mut db)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("a notification sent after the reconnect arrives")
            .unwrap();
        assert_eq!(got, sent);
        assert!(handle.is_running());
        handle.stop().await;
    }

    /// Long schema names (two sharing their first 50 bytes, one of multi-byte characters)
    /// get channels of their own that Postgres accepts.
    #[tokio::test]
    async fn every_schema_gets_a_channel_postgres_accepts() {
        use sqlx::{AssertSqlSafe, Connection, Executor};
        let Some(url) = server_url("every_schema_gets_a_channel_postgres_accepts") else {
            return;
        };
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let long = format!("hive_chan_{tag}_{}", "x".repeat(8));
        let schemas = [format!("{long}_a"), format!("{long}_b"), "队列".repeat(10)];
        let mut channels = Vec::new();
        for schema in &schemas {
            let quoted = format!("\"{schema}\"");
            db.execute(AssertSqlSafe(format!("CREATE SCHEMA {quoted}")))
                .await
                .unwrap();
            db.execute(AssertSqlSafe(format!("SET search_path TO {quoted}")))
                .await
                .unwrap();
            let channel: String = sqlx::query_scalar(concat!("SELECT ", channel_sql!()))
                .fetch_one(&mut db)
                .await
                .unwrap();
            let sent = sqlx::query(concat!("SELECT pg_notify(", channel_sql!(), ", 'x')"))
                .execute(&mut db)
                .await;
            db.execute(AssertSqlSafe(format!(
                "RESET search_path; DROP SCHEMA {quoted}"
            )))
            .await
            .unwrap();
            sent.unwrap_or_else(|e| panic!("{schema}: {e}"));
            assert!(channel.len() <= 63, "{channel}");
            channels.push(channel);
        }
        channels.dedup();
        assert_eq!(channels.len(), 3, "{channels:?}");
    }

    #[tokio::test]
    async fn a_listener_that_cannot_get_an_answer_gives_up_within_its_bound() {
        let Some(url) =
            server_url("a_listener_that_cannot_get_an_answer_gives_up_within_its_bound")
        else {
            return;
        };
        let proxy = Freezer::start(&url).await;
        proxy.freeze_new_connections();
        let started = tokio::time::timeout(
            Duration::from_secs(10),
            start(
                "hive_events:public".into(),
                proxy.options(&url),
                Notifier::new(),
                QUICK,
            ),
        )
        .await
        .expect("starting a listener is bounded");
        let e = started.expect_err("no answer, no listener");
        assert!(e.to_string().contains("gave no answer"), "{e}");
    }

    use sqlx::Connection;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A TCP proxy to the test server that can go silent: connections it froze stay open
    /// but relay nothing either way, as over a cut link.
    struct Freezer {
        port: u16,
        state: Arc<FreezeState>,
        accepting: tokio::task::JoinHandle<()>,
    }

    #[derive(Default)]
    struct FreezeState {
        /// Connections numbered below this relay nothing.
        frozen_below: AtomicU64,
        accepted: AtomicU64,
        freeze_new: AtomicBool,
    }

    impl FreezeState {
        fn frozen(&self, n: u64) -> bool {
            self.freeze_new.load(Ordering::SeqCst) || n < self.frozen_below.load(Ordering::SeqCst)
        }
    }

    impl Freezer {
        async fn start(url: &str) -> Freezer {
            let server: PgConnectOptions = url.parse().unwrap();
            let upstream = format!("{}:{}", server.get_host(), server.get_port());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let state = Arc::new(FreezeState::default());
            let shared = state.clone();
            let accepting = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let n = shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    tokio::spawn(relay(from_client, to_server, n, shared.clone()));
                    tokio::spawn(relay(from_server, to_client, n, shared.clone()));
                }
            });
            Freezer {
                port,
                state,
                accepting,
            }
        }

        fn options(&self, url: &str) -> PgConnectOptions {
            let options: PgConnectOptions = url.parse().unwrap();
            options.host("127.0.0.1").port(self.port)
        }

        fn freeze_open_connections(&self) {
            let accepted = self.state.accepted.load(Ordering::SeqCst);
            self.state.frozen_below.store(accepted, Ordering::SeqCst);
        }

        fn freeze_new_connections(&self) {
            self.state.freeze_new.store(true, Ordering::SeqCst);
        }
    }

    impl Drop for Freezer {
        fn drop(&mut self) {
            self.accepting.abort();
        }
    }

    /// Copies one direction until either end closes; a frozen connection's bytes are read
    /// and dropped, and its sockets held open.
    async fn relay(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        n: u64,
        state: Arc<FreezeState>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(read) = from.read(&mut buf).await else {
                return;
            };
            if read == 0 {
                return;
            }
            if !state.frozen(n) && to.write_all(&buf[..read]).await.is_err() {
                return;
            }
        }
    }
}
