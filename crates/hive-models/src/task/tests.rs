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
fn a_retry_moves_only_tasks_no_worker_holds_and_not_queued() {
    for s in TaskStatus::ALL {
        let allowed = !matches!(
            s,
            TaskStatus::Queued | TaskStatus::Assigned | TaskStatus::InProgress
        );
        assert_eq!(s.can_retry(), allowed, "{s}");
        assert_eq!(s.check_retry().is_ok(), allowed, "{s}");
    }
    let err = TaskStatus::InProgress
        .check_retry()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`in_progress`") && err.contains("worker holds"),
        "{err}"
    );
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
    assert!(t.cancel(None, now).is_err());
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

/// Every status enum's names print, parse and serialize alike, and junk is refused by both
/// `FromStr` and serde with the valid names listed.
fn check_status_enum<T>(all: &[T], kind: &str, junk: &str)
where
    T: Copy
        + std::fmt::Debug
        + std::fmt::Display
        + PartialEq
        + FromStr<Err = crate::Error>
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let names: Vec<String> = all.iter().map(ToString::to_string).collect();
    for (s, name) in all.iter().zip(&names) {
        assert_eq!(T::from_str(name).as_ref(), Ok(s), "{kind} {name}");
        let json = serde_json::to_string(s).unwrap();
        assert_eq!(
            json,
            format!("\"{name}\""),
            "serde name is the display name"
        );
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *s);
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name} is snake_case"
        );
    }
    if !names.iter().any(|n| n == junk) {
        match T::from_str(junk) {
            Err(crate::Error::UnknownStatus {
                kind: k,
                value,
                expected,
            }) => {
                assert_eq!(k, kind);
                assert_eq!(value, junk);
                assert_eq!(expected, names.join(", "));
            }
            other => panic!("{kind} status {junk:?} parsed as {other:?}"),
        }
        let quoted = serde_json::to_string(junk).unwrap();
        assert!(
            serde_json::from_str::<T>(&quoted).is_err(),
            "serde refuses {junk:?}"
        );
    }
}

/// The table in `can_transition_to`'s documentation, row by row: a change to the code
/// that the documentation does not describe fails here.
const DOCUMENTED_TABLE: &[(TaskStatus, &[TaskStatus])] = {
    use TaskStatus::*;
    &[
        (Queued, &[Assigned, InProgress, Failed, Cancelled]),
        (
            Assigned,
            &[Queued, InProgress, Completed, Failed, Cancelled],
        ),
        (
            InProgress,
            &[
                Queued,
                ReviewPending,
                ReworkNeeded,
                Escalated,
                Completed,
                Failed,
                Cancelled,
            ],
        ),
        (
            ReviewPending,
            &[InProgress, Approved, Rejected, Escalated, Cancelled],
        ),
        (Approved, &[InProgress, Completed, Cancelled]),
        (Rejected, &[ReworkNeeded, Escalated, Failed, Cancelled]),
        (ReworkNeeded, &[Queued, InProgress, Cancelled]),
        (
            Escalated,
            &[
                Queued,
                InProgress,
                ReviewPending,
                Completed,
                Failed,
                Cancelled,
            ],
        ),
        (Completed, &[]),
        (Failed, &[]),
        (Cancelled, &[]),
    ]
};

#[test]
fn transition_table_is_the_documented_one() {
    assert_eq!(DOCUMENTED_TABLE.len(), TaskStatus::ALL.len());
    for (from, allowed) in DOCUMENTED_TABLE {
        for to in TaskStatus::ALL {
            let expected = from == to || allowed.contains(to);
            assert_eq!(from.can_transition_to(*to), expected, "{from} -> {to}");
        }
    }
}

proptest! {
    #[test]
    fn every_status_enum_round_trips(junk in "\\PC{0,20}|[a-z_]{1,14}") {
        check_status_enum(TaskStatus::ALL, "task", &junk);
        check_status_enum(WorkerStatus::ALL, "worker", &junk);
        check_status_enum(RunStatus::ALL, "run", &junk);
        check_status_enum(crate::PlanStatus::ALL, "plan", &junk);
    }

    /// Any walk through the task methods stays inside the table: a method succeeds exactly
    /// when the table allows its move, and a refused move changes nothing.
    #[test]
    fn task_methods_never_leave_the_table(moves in prop::collection::vec(0u8..5, 1..30)) {
        let now = chrono::Utc::now();
        let mut t = Task::from_new(TaskId::new(), NewTask::new("t", "x"), now);
        for m in moves {
            let before = t.clone();
            let (to, result) = match m {
                0 => (TaskStatus::Assigned, t.assign_to_worker(WorkerId::parse("w").unwrap(), now)),
                1 => (TaskStatus::InProgress, t.start_execution(now)),
                2 => (TaskStatus::Completed, t.complete(None, now)),
                3 => (TaskStatus::Failed, t.fail("e", now)),
                _ => (TaskStatus::Cancelled, t.cancel(None, now)),
            };
            prop_assert_eq!(result.is_ok(), before.status.can_transition_to(to));
            if result.is_ok() {
                prop_assert_eq!(t.status, to);
            } else {
                prop_assert_eq!(&t, &before);
            }
        }
    }

    /// A NUL anywhere in any string a task carries is refused, naming the field; the same
    /// task without it passes.
    #[test]
    fn nul_is_refused_in_every_task_string(field in 0usize..11, text in "\\PC{0,8}", at in any::<prop::sample::Index>()) {
        let mut chars: Vec<char> = text.chars().collect();
        chars.insert(at.index(chars.len() + 1), '\0');
        let with_nul: String = chars.into_iter().collect();
        let clean = NewTask::new("t", "x");
        prop_assert!(clean.validate(DEFAULT_MAX_PAYLOAD_BYTES).is_ok());
        let mut t = clean;
        let name = match field {
            0 => { t.title = format!("x{with_nul}"); "title" }
            1 => { t.task_type = format!("x{with_nul}"); "task_type" }
            2 => { t.description = with_nul; "description" }
            3 => { t.current_phase = with_nul; "current_phase" }
            4 => { t.tags = vec!["ok".into(), with_nul]; "tags[1]" }
            5 => { t.idempotency_key = Some(format!("k{with_nul}")); "idempotency_key" }
            6 => { t.payload = serde_json::json!({ "a": [1, with_nul] }); "payload" }
            7 => { t.payload = serde_json::json!({ with_nul: 1 }); "payload" }
            8 => { t.metadata = serde_json::json!({ "m": { "n": with_nul } }); "metadata" }
            9 => { t.workflow = Some(serde_json::json!([with_nul])); "workflow" }
            _ => { t.payload = serde_json::Value::String(with_nul); "payload" }
        };
        match t.validate(DEFAULT_MAX_PAYLOAD_BYTES) {
            Err(Error::InvalidField { field, reason }) => {
                prop_assert_eq!(field, name);
                prop_assert!(reason.contains("NUL"), "{}", reason);
                prop_assert!(!reason.contains('\0') && !reason.contains('\n'), "one printable line: {:?}", reason);
            }
            other => prop_assert!(false, "field {} with a NUL: {:?}", name, other),
        }
    }
}

