//! Every Hive operation, generic over [`hive_store::Store`].
//!
//! [`Ops`] carries a store, the [`OpsConfig`] and the [`EventBus`]. Its methods keep the
//! original package's 18 operation names and return meanings (see `docs/operations.md`)
//! and add what a production job system needs: batch creation, delayed tasks, atomic
//! claiming with leases, completion fenced by run id, retries with backoff, the reaper,
//! plan validation and cancellation, pruning, and typed events published after commit.

mod config;
mod error;
mod events;
mod flow;
mod plans;
mod results;
mod running;
mod schedules;
mod stats;
mod tasks;
mod triage;
mod waits;
mod workers;

use std::sync::Arc;

pub use config::OpsConfig;
pub use error::{Error, Result};
pub use events::{Event, EventBus, EventOrigin, Published, Subscription};
pub use flow::{Limits, QueueInfo};
pub use hive_models as models;
pub use hive_store as store;
pub use plans::{PLAN_PRUNE_BATCH, PlanSubmitted, PlanSummary};
pub use results::{PlanResults, RunTiming, SubtaskResult};
pub use running::Claimed;
pub use schedules::{
    FAILED_RETRY_AFTER, FireReport, HISTORY_MAX, SchedulePut, ScheduleView, SlotRun, Triggered,
};
pub use tasks::{
    DEFAULT_QUEUED_LIMIT, REQUEUE_LOOKS_AT_MOST, RetryReport, TaskCreated, check_retry_filter,
};
pub use triage::{PLAN_TRIAGE_ORDER, TriagedSubtask};

use hive_store::Store;

/// The operations over one store. Cheap to clone; clones share the event bus and caches.
#[derive(Debug)]
pub struct Ops<S: Store + ?Sized> {
    store: Arc<S>,
    config: OpsConfig,
    bus: EventBus,
    plan_cache: Arc<plans::StatusCache>,
    finished_counts: Arc<stats::FinishedCounts>,
}

impl<S: Store + ?Sized> Clone for Ops<S> {
    fn clone(&self) -> Self {
        Ops {
            store: self.store.clone(),
            config: self.config.clone(),
            bus: self.bus.clone(),
            plan_cache: self.plan_cache.clone(),
            finished_counts: self.finished_counts.clone(),
        }
    }
}

impl<S: Store + ?Sized> Ops<S> {
    /// Operations with the default configuration.
    pub fn new(store: Arc<S>) -> Self {
        Self::with_config(store, OpsConfig::default())
    }

    pub fn with_config(store: Arc<S>, config: OpsConfig) -> Self {
        let plan_cache = Arc::new(plans::StatusCache::new(config.plan_cache_ttl));
        let bus = EventBus::new(plan_cache.clone());
        let finished_counts = Arc::new(stats::FinishedCounts::new(config.finished_counts_max_age));
        Ops {
            store,
            config,
            bus,
            plan_cache,
            finished_counts,
        }
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn config(&self) -> &OpsConfig {
        &self.config
    }

    /// The event bus this process's operations publish to.
    pub fn events(&self) -> &EventBus {
        &self.bus
    }

    /// A stream of events: this process's changes, and (with Postgres) other processes'
    /// changes arriving through LISTEN/NOTIFY, each derived from the store's notification
    /// ([`Event::from_change`]) after it committed.
    pub async fn subscribe(&self) -> Result<events::Subscription> {
        self.bus.ensure_forwarder(self.store.clone()).await?;
        Ok(self.bus.subscribe())
    }

    /// Forgets cached statuses of plans a change may have moved, before the change's
    /// notification arrives: this process never reads its own stale plan status.
    pub(crate) fn plans_changed(&self, plans: impl IntoIterator<Item = hive_models::PlanId>) {
        for p in plans {
            self.plan_cache.invalidate(p);
        }
    }
}

#[cfg(test)]
mod mock_tests;
