//! A running handler's progress reports, written at most once a second per run: the
//! latest report waits in a cell, and a writer started on the first report stores it. When
//! the run ends, the report still waiting is written before the writer stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_models::RunId;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::Client;

/// The latest unwritten report of one run, and its writer.
#[derive(Debug, Default)]
pub(super) struct ProgressCell {
    latest: Mutex<Option<(f64, Option<String>)>>,
    reported: Notify,
    /// Set when the run ends: the writer writes what is left and stops.
    closing: AtomicBool,
    /// Cuts short the writer's pause between two writes when the run ends.
    closed: Notify,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Where the writer runs: the worker's runtime, so a handler may report from a thread
    /// of its own (a clone of its context moved to `std::thread` or rayon).
    runtime: Option<tokio::runtime::Handle>,
}

impl ProgressCell {
    /// A cell whose writer runs on `runtime`.
    pub(super) fn on(runtime: tokio::runtime::Handle) -> ProgressCell {
        ProgressCell {
            runtime: Some(runtime),
            ..ProgressCell::default()
        }
    }

    /// The shortest time between two writes of one run's progress while it runs.
    pub(super) const EVERY: Duration = Duration::from_secs(1);

    /// The longest a run's end waits for its last report to be written: a store that does
    /// not answer must not hold the run's outcome.
    pub(super) const LAST_WRITE: Duration = Duration::from_secs(1);

    /// Keeps the report (replacing one not yet written) and wakes the writer, starting it
    /// on the first report. A report after the run ended is dropped.
    pub(super) fn report(
        self: &Arc<Self>,
        client: &Client,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) {
        let mut writer = lock(&self.writer);
        // Checked under the writer's lock, which `close` takes after setting it: a report
        // either starts a writer that `close` then finds, or is dropped.
        if self.closing.load(Ordering::SeqCst) {
            return;
        }
        *lock(&self.latest) = Some((fraction, message));
        self.reported.notify_one();
        if writer.is_none() {
            let Some(runtime) = self
                .runtime
                .clone()
                .or_else(|| tokio::runtime::Handle::try_current().ok())
            else {
                return;
            };
            let cell = self.clone();
            let client = client.clone();
            *writer = Some(runtime.spawn(async move { cell.write(client, run_id).await }));
        }
    }

    async fn write(self: Arc<Self>, client: Client, run_id: RunId) {
        loop {
            let closing = self.closing.load(Ordering::SeqCst);
            if !closing {
                // `close` notifies after setting the flag: its wake-up is never missed.
                self.reported.notified().await;
            }
            let Some((fraction, message)) = lock(&self.latest).take() else {
                if closing {
                    return;
                }
                continue;
            };
            match client.record_progress(run_id, fraction, message).await {
                Ok(()) => {}
                // The run is over; nothing more of it is shown.
                Err(hive_ops::Error::StaleRun { .. }) => return,
                Err(e) => {
                    tracing::debug!(run = %run_id, error = %e, "progress not recorded")
                }
            }
            if !self.closing.load(Ordering::SeqCst) {
                tokio::select! {
                    () = tokio::time::sleep(Self::EVERY) => {}
                    () = self.closed.notified() => {}
                }
            }
        }
    }

    /// Ends the run's reports: the one still waiting is written (a command's last report
    /// usually comes just before it ends, within a second of the one before), for at most
    /// [`Self::LAST_WRITE`], and the writer stops.
    pub(super) async fn close(&self) {
        let Some(mut writer) = self.stop_taking() else {
            return;
        };
        if tokio::time::timeout(Self::LAST_WRITE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    }

    /// Ends the run's reports at once, the one still waiting dropped: for a run whose
    /// handler was dropped half-way, whose end cannot wait.
    pub(super) fn abort(&self) {
        if let Some(writer) = self.stop_taking() {
            writer.abort();
        }
    }

    /// Refuses further reports, tells the writer to finish, and hands it over.
    fn stop_taking(&self) -> Option<JoinHandle<()>> {
        self.closing.store(true, Ordering::SeqCst);
        let writer = lock(&self.writer).take();
        self.reported.notify_one();
        self.closed.notify_one();
        writer
    }
}

/// A lock that a panic while it was held leaves usable: what it guards stays valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claimed run of a fresh task on a store in memory.
    async fn running() -> (Client, RunId) {
        let client = Client::connect("memory:").await.unwrap();
        client
            .create_task(hive_models::NewTask::new("t", "work"))
            .await
            .unwrap();
        let worker: hive_models::WorkerId = "w".parse().unwrap();
        let claim = client
            .claim_next_task(&worker, &[], Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        (client, claim.run.id)
    }

    async fn stored(client: &Client, run: RunId) -> Option<(f64, Option<String>)> {
        let run = client.get_run(run).await.unwrap().unwrap();
        run.progress.map(|p| (p.fraction, p.message))
    }

    /// A handler may report from a thread of its own, off the runtime: the writer runs
    /// on the worker's runtime all the same.
    #[tokio::test]
    async fn a_report_from_a_plain_thread_is_written() {
        let (client, run) = running().await;
        let cell = Arc::new(ProgressCell::on(tokio::runtime::Handle::current()));
        let (c, reporter) = (client.clone(), cell.clone());
        std::thread::spawn(move || reporter.report(&c, run, 0.5, Some("from a thread".into())))
            .join()
            .expect("reporting off the runtime does not panic");
        cell.close().await;
        assert_eq!(
            stored(&client, run).await,
            Some((0.5, Some("from a thread".into())))
        );
    }

    /// The report that waits for the writer's next turn when the run ends is written,
    /// not dropped: a command's last report comes just before it ends.
    #[tokio::test]
    async fn the_last_report_is_written_when_the_run_ends() {
        let (client, run) = running().await;
        let cell = Arc::new(ProgressCell::default());
        cell.report(&client, run, 0.25, Some("started".into()));
        let written = tokio::time::timeout(Duration::from_secs(30), async {
            while stored(&client, run).await.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        written.await.unwrap();
        // Within the writer's pause: this one waits in the cell.
        cell.report(&client, run, 0.75, Some("nearly".into()));
        let began = std::time::Instant::now();
        cell.close().await;
        assert!(
            began.elapsed() < ProgressCell::EVERY,
            "the pause was cut short"
        );
        assert_eq!(
            stored(&client, run).await,
            Some((0.75, Some("nearly".into())))
        );
        cell.report(&client, run, 1.0, None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            stored(&client, run).await,
            Some((0.75, Some("nearly".into()))),
            "a report after the end is dropped"
        );
    }

    /// A first report made just before the run ends is written too, the writer that it
    /// started not yet run.
    #[tokio::test]
    async fn a_first_report_at_the_end_is_written() {
        let (client, run) = running().await;
        let cell = Arc::new(ProgressCell::default());
        cell.report(&client, run, 0.5, None);
        cell.close().await;
        assert_eq!(stored(&client, run).await, Some((0.5, None)));
        ProgressCell::default().close().await;
    }
}
