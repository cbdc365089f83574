//! The classification of closed runs.
#![allow(clippy::unwrap_used)]

use hive_client::models::{Run, RunId, RunStatus, TaskId, WorkerId};

use super::{Closed, classify};

fn run(status: RunStatus, error: Option<&str>) -> Run {
    let now = chrono::Utc::now();
    Run {
        id: RunId::new(),
        task_id: TaskId::new(),
        worker_id: WorkerId("w".into()),
        run_number: 1,
        status,
        phase: "start".into(),
        started_at: now,
        completed_at: Some(now),
        lease_expires_at: None,
        result_data: None,
        error_message: error.map(str::to_owned),
        output_log: None,
        transcript: None,
        created_at: now,
        updated_at: now,
        progress: None,
    }
}

#[test]
fn closed_runs_are_classified_by_status_and_error() {
    assert_eq!(classify(&run(RunStatus::Success, None)), Closed::Completed);
    assert_eq!(
        classify(&run(RunStatus::Failure, Some("boom"))),
        Closed::Failed
    );
    assert_eq!(
        classify(&run(
            RunStatus::Failure,
            Some("timed out after 1s; the handler stopped")
        )),
        Closed::TimedOut
    );
    assert_eq!(
        classify(&run(RunStatus::Timeout, Some(Run::LEASE_EXPIRED))),
        Closed::Stale
    );
    assert_eq!(classify(&run(RunStatus::Timeout, None)), Closed::TimedOut);
    assert_eq!(classify(&run(RunStatus::Cancelled, None)), Closed::Ignored);
}
