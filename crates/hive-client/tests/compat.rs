//! The original SDK's names do what the operations they map to do, on memory and SQLite.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_client::{
    Client, Error, NewPlan, NewTask, OpsConfig, PlanStatus, Store, SubTask, TaskId, WorkerId,
    WorkerStatus,
};

fn client(store: Arc<dyn Store>) -> Client {
    Client::from_store(store, OpsConfig::default())
}

fn not_found(e: Error) -> bool {
    matches!(e, Error::Ops(hive_client::ops::Error::NotFound { .. }))
}

/// `a`, and `b` after it.
fn chain() -> NewPlan {
    NewPlan::new(
        "chain",
        vec![
            SubTask::new("a", "A", "x"),
            SubTask::new("b", "B", "x").depends_on(["a"]),
        ],
    )
}

hive_store::per_backend!([memory, sqlite], hive_store::testing::TestStore::run, client =>
    get_available_workers_is_get_active_workers,
    get_plan_status_is_get_execution_plan_status,
    check_dependencies_is_check_subtask_dependencies,
    create_subtasks_from_plan_is_create_planned_subtasks_from_plan,
    get_pending_tasks_is_get_queued_tasks,
    heartbeat_is_update_worker_heartbeat,
    start_plan_execution_is_mark_plan_execution_started,
    get_next_subtask_is_get_next_planned_subtask,
);

async fn get_available_workers_is_get_active_workers(c: Client) {
    c.register_worker("d1", "deployer", vec![]).await.unwrap();
    c.register_worker("d2", "deployer", vec![]).await.unwrap();
    c.register_worker("p1", "planner", vec![]).await.unwrap();
    c.heartbeat("d2", Some(WorkerStatus::Offline))
        .await
        .unwrap();
    let ids = |ws: Vec<hive_client::Worker>| ws.into_iter().map(|w| w.id.0).collect::<Vec<_>>();
    for role in [Some("deployer"), Some("planner"), Some("nobody"), None] {
        assert_eq!(
            ids(c.get_available_workers(role).await.unwrap()),
            ids(c.get_active_workers(role).await.unwrap()),
            "{role:?}"
        );
    }
    assert_eq!(
        ids(c.get_available_workers(Some("deployer")).await.unwrap()),
        ["d1"]
    );
    assert_eq!(
        ids(c.get_available_workers(None).await.unwrap()),
        ["d1", "p1"]
    );
}

async fn get_plan_status_is_get_execution_plan_status(c: Client) {
    assert_eq!(
        c.get_plan_status(hive_client::PlanId::new()).await.unwrap(),
        None
    );
    let plan = c.submit_plan(chain()).await.unwrap();
    assert_eq!(
        c.get_plan_status(plan).await.unwrap(),
        Some(PlanStatus::Pending)
    );
    c.cancel_plan(plan).await.unwrap();
    let status = c.get_plan_status(plan).await.unwrap();
    assert_eq!(status, Some(PlanStatus::Cancelled));
    assert_eq!(status, c.get_execution_plan_status(plan).await.unwrap());
}

