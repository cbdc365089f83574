//! Conformance case for progress: stored on the live run, announced, refused for a run
//! that is over.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use hive_models::NewTask;

use super::fixtures::{claim_params, success};
use crate::{Change, Error, Store};

type S = Arc<dyn Store>;

pub async fn progress_is_stored_on_the_live_run_and_announced(s: S) {
    let id = s
        .insert_tasks(vec![NewTask::new("long", "test")])
        .await
        .unwrap()
        .ids[0];
    let run = s.claim_tasks(&claim_params("w", 1)).await.unwrap()[0]
        .run
        .id;
    let mut changes = s.subscribe().await.unwrap();
    let before = s.now().await.unwrap();
    s.record_progress(run, 0.25, None).await.unwrap();
    s.record_progress(run, 0.5, Some("halfway".into()))
        .await
        .unwrap();
    let p = s.get_run(run).await.unwrap().unwrap().progress.unwrap();
    assert_eq!((p.fraction, p.message.as_deref()), (0.5, Some("halfway")));
    assert!(p.at >= before, "stamped by the store's clock");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), changes.recv())
            .await
            .expect("progress is announced")
            .unwrap();
        if let Change::Progress {
            task_id,
            run_id,
            fraction,
            message,
        } = n.change
        {
            assert_eq!((task_id, run_id), (id, run));
            seen.push((fraction, message));
        }
    }
    assert_eq!(seen, vec![(0.25, None), (0.5, Some("halfway".into()))]);
    s.finish_runs(&[success(run)]).await.unwrap();
    let late = s.record_progress(run, 0.9, None).await.unwrap_err();
    assert!(
        matches!(late, Error::StaleRun { run_id } if run_id == run),
        "{late}"
    );
    let p = s.get_run(run).await.unwrap().unwrap().progress.unwrap();
    assert_eq!(p.fraction, 0.5, "a finished run's progress stays as it was");
}
