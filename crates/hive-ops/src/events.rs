//! The event bus: typed events published after each change commits, and the forwarder
//! that turns other processes' store notifications into events.

use std::sync::Arc;

use hive_models::{
    PlanId, PlanStatus, RunId, TaskId, TaskStatus, Timestamp, WorkerId, WorkerStatus,
};
use hive_store::{ChangeKind, Notification, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, broadcast};

use crate::Result;
use crate::plans::StatusCache;

/// Something that happened, published after the change committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Tasks were created: one (`task_id` set) or a batch of `count`.
    TaskCreated {
        task_id: Option<TaskId>,
        count: usize,
    },
    TaskClaimed {
        task_id: TaskId,
        run_id: RunId,
        worker_id: WorkerId,
    },
    /// Any other status change (manual updates, cancellations, requeues).
    TaskStatusChanged {
        task_id: TaskId,
        status: TaskStatus,
    },
    TaskCompleted {
        task_id: TaskId,
        run_id: Option<RunId>,
    },
    /// Failed for good.
    TaskFailed {
        task_id: TaskId,
        error: Option<String>,
    },
    /// Failed, and back in the queue from `run_at`.
    TaskRetried {
        task_id: TaskId,
        run_at: Timestamp,
    },
    WorkerRegistered {
        worker_id: WorkerId,
    },
    WorkerOffline {
        worker_id: WorkerId,
    },
    PlanStarted {
        plan_id: PlanId,
    },
    /// One of the plan's tasks completed.
    PlanProgressed {
        plan_id: PlanId,
        task_id: TaskId,
    },
    PlanCompleted {
        plan_id: PlanId,
    },
    PlanFailed {
        plan_id: PlanId,
    },
    PlanCancelled {
        plan_id: PlanId,
    },
}

impl Event {
    /// The plan this event concerns, if any.
    pub fn plan_id(&self) -> Option<PlanId> {
        match self {
            Event::PlanStarted { plan_id }
            | Event::PlanProgressed { plan_id, .. }
            | Event::PlanCompleted { plan_id }
            | Event::PlanFailed { plan_id }
            | Event::PlanCancelled { plan_id } => Some(*plan_id),
            _ => None,
        }
    }

    /// The event for a plan reaching `status`.
    pub fn plan_status(plan_id: PlanId, status: PlanStatus) -> Option<Event> {
        Some(match status {
            PlanStatus::InProgress => Event::PlanStarted { plan_id },
            PlanStatus::Completed => Event::PlanCompleted { plan_id },
            PlanStatus::Failed => Event::PlanFailed { plan_id },
            PlanStatus::Cancelled => Event::PlanCancelled { plan_id },
            PlanStatus::Pending => return None,
        })
    }

    /// The event another process's change notification stands for.
    fn from_notification(n: &Notification) -> Option<Event> {
        let status = n.status.as_deref();
        match n.kind {
            ChangeKind::TaskCreated => Some(Event::TaskCreated {
                task_id: n.task_id,
                count: usize::from(n.task_id.is_some()),
            }),
            ChangeKind::TaskStatus => {
                let task_id = n.task_id?;
                let status: TaskStatus = status?.parse().ok()?;
                Some(match status {
                    TaskStatus::Completed => Event::TaskCompleted {
                        task_id,
                        run_id: None,
                    },
                    TaskStatus::Failed => Event::TaskFailed {
                        task_id,
                        error: None,
                    },
                    _ => Event::TaskStatusChanged { task_id, status },
                })
            }
            // A wake-up for workers; the completion that freed the task is its own event.
            ChangeKind::TaskReady => None,
            ChangeKind::PlanStatus => Event::plan_status(n.plan_id?, status?.parse().ok()?),
            ChangeKind::Worker => {
                let worker_id = n.worker_id.clone()?;
                match status?.parse().ok()? {
                    WorkerStatus::Offline => Some(Event::WorkerOffline { worker_id }),
                    _ => Some(Event::WorkerRegistered { worker_id }),
                }
            }
        }
    }
}

/// Whether an event was caused by this process or arrived from another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOrigin {
    Local,
    Remote,
}

/// An event as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub event: Event,
    pub origin: EventOrigin,
}

/// Fan-out of events to every subscriber in this process. Publishing never blocks; a
/// subscriber that falls more than 16,384 events behind skips the oldest.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Published>,
    cache: Arc<StatusCache>,
    forwarding: Arc<Mutex<bool>>,
}

impl EventBus {
    const CAPACITY: usize = 16_384;

    pub(crate) fn new(cache: Arc<StatusCache>) -> Self {
        let (sender, _) = broadcast::channel(Self::CAPACITY);
        EventBus {
            sender,
            cache,
            forwarding: Arc::new(Mutex::new(false)),
        }
    }

    /// Publishes this process's events; callers call it only after the change committed.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        self.publish_as(events, EventOrigin::Local);
    }

    fn publish_as(&self, events: impl IntoIterator<Item = Event>, origin: EventOrigin) {
        let listening = self.sender.receiver_count() > 0;
        for event in events {
            // Cached plan statuses must never outlive a change this process has seen.
            if let Some(plan_id) = event.plan_id() {
                self.cache.invalidate(plan_id);
            }
            if listening {
                let _ = self.sender.send(Published { event, origin });
            }
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.sender.subscribe(),
            skipped: 0,
        }
    }

    /// Starts (once) the task that turns other processes' notifications into events.
    pub(crate) async fn ensure_remote_forwarder<S: Store + ?Sized>(
        &self,
        store: Arc<S>,
    ) -> Result<()> {
        let mut started = self.forwarding.lock().await;
        if *started {
            return Ok(());
        }
        let mut rx = store.subscribe().await?;
        let origin = store.origin();
        drop(store);
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(n) if n.origin != origin => {
                        bus.publish_as(Event::from_notification(&n), EventOrigin::Remote);
                    }
                    Ok(_) => {}
                    // Skipped notifications: cached plan statuses may be stale now.
                    Err(broadcast::error::RecvError::Lagged(_)) => bus.cache.clear(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        *started = true;
        Ok(())
    }
}

/// A subscriber's end of the bus.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Published>,
    skipped: u64,
}

impl Subscription {
    /// The next event; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<Published> {
        loop {
            match self.rx.recv().await {
                Ok(p) => return Some(p),
                Err(broadcast::error::RecvError::Lagged(n)) => self.skipped += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// How many events this subscriber missed by falling behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The subscription as a `Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Published> + Send + Unpin {
        Box::pin(futures::stream::unfold(self, |mut s| async move {
            s.recv().await.map(|p| (p, s))
        }))
    }
}
