//! Property tests across backends, in modules `sqlite` and `postgres` (and `memory` for the
//! string round trip), so `cargo xtask soak --backend sqlite` selects them:
//!
//! - `random_operations_agree_with_memory`: the state-machine test of
//!   [`hive_store::testing::differential`] — random operation sequences must give the same
//!   results and observable states as the reference `MemoryStore`, step by step.
//! - `strings_round_trip_verbatim`: quotes, backslashes, SQL fragments, astral, RTL and
//!   zero-width characters and control characters (all but NUL, which input validation
//!   refuses before any store call: see hive-ops) come back byte for byte from every
//!   string a store keeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_store::models::{Json, NewPlan, NewTask, RetryPolicy, SubTask, TaskId, WorkerId};
use hive_store::testing::TestStore;
use hive_store::{
    ClaimParams, Outcome, RunOutcome, StatusChange, Store, TaskFilter, WorkerFilter,
    WorkerRegistration,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use serde_json::json;

/// The tests of a database backend: random operations compared with memory, and strings
/// stored and read back.
macro_rules! database_backend {
    ($($backend:ident => $kind:ident),+ $(,)?) => {$(
        mod $backend {
            use hive_store::Backend;
            use hive_store::testing::{self, differential};

            #[test]
            fn random_operations_agree_with_memory() {
                differential::agrees_with_memory(
                    concat!(stringify!($backend), "::random_operations_agree_with_memory"),
                    testing::$backend,
                    differential::Budget::for_backend(Backend::$kind),
                );
            }

            #[test]
            fn strings_round_trip_verbatim() {
                super::strings_round_trip(
                    concat!(stringify!($backend), "::strings_round_trip_verbatim"),
                    testing::$backend,
                );
            }
        }
    )+};
}

database_backend!(sqlite => Sqlite, postgres => Postgres);

mod memory {
    use hive_store::testing;

    #[test]
    fn strings_round_trip_verbatim() {
        super::strings_round_trip("memory::strings_round_trip_verbatim", testing::memory);
    }
}

/// Pieces that break naive quoting, escaping, encoding or normalization.
const NASTY: &[&str] = &[
    "'",
    "''",
    "\"",
    "\\",
    "\\\\",
    "`",
    "\\u0000",
    "'); DROP TABLE tasks;--",
    "Robert'); DELETE FROM runs WHERE ('1'='1",
    "$1",
    "?",
    "%s",
    "%",
    "_",
    "{}",
    "[\"a\"]",
    "null",
    "\u{202E}evil\u{202C}",
    "עברית",
    "العربية",
    "\u{200B}",
    "\u{200D}",
    "\u{FEFF}",
    "🐝",
    "𝕳𝖎𝖛𝖊",
    "\u{10FFFF}",
    "e\u{301}",
    "é",
    "\t",
    "\n",
    "\r\n",
    "\u{1}",
    "\u{7}",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    " ",
];

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(NASTY).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
        1 => prop::collection::vec(any::<char>().prop_filter("NUL is refused by validation", |c| *c != '\0'), 0..8)
            .prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

/// A string of nasty fragments; never NUL.
fn nasty() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 1..4).prop_map(|v| v.concat())
}

/// Validation refuses blank names; keep the nastiness, add something visible.
fn non_blank(s: &str) -> String {
    if s.trim().is_empty() {
        format!("{s}x")
    } else {
        s.to_owned()
    }
}

/// Every string the case puts into a store.
#[derive(Debug, Clone)]
struct Strings {
    title: String,
    task_type: String,
    description: String,
    key: String,
    value: String,
    tag: String,
    phase: String,
    role: String,
    capability: String,
    worker: String,
    error: String,
    log: String,
    plan_title: String,
    first_subtask: String,
    second_subtask: String,
}

fn strings() -> impl Strategy<Value = Strings> {
    (
        (
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
        ),
        (
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
            nasty(),
        ),
    )
        .prop_map(
            |(
                (title, task_type, description, key, value, tag, phase),
                (role, capability, worker, error, log, plan_title, first, second),
            )| Strings {
                title: non_blank(&title),
                task_type: non_blank(&task_type),
                description,
                key,
                value,
                tag,
                phase,
                role: non_blank(&role),
                capability,
                // Worker ids are names without control characters (WorkerId::parse).
                worker: non_blank(
                    &worker
                        .chars()
                        .filter(|c| !c.is_control())
                        .collect::<String>(),
                ),
                error,
                log,
                plan_title: non_blank(&plan_title),
                first_subtask: non_blank(&first),
                second_subtask: if non_blank(&second) == non_blank(&first) {
                    format!("{}2", non_blank(&second))
                } else {
                    non_blank(&second)
                },
            },
        )
}

