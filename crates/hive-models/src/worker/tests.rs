//! Tests of a worker's status and the reason kept with it.

use super::*;

#[test]
fn a_status_keeps_its_reason_until_the_next_change() {
    let now = chrono::Utc::now();
    let mut w = Worker {
        id: WorkerId::parse("w").unwrap(),
        role: "r".into(),
        status: WorkerStatus::Active,
        last_heartbeat: now,
        capabilities: vec![],
        current_task_id: None,
        registered_at: now,
        metadata: Json::Null,
        status_reason: None,
    };
    w.mark_error(Some("GPU lost".into()));
    assert_eq!(w.status, WorkerStatus::Error);
    assert_eq!(w.status_reason.as_deref(), Some("GPU lost"));
    assert!(!w.is_active());
    w.set_status(WorkerStatus::Active, None);
    assert_eq!(w.status_reason, None);
    w.mark_offline(Some(Worker::silent_reason(std::time::Duration::from_secs(
        30,
    ))));
    assert_eq!(
        w.status_reason.as_deref(),
        Some("no heartbeat for over 30 s")
    );
}
