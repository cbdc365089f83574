//! The LISTEN side of notifications: one background task per store that forwards every
//! notification on its schema's channel (this store's own included) into the store's [`Notifier`].

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::oneshot;

use hive_models::{PlanId, RunId, TaskId, TaskStatus, WorkerId};

use crate::{Change, Notification, Notifier, TaskStatusChange};

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

    /// Stops the listener and waits (bounded) for its connection to end.
    pub async fn stop(self) {
        let Handle { _stop, task } = self;
        drop(_stop);
        let _ = tokio::time::timeout(crate::CLOSE_WAIT, task).await;
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
    let channel: String = sqlx::query_scalar(concat!("SELECT ", channel_sql!()))
        .fetch_one(&mut listener)
        .await?;
    listener.listen(&channel).await?;
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
        change: Change::TaskCreated {
            task_id: None,
            count: 0,
        },
    }
}

/// A NOTIFY payload: one change, a batch of a transaction's changes, or one change of
/// many tasks in rows (`notify_task_rows!`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Payload {
    Rows(TaskRows),
    One(Notification),
    Many(Vec<Notification>),
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

fn forward(notifier: &Notifier, payload: &str) {
    match serde_json::from_str::<Payload>(payload) {
        Ok(Payload::Rows(rows)) => rows.into_notifications().for_each(|n| notifier.forward(n)),
        Ok(Payload::One(n)) => notifier.forward(n),
        Ok(Payload::Many(notes)) => notes.into_iter().for_each(|n| notifier.forward(n)),
        // Someone else's message on our channel; not ours to interpret.
        Err(e) => tracing::debug!(error = %e, "hive: ignoring a foreign notification payload"),
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
                Payload::Many(n) => decoded.extend(n),
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
}
