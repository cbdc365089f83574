//! Handler execution: what a handler receives ([`TaskContext`]) and returns ([`TaskOutput`],
//! [`TaskError`]), the [`Handler`] trait, and running one claimed task to an outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use hive_models::{Json, Run, RunId, SubTask, Task};
use hive_ops::Claimed;
use hive_ops::store::{Inputs, Outcome, RunOutcome};
use tokio::sync::{mpsc, watch};

use super::completer::Done;
use super::gate::{Gate, Turn};
use super::progress::ProgressCell;
use super::slots::Handled;
use super::stops::{GiveBack, Stops};
use crate::{Client, Result};

/// What a handler gets: the claimed task, the run it executes as, and its dependencies'
/// outputs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task as claimed (status `in_progress`).
    pub task: Task,
    /// The run this attempt executes as; its id is the lease token.
    pub run: Run,
    /// Each dependency's output (its handler's returned JSON, `null` when it returned
    /// none), keyed by subtask id (task id for a dependency outside any plan).
    pub inputs: Inputs,
    client: Client,
    /// What this run spawned; `None` once its handler ended, when a spawn is refused.
    spawned: Arc<Mutex<Option<Vec<SubTask>>>>,
    cancel: watch::Receiver<bool>,
    progress: Arc<ProgressCell>,
    stops: Stops,
}

impl TaskContext {
    /// Resolves once this run must stop: its timeout passed, or its task was cancelled (on
    /// Postgres from any process, through the store's notifications; elsewhere from this
    /// process). A handler that selects on it can clean up and return; one that does not
    /// is dropped after the worker's `timeout_grace`.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        // An error means the sender is gone: the run is over either way.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Whether this run has been told to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Reports how far this run has got: `fraction` from 0 to 1 and a message (empty for
    /// none). Stored on the run, shown by `hive task get`, `task runs` and `plan status`,
    /// and announced as [`hive_ops::Event::TaskProgress`]. Cheap to call often: the latest
    /// report is written at most once a second. Refuses a fraction outside `[0, 1]` and a
    /// message over 1000 bytes.
    pub fn progress(&self, fraction: f64, message: impl Into<String>) -> Result<()> {
        let message = Some(message.into()).filter(|m| !m.is_empty());
        hive_models::Progress::check(fraction, message.as_deref())?;
        self.progress
            .report(&self.client, self.run.id, fraction, message);
        Ok(())
    }

    /// The outputs of this task's dependencies, keyed by subtask id.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// One dependency's output.
    pub fn input(&self, subtask_id: &str) -> Option<&Json> {
        self.inputs.get(subtask_id)
    }

    /// Adds a subtask to this task's plan, committed together with this run's success (a
    /// failed or stale run adds nothing). It may depend on this subtask, on other spawned
    /// ones and on any subtask of the plan not downstream of this one; subtasks that
    /// depended on this one also wait for the spawned subtasks no other spawned one depends
    /// on. Subtask ids are one namespace per plan. The grown plan is validated as a
    /// submission is: a spawn it cannot take fails this task for good, naming the problem.
    ///
    /// What can be known here errors at once, before the handler does its work: this task
    /// belonging to no plan, the subtask's own fields (as
    /// [`hive_models::validate_subtask_fields`]), and its id repeating this subtask's or
    /// one spawned before in this run, and the handler having returned (a clone of the
    /// context kept past it). Its place in the plan (ids and dependencies of other
    /// subtasks) is checked at the commit.
    pub fn spawn(&self, subtask: SubTask) -> std::result::Result<(), TaskError> {
        let refuse = |why: &dyn std::fmt::Display| {
            TaskError::permanent(format!(
                "cannot spawn `{}`: {why}",
                subtask.id.escape_debug()
            ))
        };
        if self.task.plan_id.is_none() {
            return Err(refuse(&format_args!(
                "{} belongs to no plan",
                self.task.describe()
            )));
        }
        let limit = self.client.ops().config().max_payload_bytes;
        hive_models::validate_subtask_fields(&subtask, limit).map_err(|e| refuse(&e))?;
        let mut spawned = self.spawned.lock().unwrap_or_else(|e| e.into_inner());
        let Some(spawned) = spawned.as_mut() else {
            return Err(refuse(
                &"this run's handler has ended: spawn before returning",
            ));
        };
        let own = self.task.plan_subtask_id.as_deref() == Some(subtask.id.as_str());
        if own || spawned.iter().any(|s| s.id == subtask.id) {
            let whose = if own {
                "this subtask's"
            } else {
                "one spawned before"
            };
            return Err(refuse(&format_args!(
                "the id is {whose}: ids are one namespace per plan"
            )));
        }
        spawned.push(subtask);
        Ok(())
    }

