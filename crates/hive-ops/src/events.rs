//! The event bus: typed events derived, in one place ([`Event::from_change`]), from the
//! store's change notifications — this process's changes and (on Postgres) other
//! processes' alike — and published to every subscriber in this process.

use std::sync::Arc;

use hive_models::{
    PlanId, PlanStatus, RunId, TaskId, TaskStatus, Timestamp, WorkerId, WorkerStatus,
};
use hive_store::{Change, Store};
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
        /// The run whose end moved the task, when a worker's did: a run given back to the
        /// queue (the worker stopping, or cut off from the store) has status `queued`. For
        /// `cancelled`, the running run the cancellation closed (none if it ran none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<RunId>,
    },
    TaskCompleted {
        task_id: TaskId,
        run_id: Option<RunId>,
    },
    /// Failed for good.
    TaskFailed {
        task_id: TaskId,
        /// The run whose failure it was, when a worker's was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<RunId>,
        error: Option<String>,
    },
    /// Failed, and back in the queue from `run_at`.
    TaskRetried {
        task_id: TaskId,
        /// The run that failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<RunId>,
        run_at: Timestamp,
    },
    /// A running handler said how far it has got (at most once a second per run).
    TaskProgress {
        task_id: TaskId,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    },
    /// Another process wrote to the store and this one is not told what (SQLite, where
    /// nothing is announced across processes): anything may have changed, claimable work
    /// included.
    StoreChanged,
    /// A task that waited on dependencies became claimable (its last dependency
    /// completed, and the transaction that freed it did not claim it).
    TaskReady {
        task_id: TaskId,
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

    /// The task this event concerns, if any.
    pub fn task_id(&self) -> Option<TaskId> {
        match self {
            Event::TaskCreated { task_id, .. } => *task_id,
            Event::TaskClaimed { task_id, .. }
            | Event::TaskStatusChanged { task_id, .. }
            | Event::TaskCompleted { task_id, .. }
            | Event::TaskFailed { task_id, .. }
            | Event::TaskRetried { task_id, .. }
            | Event::TaskReady { task_id }
            | Event::TaskProgress { task_id, .. }
            | Event::PlanProgressed { task_id, .. } => Some(*task_id),
            _ => None,
        }
    }

    /// Whether this event may mean a task is claimable now: new tasks, tasks back in the
    /// queue, dependents freed. Workers wake on these only.
    pub fn may_be_claimable(&self) -> bool {
        match self {
            Event::TaskCreated { .. }
            | Event::TaskReady { .. }
            | Event::TaskRetried { .. }
            | Event::StoreChanged => true,
            Event::TaskStatusChanged { status, .. } => *status == TaskStatus::Queued,
            _ => false,
        }
    }

    /// The events a committed change stands for: the one place a store change becomes an
    /// event, for this process's changes and other processes' alike.
    pub fn from_change(change: &Change) -> Vec<Event> {
        match change {
            Change::TaskCreated { task_id, count } => vec![Event::TaskCreated {
                task_id: *task_id,
                count: usize::try_from(*count).unwrap_or(usize::MAX),
            }],
            Change::TaskClaimed {
                task_id,
                run_id,
                worker_id,
                ..
            } => vec![Event::TaskClaimed {
                task_id: *task_id,
                run_id: *run_id,
                worker_id: worker_id.clone(),
            }],
            Change::TaskStatus(c) => match c.status {
                TaskStatus::Completed => {
                    let mut events = vec![Event::TaskCompleted {
                        task_id: c.task_id,
                        run_id: c.run_id,
                    }];
                    if let Some(plan_id) = c.plan_id {
                        events.push(Event::PlanProgressed {
                            plan_id,
                            task_id: c.task_id,
                        });
                    }
                    events
                }
                TaskStatus::Failed => vec![Event::TaskFailed {
                    task_id: c.task_id,
                    run_id: c.run_id,
                    error: c.error.clone(),
                }],
                TaskStatus::Queued if c.run_at.is_some() => vec![Event::TaskRetried {
                    task_id: c.task_id,
                    run_id: c.run_id,
                    run_at: c.run_at.unwrap_or_default(),
                }],
                status => vec![Event::TaskStatusChanged {
                    task_id: c.task_id,
                    status,
                    run_id: c.run_id,
                }],
            },
            Change::TaskReady { task_id } => vec![Event::TaskReady { task_id: *task_id }],
            Change::StoreChanged => vec![Event::StoreChanged],
            Change::Progress {
                task_id,
                run_id,
                fraction,
                message,
            } => vec![Event::TaskProgress {
                task_id: *task_id,
                run_id: *run_id,
                fraction: *fraction,
                message: message.clone(),
            }],
            Change::PlanStatus { plan_id, status } => {
                Event::plan_status(*plan_id, *status).into_iter().collect()
            }
            Change::Worker { worker_id, status } => vec![match status {
                WorkerStatus::Offline => Event::WorkerOffline {
                    worker_id: worker_id.clone(),
                },
                _ => Event::WorkerRegistered {
                    worker_id: worker_id.clone(),
                },
            }],
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
    /// The task turning the store's notifications into events, once started; started again
    /// when it ended (its runtime shut down: a client shared by several runtimes in turn).
    forwarding: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Store notifications the forwarder missed by falling behind: lost to every
    /// subscriber, so each counts them in its [`Subscription::skipped`].
    lost: Arc<std::sync::atomic::AtomicU64>,
}

impl EventBus {
    const CAPACITY: usize = 16_384;

    pub(crate) fn new(cache: Arc<StatusCache>) -> Self {
        let (sender, _) = broadcast::channel(Self::CAPACITY);
        EventBus {
            sender,
            cache,
            forwarding: Arc::default(),
            lost: Arc::default(),
        }
    }

    fn publish(&self, events: Vec<Event>, origin: EventOrigin) {
        let listening = self.sender.receiver_count() > 0;
        for event in events {
            // Cached plan statuses must never outlive a change this process has seen; after
            // one it was not told the details of, none is trusted.
            if let Some(plan_id) = event.plan_id() {
                self.cache.invalidate(plan_id);
            } else if event == Event::StoreChanged {
                self.cache.clear();
            }
            if listening {
                let _ = self.sender.send(Published { event, origin });
            }
        }
    }

    /// A store notification as events, to this process's subscribers.
    fn forward(&self, n: &hive_store::Notification, own_origin: uuid::Uuid) {
        let from = if n.origin == own_origin {
            EventOrigin::Local
        } else {
            EventOrigin::Remote
        };
        self.publish(Event::from_change(&n.change), from);
    }

    /// The forwarder skipped `n` notifications: cached plan statuses may be stale now, and a
    /// worker may have missed work; a [`Event::StoreChanged`] wakes it (and clears the
    /// cache).
    fn fell_behind(&self, n: u64) {
        self.lost.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.publish(vec![Event::StoreChanged], EventOrigin::Remote);
    }

    /// A subscription to what this process publishes. Crate-private: the store's changes
    /// reach the bus only once a forwarder runs, which `Ops::subscribe` starts.
    pub(crate) fn subscribe(&self) -> Subscription {
        let lost = self.lost.clone();
        let lost_before = lost.load(std::sync::atomic::Ordering::Relaxed);
        Subscription {
            rx: self.sender.subscribe(),
            skipped: 0,
            lost,
            lost_before,
        }
    }

    /// Starts the task that turns the store's notifications into events, unless one runs.
    pub(crate) async fn ensure_forwarder<S: Store + ?Sized>(&self, store: Arc<S>) -> Result<()> {
        let mut forwarding = self.forwarding.lock().await;
        if forwarding.as_ref().is_some_and(|f| !f.is_finished()) {
            return Ok(());
        }
        let mut rx = store.subscribe().await?;
        let origin = store.origin();
        drop(store);
        let bus = self.clone();
        let forwarder = tokio::spawn(async move {
            use broadcast::error::{RecvError, TryRecvError};
            loop {
                match rx.recv().await {
                    Ok(n) => bus.forward(&n, origin),
                    Err(RecvError::Lagged(n)) => bus.fell_behind(n),
                    Err(RecvError::Closed) => return,
                }
                // What is already waiting goes out in this same turn. Awaiting each one
                // spends the task's cooperative budget, and once it is spent the forwarder
                // waits behind every busy worker task: eight workers on two cores outran it
                // by 189,440 notifications in a 160,000-task drain. Bounded, so a stream
                // that never runs dry still lets the forwarder yield now and then.
                for _ in 0..Self::CAPACITY {
                    match rx.try_recv() {
                        Ok(n) => bus.forward(&n, origin),
                        Err(TryRecvError::Lagged(n)) => bus.fell_behind(n),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Closed) => return,
                    }
                }
            }
        });
        *forwarding = Some(forwarder);
        Ok(())
    }
}

/// A subscriber's end of the bus.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Published>,
    skipped: u64,
    lost: Arc<std::sync::atomic::AtomicU64>,
    lost_before: u64,
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

    /// The next event if one is waiting, without waiting for one; `None` also once the bus
    /// is gone.
    pub fn try_recv(&mut self) -> Option<Published> {
        loop {
            match self.rx.try_recv() {
                Ok(p) => return Some(p),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.skipped += n,
                Err(_) => return None,
            }
        }
    }

    /// How many events this subscriber missed: by falling behind itself, or because the
    /// bus fell behind the store's notifications since it subscribed (counted per
    /// notification).
    pub fn skipped(&self) -> u64 {
        let lost = self.lost.load(std::sync::atomic::Ordering::Relaxed);
        self.skipped + lost.saturating_sub(self.lost_before)
    }

    /// The subscription as a `Stream`. Events it missed (it fell behind, or the bus did)
    /// come out as one [`Event::StoreChanged`] before the next event: anything may have
    /// changed, so a consumer waiting for one event re-reads instead of waiting for good.
    pub fn into_stream(self) -> impl futures::Stream<Item = Published> + Send + Unpin {
        let start = (self, 0, None);
        Box::pin(futures::stream::unfold(
            start,
            |(mut s, told, held): (Subscription, u64, Option<Published>)| async move {
                if let Some(p) = held {
                    return Some((p, (s, told, None)));
                }
                let p = s.recv().await?;
                let skipped = s.skipped();
                if skipped > told {
                    let missed = Published {
                        event: Event::StoreChanged,
                        origin: EventOrigin::Remote,
                    };
                    return Some((missed, (s, skipped, Some(p))));
                }
                Some((p, (s, told, None)))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_stream_that_fell_behind_says_so_before_going_on() {
        let bus = EventBus::new(Arc::new(StatusCache::new(Duration::from_secs(60))));
        let stream = bus.subscribe().into_stream();
        let created = |n: usize| Event::TaskCreated {
            task_id: None,
            count: n,
        };
        let events = (0..EventBus::CAPACITY + 2).map(created).collect();
        bus.publish(events, EventOrigin::Local);
        let got: Vec<Event> = stream.take(3).map(|p| p.event).collect().await;
        assert_eq!(
            got,
            [Event::StoreChanged, created(2), created(3)],
            "the two oldest were skipped"
        );
    }

    /// After a change it was not told the details of (another process's on SQLite, a
    /// reconnect, a notification it fell behind on), no cached plan status is served.
    #[tokio::test]
    async fn a_change_without_details_drops_cached_plan_statuses() {
        let cache = Arc::new(StatusCache::new(Duration::from_secs(60)));
        let bus = EventBus::new(cache.clone());
        let _listening = bus.subscribe();
        let plan = hive_models::PlanId::new();
        let cached = |status| {
            cache.put(plan, status, cache.generation());
            assert_eq!(cache.get(plan), Some(status));
        };
        cached(PlanStatus::Pending);
        bus.publish(vec![Event::StoreChanged], EventOrigin::Remote);
        assert_eq!(cache.get(plan), None);
        cached(PlanStatus::Pending);
        bus.fell_behind(3);
        assert_eq!(cache.get(plan), None);
    }
}
