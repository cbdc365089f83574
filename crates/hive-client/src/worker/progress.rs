//! A running handler's progress reports, written at most once a second per run: the
//! latest report waits in a cell, and a writer started on the first report stores it.

use std::sync::{Arc, Mutex, OnceLock};
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
    writer: OnceLock<JoinHandle<()>>,
}

impl ProgressCell {
    /// The shortest time between two writes of one run's progress.
    pub(super) const EVERY: Duration = Duration::from_secs(1);

    /// Keeps the report (replacing one not yet written) and wakes the writer, starting it
    /// on the first report.
    pub(super) fn report(
        self: &Arc<Self>,
        client: &Client,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some((fraction, message));
        self.reported.notify_one();
        self.writer.get_or_init(|| {
            let cell = self.clone();
            let client = client.clone();
            tokio::spawn(async move { cell.write(client, run_id).await })
        });
    }

    async fn write(self: Arc<Self>, client: Client, run_id: RunId) {
        loop {
            self.reported.notified().await;
            let Some((fraction, message)) =
                self.latest.lock().unwrap_or_else(|e| e.into_inner()).take()
            else {
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
            tokio::time::sleep(Self::EVERY).await;
        }
    }

    /// Stops the writer when the run ends; a report not yet written is dropped.
    pub(super) fn close(&self) {
        if let Some(w) = self.writer.get() {
            w.abort();
        }
    }
}
