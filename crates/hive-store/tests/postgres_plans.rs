//! Postgres-only checks of how Hive's statements run on the server, which the conformance
//! suite cannot see: the session settings of the store's connections, and how claimers
//! share the locks of concurrency keys.
//!
//! They run against `HIVE_TEST_POSTGRES_URL` (each in a fresh schema) and report a skip
//! when it is unset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hive_store::models::{NewTask, WorkerId};
use hive_store::testing::{self, TestStore};
use hive_store::{Claim, ClaimParams, ConnectOptions, DatabaseUrl, PostgresStore, Store};
use sqlx::{Connection, Executor};

async fn fresh(test: &str) -> Option<TestStore> {
    let ts = testing::postgres().await;
    if ts.is_none() {
        testing::report_skip(test);
    }
    ts
}

fn url(ts: &TestStore) -> String {
    ts.url.clone().expect("postgres test stores have a url")
}

/// The generic plan of a keyed claim's read over a large queue is costed above
/// `jit_above_cost`, and compiling it took about 70 ms of a read that runs in 2: the
/// store's connections run without JIT, unless the URL's `options` set it.
#[tokio::test]
async fn the_stores_connections_run_without_jit_unless_the_url_sets_it() {
    let Some(ts) =
        fresh("postgres_plans::the_stores_connections_run_without_jit_unless_the_url_sets_it")
            .await
    else {
        return;
    };
    let url = url(&ts);
    ts.run(|_| async move {
        let jit = |store: PostgresStore| async move {
            let on: String = sqlx::query_scalar("SHOW jit")
                .fetch_one(store.pool())
                .await
                .unwrap();
            on
        };
        let open = |url: String| async move {
            PostgresStore::connect(&DatabaseUrl::new(url), &ConnectOptions::default())
                .await
                .unwrap()
        };
        assert_eq!(jit(open(url.clone()).await).await, "off");
        let mut own = url::Url::parse(&url).unwrap();
        let options: String = own
            .query_pairs()
            .find(|(k, _)| k == "options")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let kept: Vec<(String, String)> = own
            .query_pairs()
            .filter(|(k, _)| k != "options")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        own.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("options", format!("{options} -c jit=on").trim());
        assert_eq!(jit(open(own.to_string()).await).await, "on");
    })
    .await;
}

/// Claimers of keyed tasks take each key's lock as they read its task, without waiting: a
/// key another claimer holds is passed over (its tasks are that claimer's to admit), so
/// two claimers read disjoint keys instead of the second waiting for the first's commit to
/// find the keys it read taken. A claim that finds every key with room held waits for
/// them rather than leave the tasks to a later poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_passes_over_a_key_another_holds_and_waits_only_when_it_holds_them_all() {
    let Some(ts) = fresh(
        "postgres_plans::a_claim_passes_over_a_key_another_holds_and_waits_only_when_it_holds_them_all",
    )
    .await
    else {
        return;
    };
    let url = url(&ts);
    ts.run(|_| async move {
        let store = Arc::new(
            PostgresStore::connect(&DatabaseUrl::new(url.clone()), &ConnectOptions::default())
                .await
                .unwrap(),
        );
        let keyed = |title: &str, key: &str, priority: i32| NewTask {
            priority,
            concurrency_key: Some(key.into()),
            ..NewTask::new(title, "load")
        };
        store
            .insert_tasks(vec![keyed("a1", "a", 1), keyed("b1", "b", 0)])
            .await
            .unwrap();
        let params = ClaimParams {
            worker_id: WorkerId::parse("w").unwrap(),
            task_types: vec![],
            limit: 2,
            lease: Duration::from_secs(60),
        };
        let titles = |claims: Vec<Claim>| -> Vec<String> {
            claims.into_iter().map(|c| c.task.title).collect()
        };
        // Another claimer's transaction holding key `a`, as it does from its read of
        // `a1` to its commit.
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let key_lock = |verb: &str| {
            format!("SELECT pg_advisory_{verb}(hashtextextended('hive.flow.key:a', 0))")
        };
        other
            .execute(sqlx::AssertSqlSafe(key_lock("lock")))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), store.claim_tasks(&params))
            .await
            .expect("a key another claimer holds is passed over, not waited for")
            .unwrap();
        assert_eq!(titles(got), ["b1"]);
        // Now the only key with room is held: the claim waits for it.
        let waiting = {
            let (store, params) = (store.clone(), params.clone());
            tokio::spawn(async move { store.claim_tasks(&params).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the claim waits for the held key");
        other
            .execute(sqlx::AssertSqlSafe(key_lock("unlock")))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the claim goes on once the key is free")
            .unwrap()
            .unwrap();
        assert_eq!(titles(got), ["a1"]);
        other.close().await.unwrap();
    })
    .await;
}

/// Claims given back before their handlers started leave their rate windows: each run's
/// start is forgotten once, also when many are given back at the same moment. Runs claimed
/// together share a start time, and two transactions forgetting starts of one scope and
/// time chose the same row, so one of them forgot none and the start stayed counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_given_back_at_once_are_each_forgotten() {
    let Some(ts) = fresh("postgres_plans::starts_given_back_at_once_are_each_forgotten").await
    else {
        return;
    };
    let url = url(&ts);
    ts.run(|_| async move {
        let store = Arc::new(
            PostgresStore::connect(
                &DatabaseUrl::new(format!("{url}&max_connections=16")),
                &ConnectOptions::default(),
            )
            .await
            .unwrap(),
        );
        sqlx::query(
            "INSERT INTO flow_rules (kind, name, max_running, rate_max, rate_per_us, paused, \
             updated_at) VALUES ('type', 'mail', NULL, 1000, 3600000000, false, now())",
        )
        .execute(store.pool())
        .await
        .unwrap();
        for round in 0..5 {
            let tasks = (0..32)
                .map(|i| NewTask::new(format!("mail-{round}-{i}"), "mail"))
                .collect();
            store.insert_tasks(tasks).await.unwrap();
            let params = ClaimParams {
                worker_id: WorkerId::parse("w").unwrap(),
                task_types: vec![],
                limit: 32,
                lease: Duration::from_secs(60),
            };
            let claims = store.claim_tasks(&params).await.unwrap();
            assert_eq!(claims.len(), 32);
            let releases: Vec<_> = claims
                .iter()
                .map(|c| {
                    let (store, run) = (store.clone(), c.run.id);
                    tokio::spawn(async move { store.release_unstarted(&[run]).await })
                })
                .collect();
            for r in releases {
                assert_eq!(r.await.unwrap().unwrap().len(), 1);
            }
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM flow_starts")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(
                left, 0,
                "round {round}: every start given back is forgotten"
            );
            sqlx::query("DELETE FROM tasks")
                .execute(store.pool())
                .await
                .unwrap();
        }
    })
    .await;
}