    /// The client the worker runs on, for handlers that create follow-up tasks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Extends this run's lease to at least now + `lease`, and the heartbeats' extension
    /// from then on to at least `lease` (heartbeats already extend it periodically; this is
    /// for a step that may outlast the worker's lease). A shorter lease than the run has
    /// changes nothing; zero is refused.
    pub async fn extend_lease(&self, lease: Duration) -> Result<()> {
        self.client.extend_lease(self.run.id, lease).await?;
        // Cut off from the store, the worker keeps this run for that long.
        self.stops.lengthen(self.run.id, lease);
        Ok(())
    }
}

/// A handler's success: an optional result stored on the task and run, and an output log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskOutput {
    /// Stored as the task's and the run's result.
    pub result: Option<Json>,
    /// Stored as the run's output log.
    pub log: Option<String>,
}

impl From<()> for TaskOutput {
    fn from(_: ()) -> Self {
        TaskOutput::default()
    }
}

impl From<Json> for TaskOutput {
    fn from(result: Json) -> Self {
        TaskOutput {
            result: Some(result),
            log: None,
        }
    }
}

impl From<Option<Json>> for TaskOutput {
    fn from(result: Option<Json>) -> Self {
        TaskOutput { result, log: None }
    }
}

/// A handler's failure. Retryable failures are retried with backoff until the task's
/// `max_retries`; permanent ones fail the task at once; a snooze runs the task again later
/// without using up an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// Stored as the run's error message and the task's last error.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Stored as the run's output log.
    pub log: Option<String>,
    /// `Some`: not a failure — run the task again after this long, giving this attempt
    /// back (see [`TaskError::snooze`]).
    pub snooze: Option<Duration>,
    /// The handler stopped the work at a time limit of its own (see
    /// [`TaskError::timed_out`]): the run ends `timeout`, as at the task's own limit.
    pub timed_out: bool,
}

impl TaskError {
    /// A retryable failure.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
            log: None,
            snooze: None,
            timed_out: false,
        }
    }

    /// Asks to run the task again after `delay` without using up an attempt (a rate
    /// limit's window, a resource not ready yet). The run ends `cancelled`, noted
    /// "snoozed until …". A task may be snoozed `OpsConfig::max_snoozes` times (50 by
    /// default); the snooze after that fails it for good, so a handler cannot wait forever.
    pub fn snooze(delay: Duration) -> Self {
        TaskError {
            snooze: Some(delay),
            ..Self::new(format!("snoozed for {}", humanize(delay)))
        }
    }

    /// A retryable failure at a time limit the handler kept itself (a `shell` payload's
    /// `timeout_secs`): the run ends `timeout`, counted as timeouts are, like one stopped at
    /// the task's own `timeout_secs`.
    pub fn timed_out(message: impl Into<String>) -> Self {
        TaskError {
            timed_out: true,
            ..Self::new(message)
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskError {
            retryable: false,
            ..Self::new(message)
        }
    }

    /// Attaches the output produced before the failure.
    pub fn with_log(mut self, log: impl Into<String>) -> Self {
        self.log = Some(log.into());
        self
    }
}