async fn check_dependencies_is_check_subtask_dependencies(c: Client) {
    let plan = c.submit_plan(chain()).await.unwrap();
    let tasks = c
        .list_tasks(&hive_client::store::TaskFilter::in_plan(plan))
        .await
        .unwrap();
    let id = |sub: &str| {
        tasks
            .iter()
            .find(|t| t.plan_subtask_id.as_deref() == Some(sub))
            .unwrap()
            .id
    };
    let (a, b) = (id("a"), id("b"));
    assert!(c.check_dependencies(a).await.unwrap());
    assert!(!c.check_dependencies(b).await.unwrap());
    let claim = c
        .claim_next_task(&WorkerId::parse("w").unwrap(), &[], Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    c.complete_task(claim.run.id, None).await.unwrap();
    assert!(c.check_dependencies(b).await.unwrap());
    for t in [a, b] {
        assert_eq!(
            c.check_dependencies(t).await.unwrap(),
            c.check_subtask_dependencies(t).await.unwrap()
        );
    }
    assert!(not_found(
        c.check_dependencies(TaskId::new()).await.unwrap_err()
    ));
}

/// How many tasks the plan has.
async fn tasks_of(c: &Client, plan: hive_client::PlanId) -> u64 {
    c.count_tasks(Some(plan)).await.unwrap().values().sum()
}

async fn create_subtasks_from_plan_is_create_planned_subtasks_from_plan(c: Client) {
    let plan = c.create_execution_plan(chain()).await.unwrap();
    assert_eq!(tasks_of(&c, plan).await, 0);
    assert_eq!(c.create_subtasks_from_plan(plan).await.unwrap(), 2);
    assert_eq!(tasks_of(&c, plan).await, 2);
    assert_eq!(
        c.create_subtasks_from_plan(plan).await.unwrap(),
        0,
        "already done"
    );
    assert_eq!(c.create_planned_subtasks_from_plan(plan).await.unwrap(), 0);
    let unknown = hive_client::PlanId::new();
    assert!(not_found(
        c.create_subtasks_from_plan(unknown).await.unwrap_err()
    ));
}

async fn get_pending_tasks_is_get_queued_tasks(c: Client) {
    let tasks =
        (0..120).map(|i| NewTask::new(format!("t{i}"), if i % 2 == 0 { "even" } else { "odd" }));
    c.create_tasks(tasks.collect()).await.unwrap();
    let pending = c.get_pending_tasks(None).await.unwrap();
    assert_eq!(pending.len(), 10, "the original's default");
    assert_eq!(pending, c.get_queued_tasks(None, None).await.unwrap());
    let even = c.get_pending_tasks(Some("even")).await.unwrap();
    assert_eq!(even.len(), 10);
    assert!(even.iter().all(|t| t.task_type == "even"));
}

async fn heartbeat_is_update_worker_heartbeat(c: Client) {
    c.register_worker("w", "r", vec![]).await.unwrap();
    assert!(c.heartbeat("w", Some(WorkerStatus::Idle)).await.unwrap());
    assert_eq!(
        c.get_worker("w").await.unwrap().unwrap().status,
        WorkerStatus::Idle
    );
    assert!(!c.heartbeat("ghost", None).await.unwrap());
    assert!(!c.update_worker_heartbeat("ghost", None).await.unwrap());
}

async fn start_plan_execution_is_mark_plan_execution_started(c: Client) {
    let plan = c.submit_plan(chain()).await.unwrap();
    assert!(c.start_plan_execution(plan).await.unwrap());
    assert_eq!(
        c.get_plan_status(plan).await.unwrap(),
        Some(PlanStatus::InProgress)
    );
    assert!(
        !c.start_plan_execution(plan).await.unwrap(),
        "only from pending"
    );
    assert!(!c.mark_plan_execution_started(plan).await.unwrap());
}

async fn get_next_subtask_is_get_next_planned_subtask(c: Client) {
    let plan = c.submit_plan(chain()).await.unwrap();
    let next = c.get_next_subtask(plan).await.unwrap().unwrap();
    assert_eq!(next.plan_subtask_id.as_deref(), Some("a"));
    assert_eq!(Some(next), c.get_next_planned_subtask(plan).await.unwrap());
    assert_eq!(
        c.get_next_subtask(hive_client::PlanId::new())
            .await
            .unwrap(),
        None
    );
}

/// One round of docs/MIGRATING.md's call-for-call port of the Python ai-deployer loop, on
/// the blocking facade: what the guide shows works as it says.
#[test]
fn the_python_deployer_loop_ported_call_for_call() {
    use hive_client::TaskStatus;
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hive.db").display());
    let client = hive_client::blocking::Client::connect(&url).unwrap();
    let good = client
        .create_task(NewTask::new("Deploy api", "deployment").payload(json!({"env": "prod"})))
        .unwrap();
    let bad = client
        .create_task(NewTask::new("Deploy ?", "deployment"))
        .unwrap();
    let deploy = |payload: &serde_json::Value| match payload["env"].as_str() {
        Some(env) => Ok(json!({ "deployed_to": env })),
        None => Err("no environment"),
    };
    client
        .register_worker("deployer-1", "deployer", vec!["deployment".into()])
        .unwrap();
    client
        .heartbeat("deployer-1", Some(WorkerStatus::Active))
        .unwrap();
    for task in client.get_pending_tasks(Some("deployment")).unwrap() {
        client
            .update_task_status(task.id, TaskStatus::InProgress, None)
            .unwrap();
        let (status, metadata) = match deploy(&task.payload) {
            Ok(result) => (TaskStatus::Completed, json!({ "result": result })),
            Err(e) => (TaskStatus::Failed, json!({ "error": e })),
        };
        client
            .update_task_status(task.id, status, Some(metadata))
            .unwrap();
    }
    let good = client.get_task(good).unwrap().unwrap();
    assert_eq!(good.status, TaskStatus::Completed);
    assert_eq!(good.metadata["result"]["deployed_to"], "prod");
    let bad = client.get_task(bad).unwrap().unwrap();
    assert_eq!(bad.status, TaskStatus::Failed);
    assert_eq!(bad.metadata["error"], "no environment");
}
