//! The facade works, and wraps every operation of the async client.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hive_models::{NewTask, TaskStatus};

use super::{Client, ops};

#[test]
fn blocking_round_trip_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::connect(&format!("sqlite:{}", dir.path().join("b.db").display())).unwrap();
    let id = client.create_task(NewTask::new("t", "x")).unwrap();
    assert_eq!(client.get_queued_tasks(None, None).unwrap()[0].id, id);
    assert!(client.cancel_task(id, Some("changed my mind")).unwrap());
    let task = client.get_task(id).unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert_eq!(task.last_error.as_deref(), Some("changed my mind"));
    assert!(client.register_worker("w", "r", vec![]).unwrap());
    assert!(client.heartbeat("w", None).unwrap());
    assert_eq!(client.get_available_workers(Some("r")).unwrap().len(), 1);
    assert!(client.list_plans(None, None).unwrap().is_empty());
    let e = client
        .check_dependencies(hive_models::TaskId::new())
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

/// The last clone of a blocking client, dropped in async code (a struct holding it dropped
/// by a task), shuts its runtime down without waiting instead of panicking.
#[tokio::test]
async fn the_last_clone_dropped_in_async_code_does_not_panic() {
    let client = std::thread::spawn(|| Client::connect("memory:").unwrap())
        .join()
        .unwrap();
    let clone = client.clone();
    drop(client);
    drop(clone);
}

/// From a blocking thread of a tokio runtime (`spawn_blocking`), where the async client's
/// users call it from async code, the facade works.
#[tokio::test]
async fn it_works_from_spawn_blocking() {
    let found = tokio::task::spawn_blocking(|| {
        let client = Client::connect("memory:").unwrap();
        let id = client
            .create_task(hive_models::NewTask::new("t", "x"))
            .unwrap();
        client.get_task(id).unwrap().is_some()
    })
    .await
    .unwrap();
    assert!(found);
}

/// Called straight from async code (a mistake the type system does not catch), the facade
/// works instead of panicking: on the caller's only runtime thread, and on one of many.
#[tokio::test]
async fn it_works_when_called_from_async_code() {
    let client = Client::connect("memory:").unwrap();
    let id = client.create_task(NewTask::new("t", "x")).unwrap();
    assert!(client.get_task(id).unwrap().is_some());
    let changes = client.block_on(|c| c.subscribe()).unwrap();
    drop(changes);
    client.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_works_when_called_from_a_multi_threaded_runtime() {
    let found = tokio::spawn(async {
        let client = Client::connect("memory:").unwrap();
        let id = client.create_task(NewTask::new("t", "x")).unwrap();
        client.get_task(id).unwrap().is_some()
    })
    .await
    .unwrap();
    assert!(found);
}

/// A connect that fails, called from async code, returns its error: the runtime it started
/// is let go without waiting for its threads (which panics there).
#[tokio::test]
async fn a_failed_connect_from_async_code_returns_its_error() {
    let e = Client::connect("nosuch://x").unwrap_err();
    assert!(e.to_string().contains("nosuch"), "{e}");
}

/// A task on the facade's own runtime (a handler of a worker it runs, say) calling the
/// blocking client neither panics nor blocks the runtime it needs.
#[test]
fn a_task_on_the_facades_own_runtime_can_call_it() {
    let client = Client::connect("memory:").unwrap();
    let same = client.clone();
    let found = client
        .block_on(|_| async move {
            tokio::spawn(async move {
                let id = same.create_task(NewTask::new("t", "x")).unwrap();
                same.get_task(id).unwrap().is_some()
            })
            .await
        })
        .unwrap();
    assert!(found);
}

/// Async operations deliberately without a blocking method, each with the reason.
const NOT_WRAPPED: &[(&str, &str)] = &[(
    "subscribe",
    "events are received with `.await`; `block_on` gives a blocking caller a subscription",
)];

/// The constructors, written by hand (they start the facade's runtime).
const CONSTRUCTORS: &[&str] = &["connect", "connect_with", "connect_with_retry", "from_env"];

/// Other methods written by hand: `close` returns nothing, so `blocking!` cannot declare it.
const BY_HAND: &[&str] = &["close"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The names of the `pub async fn`s inside the `impl` blocks of `target` (`Ops<S>` or
/// `Client`, not trait impls) in one rustfmt-formatted source file.
fn async_methods(source: &str, target: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in source.lines() {
        if line.starts_with("impl") && !line.contains(" for ") {
            inside = line.trim_end().ends_with(&format!("{target} {{"));
        } else if line == "}" {
            inside = false;
        } else if inside && let Some(rest) = line.trim_start().strip_prefix("pub async fn ") {
            let name = rest.split(['(', '<']).next().unwrap_or_default();
            names.push(name.to_owned());
        }
    }
    names
}

/// Every operation of the async client: its own methods and those of the `Ops` it
/// dereferences to, read from the sources of hive-client and hive-ops.
fn async_operations() -> BTreeSet<String> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names = BTreeSet::new();
    for (dir, target) in [
        (here.join("../hive-ops/src"), "Ops<S>"),
        (here.join("src"), "Client"),
    ] {
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            names.extend(async_methods(&source, target));
        }
    }
    names
}

#[test]
fn the_facade_wraps_every_operation_of_the_async_client() {
    // The methods named in CONSTRUCTORS and BY_HAND exist (this does not compile otherwise).
    let _by_hand = (
        Client::connect,
        Client::connect_with,
        Client::connect_with_retry,
        Client::from_env,
        Client::close,
    );
    let operations = async_operations();
    // A parser that found nothing would make the comparison below pass for nothing.
    assert!(operations.len() > 50, "found only {operations:?}");
    assert!(operations.contains("create_task") && operations.contains("get_plan_status"));
    let expected: BTreeSet<String> = operations
        .into_iter()
        .filter(|op| !NOT_WRAPPED.iter().any(|(name, _)| name == op))
        .collect();
    let wrapped: BTreeSet<String> = ops::WRAPPED
        .iter()
        .chain(CONSTRUCTORS)
        .chain(BY_HAND)
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(
        wrapped.len(),
        ops::WRAPPED.len() + CONSTRUCTORS.len() + BY_HAND.len(),
        "a name is declared twice"
    );
    let missing: Vec<_> = expected.difference(&wrapped).collect();
    let extra: Vec<_> = wrapped.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "blocking facade out of step with the async client: missing {missing:?}, \
         not an async operation {extra:?} (add it to blocking/ops.rs, or to NOT_WRAPPED \
         with the reason)"
    );
}

#[test]
fn the_method_parser_reads_impl_blocks_only() {
    let source = "impl<S: Store + ?Sized> Ops<S> {\n    pub async fn a(&self) {}\n    \
                  async fn private(&self) {}\n    pub async fn generic<T>(&self) {}\n}\n\
                  impl Clone for Ops<S> {\n    pub async fn not_this(&self) {}\n}\n\
                  pub async fn free() {}\n";
    assert_eq!(async_methods(source, "Ops<S>"), ["a", "generic"]);
}
