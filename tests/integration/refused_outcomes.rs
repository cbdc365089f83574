//! The completer tells store errors apart: an outcome the database refuses for good (a
//! constraint it checks) fails that run with the database's error, and the worker goes on
//! with everything else; a transient error (a lock timeout) is retried until the outcome
//! commits. Faults are injected with real triggers in the database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hive_client::{Client, NewTask, OpsConfig, RunStatus, TaskContext, TaskError, TaskStatus};
use hive_store::Store;
use sqlx::{Connection, Executor};

hive_store::per_backend!([sqlite, postgres], hive_store::testing::TestStore::run_with_url =>
    refused_outcomes_fail_their_runs_and_transient_ones_are_retried,
);

/// Installs triggers that refuse a run result carrying `poison` (a check violation, for
/// good) and, on Postgres, fail the first three writes of a result carrying `flaky` with a
/// lock timeout (a sequence counts them: it is not rolled back with the failed statement).
async fn inject_faults(url: &str) -> bool {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        c.execute(
            "CREATE TRIGGER refuse_poison BEFORE UPDATE OF result_data ON runs \
             WHEN NEW.result_data IS NOT NULL AND json_extract(NEW.result_data, '$.poison') IS NOT NULL \
             BEGIN SELECT RAISE(ABORT, 'poisoned result refused'); END",
        )
        .await
        .unwrap();
        return false;
    }
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    c.execute(
        "CREATE SEQUENCE flaky_faults; \
         CREATE FUNCTION refuse_faulty() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.result_data ? 'poison' THEN \
             RAISE EXCEPTION 'poisoned result refused' USING ERRCODE = 'check_violation'; \
           END IF; \
           IF NEW.result_data ? 'flaky' AND nextval('flaky_faults') <= 3 THEN \
             RAISE EXCEPTION 'injected lock timeout' USING ERRCODE = 'lock_not_available'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_faulty BEFORE UPDATE ON runs FOR EACH ROW \
           EXECUTE FUNCTION refuse_faulty();",
    )
    .await
    .unwrap();
    true
}

async fn refused_outcomes_fail_their_runs_and_transient_ones_are_retried(
    store: Arc<dyn Store>,
    url: String,
) {
    let transient = inject_faults(&url).await;
    let c = Client::from_store(store, OpsConfig::default());
    let mut kinds = vec!["poison", "ok", "ok", "poison", "ok", "ok", "ok", "ok"];
    if transient {
        kinds.extend(["flaky", "flaky"]);
    }
    let ids = c
        .create_tasks(
            kinds
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    NewTask::new(format!("{k} {i}"), "x").payload(serde_json::json!({"kind": k}))
                })
                .collect(),
        )
        .await
        .unwrap();
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        c.worker("classifier")
            .concurrency(4)
            .handle_signals(false)
            .exit_when_idle(true)
            .poll_interval(Duration::from_millis(50))
            .run(move |ctx: TaskContext| {
                seen.lock().unwrap().push(ctx.task.title.clone());
                let kind = ctx.task.payload["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                async move { Ok::<_, TaskError>(serde_json::json!({ kind: true })) }
            }),
    )
    .await
    .expect("the worker drained the queue")
    .expect("a refused outcome does not stop the worker");
    for (id, kind) in ids.iter().zip(&kinds) {
        let t = c.get_task(*id).await.unwrap().unwrap();
        let runs = c.list_runs(*id).await.unwrap();
        assert_eq!(runs.len(), 1, "{kind}: one run, never retried: {runs:?}");
        if *kind == "poison" {
            assert_eq!(t.status, TaskStatus::Failed, "{t:?}");
            assert_eq!(runs[0].status, RunStatus::Failure);
            let error = runs[0].error_message.as_deref().unwrap_or_default();
            assert!(
                error.contains("refused") && error.contains("poisoned result refused"),
                "the run names the database's error: {error}"
            );
        } else {
            assert_eq!(t.status, TaskStatus::Completed, "{kind}: {t:?}");
            assert_eq!(runs[0].status, RunStatus::Success);
        }
    }
    let poisoned = kinds.iter().filter(|k| **k == "poison").count() as u64;
    assert_eq!(report.failed, poisoned, "{report:?}");
    assert_eq!(
        report.completed,
        kinds.len() as u64 - poisoned,
        "{report:?}"
    );
    assert_eq!(
        calls.lock().unwrap().len(),
        kinds.len(),
        "each handler ran once"
    );
}
