//! Tests of a run's own rules: its timestamps, and the reasons it keeps.

use super::*;

fn run_at(now: Timestamp) -> Run {
    let task = crate::Task::from_new(TaskId::new(), crate::NewTask::new("t", "x"), now);
    Run::claimed(
        RunId::new(),
        &task,
        WorkerId::parse("w").unwrap(),
        1,
        now,
        None,
    )
}

#[test]
fn a_run_records_when_it_was_created_and_last_changed() {
    let opened = chrono::Utc::now();
    let mut run = run_at(opened);
    assert_eq!((run.created_at, run.updated_at), (opened, opened));
    let later = opened + chrono::Duration::seconds(3);
    run.succeed(None, later);
    assert_eq!((run.created_at, run.updated_at), (opened, later));
}

#[test]
fn a_cancelled_run_keeps_the_reason_and_a_timeout_says_what_happened() {
    let now = chrono::Utc::now();
    let mut run = run_at(now);
    run.cancel(Some("superseded by release 1.3".into()), now);
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(
        run.error_message.as_deref(),
        Some("superseded by release 1.3")
    );
    let mut quiet = run_at(now);
    quiet.cancel(None, now);
    assert_eq!(quiet.error_message, None);
    let mut lost = run_at(now);
    lost.timeout(now);
    let message = lost.error_message.unwrap_or_default();
    assert!(
        message.starts_with("timed out: no heartbeat from its worker"),
        "{message}"
    );
}