#[test]
fn nul_location_is_a_json_pointer() {
    let t = NewTask::new("t", "x").payload(serde_json::json!({"a": {"b/c": ["ok", "x\0"]}}));
    let e = t
        .validate(DEFAULT_MAX_PAYLOAD_BYTES)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid `payload`: must not contain a NUL character (U+0000), found at `/a/b~1c/1`"
    );
    // The literal text `\u0000` is six harmless characters, not a NUL.
    let t = NewTask::new("t", "x").payload(serde_json::json!({"s": "\\u0000"}));
    assert!(t.validate(DEFAULT_MAX_PAYLOAD_BYTES).is_ok());
}

/// A task type is a name an operator limits and pauses: what `hive limit` and `hive queue
/// pause` refuse, a task is refused too, so no type exists that they cannot name; an
/// idempotency key and a timeout stay within what every backend stores as given.
#[test]
fn names_keys_and_timeouts_are_refused_where_a_backend_could_not_take_them() {
    let refused = |t: NewTask, field: &str, says: &str| match t.validate(DEFAULT_MAX_PAYLOAD_BYTES)
    {
        Err(Error::InvalidField { field: f, reason }) => {
            assert_eq!(f, field);
            assert!(reason.contains(says), "{reason}");
        }
        other => panic!("{field}: {other:?}"),
    };
    refused(
        NewTask::new("t", "etl\t2"),
        "task_type",
        "control characters",
    );
    refused(
        NewTask::new("t", "x".repeat(201)),
        "task_type",
        "over the limit of 200",
    );
    let mut long_key = NewTask::new("t", "x");
    long_key.idempotency_key = Some("k".repeat(1025));
    refused(long_key, "idempotency_key", "over the limit of 1024");
    let mut long_timeout = NewTask::new("t", "x");
    long_timeout.timeout_secs = Some(3_000_000_000);
    refused(long_timeout, "timeout_secs", "over the maximum");
    let mut fine = NewTask::new("t", "x".repeat(200));
    fine.idempotency_key = Some("k".repeat(1024));
    fine.timeout_secs = Some(MAX_TIMEOUT_SECS);
    assert!(fine.validate(DEFAULT_MAX_PAYLOAD_BYTES).is_ok());
    assert!(
        WorkerId::parse("a\tb")
            .unwrap_err()
            .to_string()
            .contains("control character")
    );
    assert!(
        WorkerId::parse("w".repeat(201))
            .unwrap_err()
            .to_string()
            .contains("over the limit of 200")
    );
}

/// A time every backend cannot store alike, and metadata, tags or text over the payload's
/// limit, are refused naming the field.
#[test]
fn times_out_of_range_and_oversized_fields_are_refused_by_name() {
    use chrono::TimeZone;
    let ancient = chrono::Utc.with_ymd_and_hms(-5000, 1, 1, 0, 0, 0).unwrap();
    let far = chrono::Utc.with_ymd_and_hms(12_000, 1, 1, 0, 0, 0).unwrap();
    let mut t = NewTask::new("t", "x");
    t.run_at = Some(ancient);
    let e = t.validate(1024).unwrap_err().to_string();
    assert!(e.contains("run_at") && e.contains("years 1 to 9999"), "{e}");
    t.run_at = None;
    t.due_date = Some(far);
    assert!(
        t.validate(1024)
            .unwrap_err()
            .to_string()
            .contains("due_date")
    );
    t.due_date = Some(chrono::Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).unwrap());
    t.validate(1024).unwrap();
    for (field, task) in [
        (
            "metadata",
            NewTask::new("t", "x").metadata(serde_json::json!({"k": "v".repeat(2000)})),
        ),
        (
            "description",
            NewTask::new("t", "x").description("d".repeat(2000)),
        ),
        ("title", NewTask::new("t".repeat(2000), "x")),
        ("tags", NewTask::new("t", "x").tags(vec!["g".repeat(2000)])),
    ] {
        let e = task.validate(1024).unwrap_err().to_string();
        assert!(
            e.contains(field) && e.contains("over the limit of 1024"),
            "{field}: {e}"
        );
    }
}
