//! Store failures surface as typed errors, never panics (a mockall `MockStore`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_models::{NewTask, PlanId, RunId, TaskId, TaskStatus, WorkerId};
use hive_store::{MockStore, Store};

use crate::{Error, Ops};

fn unavailable() -> hive_store::Error {
    hive_store::Error::Unavailable {
        target: "db.example:5432".into(),
        reason: "connection refused".into(),
    }
}

fn ops(mock: MockStore) -> Ops<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(mock);
    Ops::new(store)
}

#[tokio::test]
async fn store_errors_become_typed_errors() {
    let mut m = MockStore::new();
    m.expect_insert_tasks().returning(|_| Err(unavailable()));
    m.expect_get_task().returning(|_| {
        Err(hive_store::Error::Corrupt {
            table: "tasks",
            reason: "bad status".into(),
        })
    });
    m.expect_set_task_status().returning(|_, _| {
        Err(hive_models::Error::IllegalTransition {
            kind: "task",
            from: "completed".into(),
            to: "queued".into(),
        }
        .into())
    });
    m.expect_finish_runs().returning(|_| Err(unavailable()));
    m.expect_extend_lease()
        .returning(|run_id, _| Err(hive_store::Error::StaleRun { run_id }));
    m.expect_materialize_plan().returning(|_| Ok(None));
    m.expect_dependencies_met()
        .returning(|_| Ok(Default::default()));
    let o = ops(m);
    let e = o.create_task(NewTask::new("t", "x")).await.unwrap_err();
    assert!(
        matches!(e, Error::Store(hive_store::Error::Unavailable { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("db.example:5432"));
    assert!(matches!(
        o.get_task(TaskId::new()).await,
        Err(Error::Store(hive_store::Error::Corrupt { .. }))
    ));
    assert!(matches!(
        o.update_task_status(TaskId::new(), TaskStatus::Queued, None)
            .await,
        Err(Error::Invalid(hive_models::Error::IllegalTransition { .. }))
    ));
    assert!(matches!(
        o.complete_task(RunId::new(), None).await,
        Err(Error::Store(_))
    ));
    assert!(matches!(
        o.extend_lease(RunId::new(), Duration::from_secs(1)).await,
        Err(Error::StaleRun { .. })
    ));
    assert!(matches!(
        o.create_planned_subtasks_from_plan(PlanId::new()).await,
        Err(Error::NotFound { entity: "plan", .. })
    ));
    assert!(matches!(
        o.check_subtask_dependencies(TaskId::new()).await,
        Err(Error::NotFound { entity: "task", .. })
    ));
}

#[tokio::test]
async fn invalid_input_never_reaches_the_store() {
    // No expectations: any store call would panic inside the mock and fail the test.
    let o = ops(MockStore::new());
    assert!(matches!(
        o.create_task(NewTask::new("", "x")).await,
        Err(Error::Invalid(_))
    ));
    let huge = NewTask::new("t", "x").payload(serde_json::json!("z".repeat(2 * 1024 * 1024)));
    assert!(matches!(
        o.create_task(huge).await,
        Err(Error::Invalid(hive_models::Error::PayloadTooLarge { .. }))
    ));
    let cyclic = hive_models::NewPlan {
        title: "p".into(),
        description: String::new(),
        parent_task_id: None,
        subtasks: vec![
            hive_models::SubTask::new("a", "a", "x").depends_on(["b"]),
            hive_models::SubTask::new("b", "b", "x").depends_on(["a"]),
        ],
    };
    assert!(matches!(
        o.create_execution_plan(cyclic).await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        o.claim_tasks(&WorkerId::parse("w").unwrap(), &[], 1, Duration::ZERO)
            .await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        o.register_worker("", "role", vec![]).await,
        Err(Error::Invalid(_))
    ));
}
