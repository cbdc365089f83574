//! The conformance suite every backend runs, fresh test stores for each backend, and the
//! one macro every crate writes its per-backend tests with.
//!
//! [`per_backend!`](crate::per_backend) generates one `#[tokio::test]` per case and
//! backend; each test gets its own store (a fresh SQLite file, a fresh Postgres schema
//! dropped afterwards), so tests run in parallel and leave nothing behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Store;

pub mod dashboard;
pub mod details;
pub mod differential;
pub mod fixtures;
pub mod flow;
pub mod notifications;
pub mod plan_lifecycle;
pub mod plans;
#[cfg(feature = "postgres")]
mod postgres;
pub mod progress;
pub mod retries;
pub mod runs;
pub mod schedules;
pub mod suite;
pub mod workflows;

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

    /// Runs a test body against the store and the URL another connection (a second pool,
    /// a worker process) reaches it by; cleans up even when the body panics.
    pub async fn run_with_url<F, Fut>(self, body: F)
    where
        F: FnOnce(Arc<dyn Store>, String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let url = self.url.clone().unwrap_or_else(|| "memory:".to_owned());
        self.run(|store| body(store, url)).await
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

/// Generates, for each case, one `#[tokio::test]` per backend, in modules named `memory`,
/// `sqlite` and `postgres` (so a filter like `sqlite::` selects one backend; `cargo xtask
/// soak --backend sqlite` relies on it). Every per-backend test in every crate is written
/// with it. Each test opens a fresh store ([`memory`], [`sqlite`], [`postgres`]) and hands
/// it, with the case, to `$run`: [`TestStore::run`] gives the case the `Arc<dyn Store>`,
/// [`TestStore::run_with_url`] adds the URL another connection reaches it by, and a crate
/// may write its own runner (a process harness). With `, $setup` the case receives
/// `$setup(store)` instead (a client built on the store). Cases and setup are named as in
/// the calling module. Without `HIVE_TEST_POSTGRES_URL` the Postgres tests print a
/// `SKIPPED` line.
///
/// ```text
/// hive_store::per_backend!(hive_store::testing::TestStore::run => case_a, case_b);
/// hive_store::per_backend!(TestStore::run, client => case_on_a_client);
/// hive_store::per_backend!([sqlite, postgres], TestStore::run_with_url => case_with_url);
/// ```
#[macro_export]
macro_rules! per_backend {
    ([$($backend:ident),+ $(,)?], $run:path, $setup:path => $($case:ident),+ $(,)?) => {
        $crate::per_backend!(@each [$($backend),+], $run, [$setup], [$($case),+]);
    };
    ([$($backend:ident),+ $(,)?], $run:path => $($case:ident),+ $(,)?) => {
        $crate::per_backend!(@each [$($backend),+], $run, [], [$($case),+]);
    };
    ($run:path, $setup:path => $($case:ident),+ $(,)?) => {
        $crate::per_backend!(@each [memory, sqlite, postgres], $run, [$setup], [$($case),+]);
    };
    ($run:path => $($case:ident),+ $(,)?) => {
        $crate::per_backend!(@each [memory, sqlite, postgres], $run, [], [$($case),+]);
    };
    (@each [$($backend:ident),+], $run:path, $setup:tt, $cases:tt) => {
        $( $crate::per_backend!(@one $backend, $run, $setup, $cases); )+
    };
    (@one $backend:ident, $run:path, $setup:tt, [$($case:ident),+]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    match $crate::testing::$backend().await {
                        Some(ts) => $crate::per_backend!(@call $run, ts, $case, $setup),
                        None => $crate::testing::report_skip(
                            concat!(module_path!(), "::", stringify!($case)),
                        ),
                    }
                }
            )+
        }
    };
    (@call $run:path, $ts:ident, $case:ident, [$setup:path]) => {
        $run($ts, |s| super::$case($setup(s))).await
    };
    (@call $run:path, $ts:ident, $case:ident, []) => {
        $run($ts, super::$case).await
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
