//! A synchronous facade over [`crate::Client`], for callers without an async runtime
//! (feature `blocking`), in the manner of reqwest's `blocking` module.
//!
//! ```no_run
//! # fn demo() -> Result<(), hive_client::Error> {
//! let client = hive_client::blocking::Client::connect("sqlite:hive.db")?;
//! let id = client.create_task(hive_client::NewTask::new("Deploy", "deployment"))?;
//! assert!(client.get_task(id)?.is_some());
//! let queued = client.get_queued_tasks(None, Some("deployment"))?; // the original's 10 at most
//! # let _ = queued;
//! # Ok(())
//! # }
//! ```
//!
//! Every operation of the async client has a blocking method of the same name and
//! arguments ([`ops`](self) declares each once; a test checks that the two lists match,
//! so an operation added to one cannot be forgotten in the other). The exceptions, each
//! for a reason: `subscribe` (events are received with `.await`) and the worker runtime
//! (`worker`), which needs a runtime of its own; [`Client::block_on`] runs those.
//!
//! It owns a small Tokio runtime. Called from inside an async context (where blocking a
//! runtime thread on another runtime would panic), a call blocks the caller's thread until
//! it ends, as any blocking call there does: on a multi-threaded runtime after handing the
//! thread's other tasks to another (`block_in_place`), on a single-threaded one from a
//! thread of its own. Use the async [`crate::Client`] in async code.

use std::future::Future;
use std::sync::Arc;

use hive_ops::OpsConfig;
use hive_store::ConnectOptions;

use crate::{ConnectRetry, Result};

mod ops;

/// The blocking client. Cheap to clone; clones share the runtime and the pool.
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
    runtime: Arc<Owned>,
}

/// The facade's runtime, shut down without waiting when the last clone goes: dropping a
/// runtime waits for its threads, which panics where blocking is not allowed (the last
/// clone dropped in async code, say a struct holding it dropped by a task).
#[derive(Debug)]
struct Owned(Option<tokio::runtime::Runtime>);

impl Owned {
    fn get(&self) -> &tokio::runtime::Runtime {
        // Taken only by `drop`.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The original SDK's name for the client, here blocking.
pub type OrchestrationClient = Client;

/// [`Client::from_env`], the original SDK's entry point.
pub fn get_client() -> Result<Client> {
    Client::from_env()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("hive-blocking")
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Runtime(e.to_string()))
}

impl Client {
    /// Starts the runtime and connects on it.
    fn start<Fut>(connect: Fut) -> Result<Client>
    where
        Fut: Future<Output = Result<crate::Client>> + Send,
    {
        // Owned at once: a failed connect drops it, and it must not wait for its threads
        // (a plain runtime dropped in async code panics).
        let runtime = Owned(Some(runtime()?));
        let inner = on_thread_if_async(|| runtime.get().block_on(connect))?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// See [`crate::Client::connect`]: opens `memory:`, `sqlite:PATH` or `postgres://…`,
    /// applying migrations.
    pub fn connect(url: &str) -> Result<Client> {
        Self::start(crate::Client::connect(url))
    }

    /// See [`crate::Client::connect_with`].
    pub fn connect_with(url: &str, options: &ConnectOptions, config: OpsConfig) -> Result<Client> {
        Self::start(crate::Client::connect_with(url, options, config))
    }

    /// See [`crate::Client::connect_with_retry`]: waits for a database that cannot be
    /// reached yet.
    pub fn connect_with_retry(url: &str, retry: &ConnectRetry) -> Result<Client> {
        Self::start(crate::Client::connect_with_retry(url, retry))
    }

    /// See [`crate::Client::from_env`]: `HIVE_DATABASE_URL`, else `sqlite:hive.db`.
    pub fn from_env() -> Result<Client> {
        Self::start(crate::Client::from_env())
    }

    /// Runs any async call of the async client to completion, for what this facade does
    /// not wrap: `client.block_on(|c| c.subscribe())`.
    pub fn block_on<'a, F, Fut>(&'a self, f: F) -> Fut::Output
    where
        F: FnOnce(&'a crate::Client) -> Fut + Send,
        Fut: Future + 'a,
        Fut::Output: Send,
    {
        let (runtime, inner) = (self.runtime.get(), &self.inner);
        on_thread_if_async(move || runtime.block_on(f(inner)))
    }

    /// The async client this facade drives.
    pub fn async_client(&self) -> &crate::Client {
        &self.inner
    }

    /// [`crate::Client::close`]: ends the connections before the process exits.
    pub fn close(&self) {
        self.block_on(|c| c.close());
    }
}

/// Runs `call`, which blocks on the facade's runtime, where blocking is allowed: here on a
/// plain thread; inside a multi-threaded runtime (the facade's own included, say a handler
/// of a worker it runs) after handing this thread's other tasks to another thread
/// (`block_in_place`); inside a single-threaded one, on a thread of its own (its only
/// thread cannot hand its tasks off, and blocking it on another runtime would panic).
fn on_thread_if_async<T: Send>(call: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => call(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        Ok(_) => std::thread::scope(|s| match s.spawn(call).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

#[cfg(test)]
mod tests;
