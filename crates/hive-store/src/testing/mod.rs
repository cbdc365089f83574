//! The conformance suite every backend runs, and fresh test stores for each backend.
//!
//! [`conformance_suite!`](crate::conformance_suite) generates one `#[tokio::test]` per suite
//! case for a backend; each test gets its own store (a fresh SQLite file, a fresh Postgres
//! schema dropped afterwards), so tests run in parallel and leave nothing behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Store;

pub mod differential;
#[cfg(feature = "postgres")]
mod postgres;
pub mod suite;

/// The environment variable naming the Postgres server tests run against.
pub const POSTGRES_URL_ENV: &str = "HIVE_TEST_POSTGRES_URL";

type Cleanup = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store for one test, and what must be dropped after it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    cleanup: Option<Cleanup>,
    /// Keeps a temporary directory (SQLite file) alive for the test's duration.
    _dir: Option<tempfile::TempDir>,
    /// The URL other connections (a second process, a second pool) use to reach this store.
    pub url: Option<String>,
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl TestStore {
    pub fn new(store: Arc<dyn Store>) -> Self {
        TestStore {
            store,
            cleanup: None,
            _dir: None,
            url: None,
        }
    }

    pub fn with_cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }

    pub fn with_dir(mut self, dir: tempfile::TempDir) -> Self {
        self._dir = Some(dir);
        self
    }

    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Runs a test body against the store, then cleans up even when the body panics.
    pub async fn run<F, Fut>(mut self, body: F)
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = ()>,
    {
        use futures::FutureExt;
        let outcome = std::panic::AssertUnwindSafe(body(self.store.clone()))
            .catch_unwind()
            .await;
        drop(self.store);
        if let Some(c) = self.cleanup.take() {
            c.await;
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A fresh in-memory store.
pub async fn memory() -> Option<TestStore> {
    Some(TestStore::new(Arc::new(crate::MemoryStore::new())))
}

/// A fresh SQLite file in its own temporary directory.
#[cfg(feature = "sqlite")]
pub async fn sqlite() -> Option<TestStore> {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = format!("sqlite:{}", dir.path().join("hive.db").display());
    let store = crate::connect_with(&url, &crate::ConnectOptions::default())
        .await
        .expect("open a fresh SQLite store");
    Some(TestStore::new(store).with_dir(dir).with_url(url))
}

/// A store in a fresh Postgres schema, dropped after the test; `None` (with a message on
/// stderr) when `HIVE_TEST_POSTGRES_URL` is unset. Panics when it is set but the server
/// cannot be reached: CI must fail, not skip.
#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<TestStore> {
    postgres::fresh().await
}

/// The environment variable `cargo xtask soak` sets to run the reliability tests at full
/// size.
pub const SOAK_ENV: &str = "HIVE_SOAK";

/// Whether this is a soak run (`cargo xtask soak`) rather than the default `cargo test`.
pub fn soak() -> bool {
    std::env::var_os(SOAK_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// A test size: `reduced` in the default `cargo test` run, `full` under `cargo xtask soak`.
pub fn size(reduced: usize, full: usize) -> usize {
    if soak() { full } else { reduced }
}

/// Says plainly that a Postgres test did not run.
pub fn report_skip(test: &str) {
    eprintln!("SKIPPED {test}: {POSTGRES_URL_ENV} is not set, so the Postgres tests did not run");
}

/// Generates one `#[tokio::test]` per conformance case for a backend:
/// `conformance_suite!(sqlite, hive_store::testing::sqlite);`
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $factory:path) => {
        $crate::conformance_suite!(@cases $backend, $factory,
            insert_and_get_round_trip, strings_stored_verbatim, queue_order_priority_then_age,
            idempotency_key_returns_first_id, list_filters, count_tasks_per_status,
            set_status_follows_transition_table, set_status_unknown_task_is_none,
            requeue_from_terminal, metadata_merges, delete_cascades_runs, prune_in_batches,
            claim_opens_run_and_respects_types, delayed_task_not_claimable_early,
            finish_success_and_stale_run_rejected, failure_retries_with_backoff_then_fails,
            failure_without_retry_fails_at_once, extend_lease_and_fencing,
            release_runs_does_not_count_attempt, reap_expired_lease, heartbeat_extends_leases,
            workers_register_list_unregister, plan_materialize_idempotent,
            plan_dependencies_gate_claims, plan_failure_cancels_descendants, plan_cancel,
            plan_transition_compare_and_set, dependencies_met_batch, notifications_after_commit,
            concurrent_claims_exactly_once, not_found_paths,
            plan_finishes_cancelled_when_all_subtasks_finish,
            finish_and_claim_refills_in_one_step,
            freed_dependents_are_announced_unless_claimed);
    };
    (@cases $backend:ident, $factory:path, $($case:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    match $factory().await {
                        Some(ts) => ts.run($crate::testing::suite::$case).await,
                        None => $crate::testing::report_skip(concat!(stringify!($backend), "::", stringify!($case))),
                    }
                }
            )+
        }
    };
}

/// A small tmpfs mounted for one test, for filling a disk for real; unmounted (lazily, so a
/// file still open cannot keep it) when dropped, also when the test fails. Mounting needs
/// root, which CI has: elsewhere [`Tmpfs::mount`] says the test did not run and returns
/// `None`.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB on a fresh temporary directory.
    pub fn mount(test: &str, kib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("create a mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            _ => {
                eprintln!("SKIPPED {test}: mounting a tmpfs needs root (CI runs as root)");
                None
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the filesystem in place; files on it stay.
    pub fn resize(&self, kib: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remounting the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