/// Runs the string property on one store (fresh per test, shared by the cases: each case
/// creates its own rows) and cleans the store up before reporting.
fn strings_round_trip<F, Fut>(test: &str, factory: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<TestStore>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(ts) = runtime.block_on(factory()) else {
        hive_store::testing::report_skip(test);
        return;
    };
    let store = ts.store.clone();
    let cases = hive_store::testing::size(32, 512);
    let mut runner = TestRunner::new(Config {
        cases: u32::try_from(cases).unwrap(),
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&strings(), |s| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(round_trip(&store, &s, case));
        Ok(())
    });
    drop(store);
    runtime.block_on(ts.run(|_| async {}));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, s)) => panic!("{test}: {reason}\nminimal input: {s:#?}"),
        Err(TestError::Abort(reason)) => panic!("{test}: aborted: {reason}"),
    }
}

/// One case: every string goes in through its own field and must come back unchanged.
async fn round_trip(store: &Arc<dyn Store>, s: &Strings, case: u64) {
    let payload =
        json!({ s.key.clone(): s.value, "nested": [s.value, { s.value.clone(): s.key }] });
    let metadata = json!({ s.value.clone(): s.key });
    let mut new = NewTask::new(&s.title, &s.task_type)
        .description(&s.description)
        .payload(payload.clone())
        .tags([s.tag.clone()])
        .metadata(metadata.clone())
        // Unique per case: a repeated key would (rightly) return an earlier task.
        .idempotency_key(format!("{}{case}", s.key));
    new.current_phase.clone_from(&s.phase);
    let id = store.insert_tasks(vec![new.clone()]).await.unwrap().ids[0];
    let t = store
        .get_task(id)
        .await
        .unwrap()
        .expect("the task just inserted");
    assert_eq!(t.title, s.title);
    assert_eq!(t.task_type, s.task_type);
    assert_eq!(t.description, s.description);
    assert_eq!(t.payload, payload);
    assert_eq!(t.tags, vec![s.tag.clone()]);
    assert_eq!(t.metadata, metadata);
    assert_eq!(t.current_phase, s.phase);
    assert_eq!(t.idempotency_key, new.idempotency_key);
    let again = store.insert_tasks(vec![new]).await.unwrap().ids[0];
    assert_eq!(again, id, "the idempotency key matches itself exactly");

    let of_type = TaskFilter {
        task_type: Some(s.task_type.clone()),
        ..Default::default()
    };
    let by_type = store.list_tasks(&of_type).await.unwrap();
    assert!(
        by_type.iter().any(|x| x.id == id),
        "filter by type finds it"
    );
    assert!(by_type.iter().all(|x| x.task_type == s.task_type));

    // Metadata merged through a status change keeps its keys and values.
    let change = StatusChange {
        metadata: Some(json!({ s.key.clone(): s.error })),
        ..StatusChange::to(hive_store::models::TaskStatus::Queued)
    };
    let changed = store.set_task_status(id, change).await.unwrap().unwrap();
    let mut merged = metadata.clone();
    merged[s.key.as_str()] = Json::String(s.error.clone());
    assert_eq!(changed.task.metadata, merged);

    // The worker registry keeps role, capabilities and metadata verbatim.
    let worker = WorkerId::parse(s.worker.clone()).unwrap();
    let registration = WorkerRegistration {
        id: worker.clone(),
        role: s.role.clone(),
        capabilities: vec![s.capability.clone(), s.task_type.clone()],
        metadata: metadata.clone(),
    };
    let w = store.register_worker(&registration).await.unwrap();
    let stored = store.get_worker(&worker).await.unwrap().unwrap();
    for w in [w, stored] {
        assert_eq!(w.id, worker);
        assert_eq!(w.role, s.role);
        assert_eq!(w.capabilities, registration.capabilities);
        assert_eq!(w.metadata, metadata);
    }
    let by_role = store
        .list_workers(&WorkerFilter {
            role: Some(s.role.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        by_role.iter().any(|w| w.id == worker),
        "filter by role finds it"
    );

    // A failed run's error and log, then a successful run's result, come back verbatim.
    let run = claim(store, &worker, &s.task_type, id).await;
    let failed = RunOutcome {
        run_id: run,
        outcome: Outcome::Failure {
            error: s.error.clone(),
            retry: Some(RetryPolicy::IMMEDIATE),
        },
        output_log: Some(s.log.clone()),
        waited: std::time::Duration::ZERO,
    };
    store.finish_runs(&[failed]).await.unwrap();
    let r = store.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.error_message.as_deref(), Some(s.error.as_str()));
    assert_eq!(r.output_log.as_deref(), Some(s.log.as_str()));
    let t = store.get_task(id).await.unwrap().unwrap();
    assert_eq!(t.last_error.as_deref(), Some(s.error.as_str()));
    let run = claim(store, &worker, &s.task_type, id).await;
    let result = json!({ s.value.clone(): [s.key, s.error], "log": s.log });
    let done = RunOutcome {
        run_id: run,
        outcome: Outcome::success(Some(result.clone())),
        output_log: Some(s.value.clone()),
        waited: std::time::Duration::ZERO,
    };
    store.finish_runs(&[done]).await.unwrap();
    let r = store.get_run(run).await.unwrap().unwrap();
    assert_eq!(r.result_data.as_ref(), Some(&result));
    assert_eq!(r.output_log.as_deref(), Some(s.value.as_str()));
    assert_eq!(
        store.get_task(id).await.unwrap().unwrap().result,
        Some(result)
    );

    // Plans: title, description, subtask ids (also as dependencies), titles and payloads.
    let mut first = SubTask::new(&s.first_subtask, &s.title, &s.task_type);
    first.description.clone_from(&s.description);
    first.payload = payload.clone();
    let second =
        SubTask::new(&s.second_subtask, &s.value, &s.task_type).depends_on([&s.first_subtask]);
    let plan_metadata = json!({ s.key.clone(): s.value });
    let plan = NewPlan::new(s.plan_title.clone(), vec![first.clone(), second.clone()])
        .description(s.description.clone())
        .parent_task_id(id)
        .metadata(plan_metadata.clone());
    let pid = store.insert_plan(plan).await.unwrap();
    let p = store.get_plan(pid).await.unwrap().unwrap();
    assert_eq!(p.title, s.plan_title);
    assert_eq!(p.description, s.description);
    assert_eq!(p.metadata, plan_metadata);
    assert_eq!(p.subtasks, vec![first, second]);
    assert_eq!(
        p.subtask_ids,
        vec![s.first_subtask.clone(), s.second_subtask.clone()]
    );
    assert_eq!(
        p.dependency_graph.get(&s.second_subtask),
        Some(&vec![s.first_subtask.clone()])
    );
    assert_eq!(store.materialize_plan(pid).await.unwrap(), Some(2));
    let tasks = store.list_tasks(&TaskFilter::in_plan(pid)).await.unwrap();
    let by_subtask = |sub: &str| {
        tasks
            .iter()
            .find(|t| t.plan_subtask_id.as_deref() == Some(sub))
            .unwrap_or_else(|| panic!("a task for subtask {sub:?} in {tasks:#?}"))
    };
    let a = by_subtask(&s.first_subtask);
    let b = by_subtask(&s.second_subtask);
    assert_eq!((a.title.as_str(), &a.payload), (s.title.as_str(), &payload));
    // An empty subtask title stands for its id.
    let second_title = if s.value.is_empty() {
        &s.second_subtask
    } else {
        &s.value
    };
    assert_eq!(&b.title, second_title);
    assert_eq!(b.dependencies, vec![a.id]);
}

/// Claims tasks of `task_type` until `want` is among them (earlier cases may have left
/// tasks of the same type), completing the others; returns `want`'s run.
async fn claim(
    store: &Arc<dyn Store>,
    worker: &WorkerId,
    task_type: &str,
    want: TaskId,
) -> hive_store::models::RunId {
    let params = ClaimParams {
        worker_id: worker.clone(),
        task_types: vec![task_type.to_owned()],
        limit: 100,
        lease: Duration::from_secs(600),
    };
    let claims = store.claim_tasks(&params).await.unwrap();
    let mut mine = None;
    let mut others = Vec::new();
    for c in claims {
        assert_eq!(c.task.task_type, task_type);
        if c.task.id == want {
            mine = Some(c.run.id);
        } else {
            others.push(RunOutcome {
                run_id: c.run.id,
                outcome: Outcome::success(None),
                output_log: None,
                waited: std::time::Duration::ZERO,
            });
        }
    }
    store.finish_runs(&others).await.unwrap();
    mine.expect("the case's task is ready and of the claimed type")
}
