//! Waiting for a plan or a task to finish: what a producer does after submitting work that
//! other processes carry out (`hive plan wait`, a web request that needs a plan's result).
//!
//! A wait reads the record, then sleeps until an event concerns it, and reads again. Events
//! are a hint, never the answer: the record is read after each one, and at least every
//! [`RECHECK`] anyway, since not every change reaches this process as an event (SQLite
//! announces nothing across processes; a notification can be lost while Postgres restarts).
//! A read that fails on a transient fault is tried again at the next look, until the
//! deadline.

use std::time::Duration;

use hive_models::{PlanHeader, PlanId, Task, TaskId};
use hive_store::Store;

use crate::events::{Event, Subscription};
use crate::{Error, Ops, Result};

/// The longest a wait goes without reading the record again.
const RECHECK: Duration = Duration::from_millis(500);

/// The shortest time between two reads of the record.
const SPACING: Duration = Duration::from_millis(50);

impl<S: Store + ?Sized> Ops<S> {
    /// The plan once it is finished (completed, failed or cancelled), or as it stands when
    /// `within` runs out: its status then says it is not finished. `None` waits as long as
    /// it takes. A plan that does not exist is [`Error::NotFound`].
    pub async fn wait_for_plan(&self, id: PlanId, within: Option<Duration>) -> Result<PlanHeader> {
        let read = || async move {
            let plan = self.plan_header(id).await?.ok_or_else(|| Error::NotFound {
                entity: "plan",
                id: id.to_string(),
            })?;
            Ok((plan.status.is_terminal(), plan))
        };
        self.wait(within, |e| e.plan_id() == Some(id), read).await
    }

    /// The task once it is finished (completed, failed for good or cancelled), or as it
    /// stands when `within` runs out; see [`Ops::wait_for_plan`]. A task that fails and is
    /// retried is not finished: the wait goes on through its retries.
    pub async fn wait_for_task(&self, id: TaskId, within: Option<Duration>) -> Result<Task> {
        let read = || async move {
            let task = self.get_task(id).await?.ok_or_else(|| Error::NotFound {
                entity: "task",
                id: id.to_string(),
            })?;
            Ok((task.is_terminal(), task))
        };
        self.wait(within, |e| e.task_id() == Some(id), read).await
    }

    /// Reads with `read` (whether the record is finished, and the record) until it is
    /// finished or `within` has passed, looking again when an event `concerns` it.
    async fn wait<T, Fut>(
        &self,
        within: Option<Duration>,
        concerns: impl Fn(&Event) -> bool,
        read: impl Fn() -> Fut,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<(bool, T)>>,
    {
        let mut events = self.subscribe().await.ok();
        // A wait longer than the clock can hold is a wait without end, not a panic.
        let deadline = within.and_then(|d| tokio::time::Instant::now().checked_add(d));
        let mut failing = false;
        loop {
            let read_at = tokio::time::Instant::now();
            match read().await {
                Ok((finished, record)) => {
                    if finished || past(deadline) {
                        return Ok(record);
                    }
                    failing = false;
                }
                // A database that blips (a restart, a failover) does not end a wait that
                // may have hours to go: the record is read again at the next look, and the
                // error is the answer only once the deadline has passed.
                Err(e) if e.is_transient() && !past(deadline) => {
                    if !failing {
                        tracing::warn!(
                            error = %e,
                            "waiting: the record could not be read; reading it again until \
                             the database answers"
                        );
                    }
                    failing = true;
                }
                Err(e) => return Err(e),
            }
            next_look(&mut events, deadline, &concerns).await;
            // Events about a busy plan come by the thousand a second: its record is read
            // at most every SPACING.
            let earliest = read_at + SPACING;
            let until = deadline.map_or(earliest, |d| d.min(earliest));
            tokio::time::sleep_until(until).await;
        }
    }
}

fn past(deadline: Option<tokio::time::Instant>) -> bool {
    deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
}

/// Sleeps until an event `concerns` the record (or may have: a store change from another
/// process, events missed), [`RECHECK`] passes, or the deadline comes.
async fn next_look(
    events: &mut Option<Subscription>,
    deadline: Option<tokio::time::Instant>,
    concerns: impl Fn(&Event) -> bool,
) {
    let recheck = tokio::time::Instant::now() + RECHECK;
    let until = deadline.map_or(recheck, |d| d.min(recheck));
    let told = async {
        let Some(sub) = events.as_mut() else {
            return std::future::pending().await;
        };
        let skipped = sub.skipped();
        loop {
            match sub.recv().await {
                Some(p) if concerns(&p.event) || matches!(p.event, Event::StoreChanged) => return,
                Some(_) if sub.skipped() > skipped => return,
                Some(_) => {}
                None => return std::future::pending().await,
            }
        }
    };
    tokio::select! {
        () = told => {}
        () = tokio::time::sleep_until(until) => {}
    }
}
