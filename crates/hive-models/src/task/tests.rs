//! Tests of status names, the transition table and task input validation.

use std::str::FromStr;

use proptest::prelude::*;

use super::*;
use crate::{RunStatus, WorkerStatus};

#[test]
fn eleven_task_statuses_print_and_parse() {
    assert_eq!(TaskStatus::ALL.len(), 11);
    for s in TaskStatus::ALL {
        assert_eq!(TaskStatus::from_str(s.as_str()), Ok(*s));
        assert_eq!(serde_json::to_string(s).ok(), Some(format!("\"{s}\"")));
    }
}

#[test]
fn unknown_status_lists_valid_names() {
    let err = TaskStatus::from_str("runing").unwrap_err().to_string();
    assert!(err.contains("`runing`"), "{err}");
    assert!(err.contains("queued, assigned, in_progress"), "{err}");
    assert!(WorkerStatus::from_str("busy").is_err());
    assert!(RunStatus::from_str("").is_err());
}

#[test]
fn terminal_statuses_only_leave_by_requeue() {
    for from in [
        TaskStatus::Completed,
        TaskStatus::Cancelled,
        TaskStatus::Failed,
    ] {
        for to in TaskStatus::ALL {
            assert_eq!(from.can_transition_to(*to), from == *to, "{from} -> {to}");
        }
        assert!(from.can_requeue());
    }
    assert!(!TaskStatus::InProgress.can_requeue());
}

#[test]
fn illegal_transition_names_both_ends() {
    let err = TaskStatus::Completed
        .check_transition(TaskStatus::InProgress)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "illegal task status transition from `completed` to `in_progress`"
    );
}

#[test]
fn task_methods_follow_the_table() {
    let now = chrono::Utc::now();
    let mut t = Task::from_new(TaskId::new(), NewTask::new("t", "x"), now);
    assert!(t.is_ready_at(now));
    t.assign_to_worker(WorkerId::parse("w").unwrap(), now)
        .unwrap();
    assert!(t.is_active() && !t.is_ready_at(now));
    t.start_execution(now).unwrap();
    t.complete(Some(serde_json::json!({"ok": true})), now)
        .unwrap();
    assert!(t.is_terminal());
    assert!(t.cancel(now).is_err());
    assert_eq!(t.status, TaskStatus::Completed);
}

#[test]
fn delayed_and_blocked_tasks_are_not_ready() {
    let now = chrono::Utc::now();
    let mut t = Task::from_new(TaskId::new(), NewTask::new("t", "x"), now);
    t.run_at = Some(now + chrono::Duration::seconds(5));
    assert!(!t.is_ready_at(now));
    assert!(t.is_ready_at(now + chrono::Duration::seconds(5)));
    t.run_at = None;
    t.pending_dependencies = 1;
    assert!(!t.is_ready_at(now));
}

#[test]
fn new_task_validation_names_the_field() {
    let e = NewTask::new("", "x").validate(10).unwrap_err();
    assert_eq!(e.to_string(), "invalid `title`: must not be empty");
    let e = NewTask::new("t", "  ").validate(10).unwrap_err();
    assert!(e.to_string().contains("`task_type`"));
    let big = NewTask::new("t", "x").payload(serde_json::json!("x".repeat(100)));
    assert!(matches!(
        big.validate(50),
        Err(Error::PayloadTooLarge { limit: 50, .. })
    ));
    assert!(big.validate(DEFAULT_MAX_PAYLOAD_BYTES).is_ok());
    assert!(NewTask::new("t\0", "x").validate(100).is_err());
}

fn any_task_status() -> impl Strategy<Value = TaskStatus> {
    proptest::sample::select(TaskStatus::ALL)
}

proptest! {
    #[test]
    fn status_names_round_trip_and_junk_is_rejected(s in any_task_status(), junk in "\\PC*") {
        prop_assert_eq!(TaskStatus::from_str(&s.to_string()), Ok(s));
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<TaskStatus>(&json).unwrap(), s);
        if !TaskStatus::ALL.iter().any(|t| t.as_str() == junk) {
            prop_assert!(TaskStatus::from_str(&junk).is_err());
        }
    }

    #[test]
    fn transitions_agree_with_check(from in any_task_status(), to in any_task_status()) {
        prop_assert_eq!(from.can_transition_to(to), from.check_transition(to).is_ok());
        if from.is_terminal() && from != to {
            prop_assert!(!from.can_transition_to(to));
        }
    }

    #[test]
    fn tasks_round_trip_through_json(title in "\\PC{1,40}", kind in "[a-z]{1,10}", prio in any::<i32>(),
                                     text in any::<String>()) {
        let now = chrono::Utc::now();
        let new = NewTask::new(title, kind).priority(prio)
            .payload(serde_json::json!({"s": text, "q": "'; DROP TABLE tasks; --"}));
        let task = Task::from_new(TaskId::new(), new, now);
        let back: Task = serde_json::from_str(&serde_json::to_string(&task).unwrap()).unwrap();
        prop_assert_eq!(back, task);
    }
}
