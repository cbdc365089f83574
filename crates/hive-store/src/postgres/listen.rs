//! The LISTEN side of notifications: one background task per store that forwards every
//! `hive_events` notification (this store's own included) into the store's [`Notifier`].

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::oneshot;

use crate::{ChangeKind, Notification, Notifier};

/// The channel every store NOTIFYs and LISTENs on.
pub(super) const CHANNEL: &str = "hive_events";

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
}

/// Connects and LISTENs before returning, so that every notification committed after
/// `subscribe()` returns reaches the subscriber; then forwards in the background.
pub(super) async fn start(
    options: PgConnectOptions,
    notifier: Notifier,
) -> Result<Handle, sqlx::Error> {
    let listener = open(&options).await?;
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(listener, options, notifier, stopped));
    Ok(Handle { _stop: stop, task })
}

/// A listener on a connection of its own (a one-connection pool the listener owns), so it
/// never holds one of the store's pooled connections and dies with the listener.
async fn open(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(BACKOFF_MAX)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    // Reconnecting is ours to do (with backoff and a catch-up wake-up), not the driver's.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn run(
    mut listener: PgListener,
    options: PgConnectOptions,
    notifier: Notifier,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let lost = loop {
            tokio::select! {
                _ = &mut stopped => return,
                received = listener.try_recv() => match received {
                    Ok(Some(n)) => forward(&notifier, n.payload()),
                    Ok(None) => break "connection closed".to_owned(),
                    Err(e) => break e.to_string(),
                },
            }
        };
        tracing::warn!(reason = %lost, "hive: lost the Postgres notification listener; reconnecting");
        drop(listener);
        let mut backoff = BACKOFF_MIN;
        listener = loop {
            tokio::select! {
                _ = &mut stopped => return,
                opened = open(&options) => match opened {
                    Ok(l) => break l,
                    Err(e) => tracing::debug!(error = %e, "hive: notification listener reconnect failed"),
                },
            }
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        tracing::info!("hive: Postgres notification listener reconnected");
        // Whatever was notified while disconnected is lost: wake every consumer to re-read.
        notifier.forward(catch_up());
    }
}

/// The synthetic wake-up after a reconnect. Its origin is the nil uuid, which no store has,
/// so no consumer mistakes it for its own change and skips it.
pub(super) fn catch_up() -> Notification {
    Notification {
        origin: uuid::Uuid::nil(),
        kind: ChangeKind::TaskCreated,
        task_id: None,
        plan_id: None,
        worker_id: None,
        status: None,
    }
}

fn forward(notifier: &Notifier, payload: &str) {
    match serde_json::from_str::<Notification>(payload) {
        Ok(n) => notifier.forward(n),
        // Someone else's message on our channel; not ours to interpret.
        Err(e) => tracing::debug!(error = %e, "hive: ignoring a foreign notification payload"),
    }
}
