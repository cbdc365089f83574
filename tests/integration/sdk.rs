//! The SDK end to end on a real SQLite file: connect (creating and migrating), create,
//! claim, complete, and read back through a second client on the same file.

use hive_client::{Client, NewTask, TaskStatus, WorkerId};

#[tokio::test]
async fn sqlite_file_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hive.db").display());
    let client = Client::connect(&url).await.unwrap();
    let id = client
        .create_task(NewTask::new("Deploy", "deployment"))
        .await
        .unwrap();
    assert_eq!(
        client.get_pending_tasks(Some("deployment")).await.unwrap()[0].id,
        id
    );
    let claim = client
        .claim_next_task(
            &WorkerId::parse("w1").unwrap(),
            &[],
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap();
    client
        .complete_task(claim.run.id, Some(serde_json::json!({"ok": true})))
        .await
        .unwrap();
    let other = Client::connect(&url).await.unwrap();
    assert_eq!(
        other.get_task(id).await.unwrap().unwrap().status,
        TaskStatus::Completed
    );
}