/// Any error, so `?` works in a handler: retryable, except Hive's own errors that
/// retrying cannot fix (an invalid value, a run that ended elsewhere, a database error that
/// is not transient), which fail the task at once rather than use up its retries.
impl<E: std::error::Error + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        let any: &dyn std::any::Any = &e;
        let transient = if let Some(e) = any.downcast_ref::<crate::Error>() {
            e.is_transient()
        } else if let Some(e) = any.downcast_ref::<hive_ops::Error>() {
            e.is_transient()
        } else if let Some(e) = any.downcast_ref::<hive_store::Error>() {
            e.is_transient()
        } else {
            // A model rule broken stays broken.
            !any.is::<hive_models::Error>()
        };
        TaskError {
            retryable: transient,
            ..TaskError::new(e.to_string())
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Something that runs tasks. Implemented for every
/// `Fn(TaskContext) -> impl Future<Output = Result<impl Into<TaskOutput>, TaskError>>`.
pub trait Handler: Send + Sync + 'static {
    /// Runs one task.
    fn call(&self, ctx: TaskContext) -> BoxFuture<std::result::Result<TaskOutput, TaskError>>;
}

impl<F, Fut, R> Handler for F
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<R, TaskError>> + Send + 'static,
    R: Into<TaskOutput>,
{
    fn call(&self, ctx: TaskContext) -> BoxFuture<std::result::Result<TaskOutput, TaskError>> {
        let fut = self(ctx);
        Box::pin(async move { fut.await.map(Into::into) })
    }
}

/// When a run must stop: the task's own `timeout_secs`, else the worker's default; how
/// long a handler told to stop may take to return; and where its stop signal is found.
#[derive(Debug, Clone)]
pub(super) struct Timeouts {
    pub(super) default: Option<Duration>,
    pub(super) grace: Duration,
    pub(super) stops: Stops,
}

/// Why a handler call ended.
enum Ended<T> {
    Returned(T),
    /// Its timeout passed; what it returned within the grace once told to stop, if it did.
    TimedOut(Duration, Option<T>),
    /// Its task was cancelled or the worker gave its run back; what it returned within
    /// the grace, if it did (only its log is kept).
    Cancelled(Option<T>),
}

/// A started run's registrations, ended when its call ends, also when the call is dropped
/// half-way (a worker stopping at once aborts its running handlers): its stop signal is
/// forgotten and its progress writer stopped, which otherwise would wait for good (after
/// writing the last report, unless the call was dropped).
struct RunEnd {
    stops: Stops,
    run: RunId,
    progress: Arc<ProgressCell>,
    ended: bool,
}

impl RunEnd {
    /// Ends them now, the last progress report written before the run's outcome (which
    /// would make it stale); returns why the run is to be given back, if the worker stopped
    /// it for that.
    async fn end(mut self) -> Option<GiveBack> {
        // Marked ended only once the wait is over: dropped during it (the worker stopping
        // at once), `Drop` still forgets the run's stop signal and stops the writer.
        self.progress.close().await;
        self.ended = true;
        self.stops.remove(self.run)
    }
}

impl Drop for RunEnd {
    fn drop(&mut self) {
        if !self.ended {
            self.progress.abort();
            self.stops.remove(self.run);
        }
    }
}

/// Runs one claimed task once a handler is free; a panicking handler fails its task, not
/// the worker.
pub(super) async fn run_one(
    client: Client,
    handler: Arc<dyn Handler>,
    claim: Claimed,
    limits: Timeouts,
    (gate, turn): (Gate, Turn),
    done: mpsc::UnboundedSender<Done>,
) -> Handled {
    use futures::FutureExt;
    let retry = client.config().retry_for(&claim.task.task_type);
    let max_snoozes = client.config().max_snoozes;
    let max_output = client.config().max_output_bytes;
    let run_id = claim.run.id;
    let task_id = claim.task.id;
    let timeout = claim
        .task
        .timeout_secs
        .map(|s| Duration::from_secs(u64::from(s)))
        .or(limits.default);
    // Measured here, on the worker's own clock: the store adds it to the claim's start.
    let claimed = std::time::Instant::now();
    let (stop, cancel) = watch::channel(false);
    let stop = Arc::new(stop);
    limits.stops.insert(run_id, stop.clone());
    let mut told = cancel.clone();
    // A claim prefetched beyond the free handlers waits here. Cancelled meanwhile, its
    // handler never starts; the worker stopping first, its run is released unstarted.
    let mut stopping = gate.stop.clone();
    let free = tokio::select! {
        biased;
        free = turn => free.ok(),
        _ = told.wait_for(|s| *s) => None,
        _ = stopping.wait_for(|s| *s) => {
            limits.stops.remove(run_id);
            return Handled::Unstarted;
        }
    };
    // A turn handed over as the worker was told to stop (many waiting claims woken at
    // once): nothing starts after the stop.
    if free.is_some() && *gate.stop.borrow() {
        limits.stops.remove(run_id);
        return Handled::Unstarted;
    }
    let Some(_handler) = free else {
        let outcome = match limits.stops.remove(run_id) {
            Some(back) => Outcome::GiveBack {
                reason: back.reason,
            },
            // The store closed the run with the task: this report is stale, and only frees
            // the slot.
            None => Outcome::Failure {
                error: "cancelled before its handler started".into(),
                retry: None,
            },
        };
        let _ = done.send(Done {
            outcome: RunOutcome {
                run_id,
                outcome,
                output_log: None,
                waited: std::time::Duration::ZERO,
            },
        });
        return Handled::Reported;
    };
    let began = std::time::Instant::now();
    let waited = began - claimed;
    let ctx = TaskContext {
        task: claim.task,
        run: claim.run,
        inputs: claim.inputs,
        client,
        spawned: Arc::new(Mutex::new(Some(Vec::new()))),
        cancel,
        progress: Arc::new(ProgressCell::on(tokio::runtime::Handle::current())),
        stops: limits.stops.clone(),
    };
    let run_end = RunEnd {
        stops: limits.stops.clone(),
        run: run_id,
        progress: ctx.progress.clone(),
        ended: false,
    };
    let spawned = ctx.spawned.clone();
    let owner = ctx.task.describe();
    // Everything the handler logs carries the task, run, type, attempt (as counted against
    // `max_retries`, `HIVE_ATTEMPT`) and run number (every run, given back ones included).
    let span = tracing::info_span!("handler", task_id = %task_id, run_id = %run_id,
        task_type = %ctx.task.task_type, attempt = ctx.task.attempts,
        run_number = ctx.run.run_number);
    // The call inside the guarded future: a handler may panic in its synchronous part,
    // before it returns a future, and that panic must end this run like any other.
    let fut = tracing::Instrument::instrument(
        std::panic::AssertUnwindSafe(async move { handler.call(ctx).await }).catch_unwind(),
        span,
    );
    tokio::pin!(fut);
    let expiry = async {
        match timeout {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    /// What ended the first wait.
    enum First<T> {
        Returned(T),
        Expired,
        Cancelled,
    }
    let first = tokio::select! {
        r = &mut fut => First::Returned(r),
        () = expiry => First::Expired,
        _ = told.wait_for(|s| *s) => First::Cancelled,
    };
    let ended = match first {
        // Told to stop as it returned (the select took its return first): it returned
        // because of the stop, as when the stop is seen first.
        First::Returned(r) if *told.borrow() => Ended::Cancelled(Some(r)),
        First::Returned(r) => Ended::Returned(r),
        First::Expired => {
            let _ = stop.send(true);
            let returned = tokio::time::timeout(limits.grace, &mut fut).await.ok();
            Ended::TimedOut(timeout.unwrap_or_default(), returned)
        }
        First::Cancelled => {
            Ended::Cancelled(tokio::time::timeout(limits.grace, &mut fut).await.ok())
        }
    };
    gate.pace.record(began.elapsed());
    // Taken now, whatever the outcome: a clone of the context kept by the handler can no
    // longer add to it.
    let spawn = spawned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let given_back = run_end.end().await;
    // A stopped handler is dropped here if it did not return (a `shell` command's process
    // group dies with it).
    let finished = match ended {
        Ended::Returned(r) => Ok(r),
        // Told to stop as its worker shuts down, a handler that finished all the same keeps
        // its result; any other return is the stop's, and the run goes back.
        Ended::Cancelled(Some(Ok(Ok(out))))
            if given_back.as_ref().is_some_and(|g| g.keeps_result) =>
        {
            Ok(Ok(Ok(out)))
        }
        // A handler that returned once told to stop keeps the log it printed until then.
        Ended::TimedOut(limit, returned) => {
            Err((Some(limit), returned.is_some(), returned.and_then(log_of)))
        }
        Ended::Cancelled(returned) => Err((None, returned.is_some(), returned.and_then(log_of))),
    };
    let (outcome, output_log) = match finished {
        Err((limit, returned, log)) => {
            let how = if returned {
                "the handler stopped"
            } else {
                "the handler was dropped"
            };
            match limit {
                Some(limit) => (
                    Outcome::TimedOut {
                        error: format!("timed out after {}; {how}", humanize(limit)),
                        retry: Some(retry),
                    },
                    log,
                ),
                None => match given_back {
                    // The worker lost the store, or is stopping: the run goes back to the
                    // queue.
                    Some(back) => (
                        Outcome::GiveBack {
                            reason: format!("{}; {how}", back.reason),
                        },
                        log,
                    ),
                    // The store closed the run when the task was cancelled: this report is
                    // stale, and only tells the completer the slot is free.
                    None => (
                        Outcome::Failure {
                            error: format!("cancelled; {how}"),
                            retry: None,
                        },
                        None,
                    ),
                },
            }
        }
        Ok(Ok(Ok(out))) => {
            let too_large = out
                .result
                .as_ref()
                .and_then(|r| hive_models::check_output_size(&owner, r, max_output).err());
            let outcome = match too_large {
                // Retrying would produce the same output. The handler returned normally,
                // so nothing else would say why its task failed.
                Some(e) => {
                    tracing::warn!(task = %task_id, run = %run_id, "task {task_id} failed: {e}");
                    Outcome::Failure {
                        error: e.to_string(),
                        retry: None,
                    }
                }
                None => Outcome::Success {
                    result: out.result,
                    spawn,
                },
            };
            (outcome, out.log)
        }
        Ok(Ok(Err(e))) => match e.snooze {
            None if e.timed_out => (
                Outcome::TimedOut {
                    error: e.message,
                    retry: e.retryable.then_some(retry),
                },
                e.log,
            ),
            Some(delay) => (
                Outcome::Snooze {
                    delay: delay.min(hive_models::RetryPolicy::MAX_DELAY),
                    limit: max_snoozes,
                },
                e.log,
            ),
            None => (
                Outcome::Failure {
                    error: e.message,
                    retry: e.retryable.then_some(retry),
                },
                e.log,
            ),
        },
        Ok(Err(panic)) => (
            Outcome::Failure {
                error: format!("handler panicked: {}", panic_message(panic)),
                retry: Some(retry),
            },
            None,
        ),
    };
    let outcome = RunOutcome {
        run_id,
        outcome,
        output_log,
        waited,
    };
    let _ = done.send(Done { outcome });
    Handled::Reported
}

/// The output log of what a handler returned, whether it succeeded or failed.
fn log_of<E>(
    returned: std::result::Result<std::result::Result<TaskOutput, TaskError>, E>,
) -> Option<String> {
    match returned {
        Ok(Ok(out)) => out.log,
        Ok(Err(e)) => e.log,
        Err(_) => None,
    }
}

/// `90s`, `1.5s`: a duration as an operator reads it.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `?` in a handler: another library's error is retried; one of Hive's that retrying
    /// cannot fix fails the task at once; a transient one of Hive's is retried.
    #[test]
    fn a_question_mark_retries_only_what_may_succeed_later() {
        let io = std::io::Error::other("connection reset");
        assert!(TaskError::from(io).retryable);
        let invalid = crate::Error::from(hive_models::Error::InvalidField {
            field: "fraction".into(),
            reason: "must be between 0 and 1".into(),
        });
        assert!(invalid.is_invalid());
        let e = TaskError::from(invalid);
        assert!(!e.retryable);
        assert!(e.message.contains("fraction"), "{}", e.message);
        let down = crate::Error::from(hive_store::Error::Unavailable {
            target: "db:5432".into(),
            reason: "connection refused".into(),
        });
        assert!(TaskError::from(down).retryable);
        let stale = crate::Error::from(hive_store::Error::StaleRun {
            run_id: hive_models::RunId::new(),
        });
        assert!(stale.is_stale_run());
        assert!(!TaskError::from(stale).retryable);
    }
}
