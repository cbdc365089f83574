//! The Hive side of each scenario, through the public client and the real worker runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hive_client::{Client, NewTask, TaskContext, TaskError, TaskId};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Notify, mpsc};

/// Rows per `create_tasks` call, for the batch scenario and for loading fixtures.
pub const BATCH: usize = 1_000;
/// Long enough that no lease expires during a run, so the reaper never interferes.
const LEASE: Duration = Duration::from_secs(120);

/// A progress bar on stderr; indicatif draws nothing when stderr is not a terminal.
pub fn bar(len: u64, msg: String) -> ProgressBar {
    let pb = ProgressBar::new(len).with_message(msg);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:32} [{elapsed_precise}] {wide_bar} {pos}/{len}")
    {
        pb.set_style(style);
    }
    pb
}

fn noop_task(i: u64) -> NewTask {
    NewTask::new(format!("bench {i}"), "bench")
}

/// `n` tasks, one `create_task` call each. Returns the seconds taken.
pub async fn enqueue_single(client: &Client, n: u64, pb: &ProgressBar) -> Result<f64> {
    let start = Instant::now();
    for i in 0..n {
        client.create_task(noop_task(i)).await?;
        pb.inc(1);
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `n` tasks through `create_tasks`, [`BATCH`] at a time. Returns the seconds taken.
pub async fn enqueue_batch(client: &Client, n: u64, pb: &ProgressBar) -> Result<f64> {
    let start = Instant::now();
    let mut next = 0;
    while next < n {
        let k = (n - next).min(BATCH as u64);
        let tasks = (next..next + k).map(noop_task).collect();
        client.create_tasks(tasks).await?;
        next += k;
        pb.inc(k);
    }
    Ok(start.elapsed().as_secs_f64())
}

/// What a drain measured.
#[derive(Debug, Clone, Copy)]
pub struct Drained {
    pub secs: f64,
    pub handled: u64,
}

/// How a drain ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Workers exit by themselves once nothing is left (`exit_when_idle`).
    Idle,
    /// The clock stops when this many handler calls have run; then workers are shut down.
    Handled(u64),
}

/// Runs `workers` workers of `concurrency` slots with a no-op handler on one shared client
/// (one process, as an app would deploy them), and times them until `until`.
pub async fn drain(
    client: &Client,
    workers: u32,
    concurrency: u32,
    until: Until,
    pb: &ProgressBar,
) -> Result<Drained> {
    let handled = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(Notify::new());
    let target = match until {
        Until::Idle => u64::MAX,
        Until::Handled(k) => k,
    };
    let mut handles = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let start = Instant::now();
    for w in 0..workers {
        let builder = client
            .worker(format!("bench-{w}"))
            .concurrency(concurrency)
            .lease(LEASE)
            .exit_when_idle(matches!(until, Until::Idle))
            .handle_signals(false);
        handles.push(builder.shutdown_handle());
        let handled = handled.clone();
        let reached = reached.clone();
        running.spawn(builder.run(move |_ctx: TaskContext| {
            let handled = handled.clone();
            let reached = reached.clone();
            async move {
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == target {
                    // notify_one keeps a permit, so the waiter cannot miss it.
                    reached.notify_one();
                }
                Ok::<(), TaskError>(())
            }
        }));
    }
    // The handler only counts; the bar follows the counter so drawing never slows it.
    let ticker = {
        let handled = handled.clone();
        let pb = pb.clone();
        tokio::spawn(async move {
            loop {
                pb.set_position(handled.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let secs = match until {
        Until::Idle => {
            while let Some(joined) = running.join_next().await {
                joined.context("worker task")??;
            }
            start.elapsed().as_secs_f64()
        }
        Until::Handled(_) => {
            tokio::select! {
                _ = reached.notified() => {}
                Some(joined) = running.join_next() => {
                    joined.context("worker task")??;
                    bail!("a worker stopped before the target was reached");
                }
            }
            let secs = start.elapsed().as_secs_f64();
            for h in &handles {
                h.shutdown();
            }
            while let Some(joined) = running.join_next().await {
                joined.context("worker task")??;
            }
            secs
        }
    };
    ticker.abort();
    pb.set_position(handled.load(Ordering::Relaxed));
    Ok(Drained {
        secs,
        handled: handled.load(Ordering::Relaxed),
    })
}

/// Queues `n` tasks untimed, [`BATCH`] per call.
pub async fn load(client: &Client, n: u64, pb: &ProgressBar) -> Result<()> {
    enqueue_batch(client, n, pb).await.map(|_| ())
}

/// Pickup latency: with idle workers waiting, creates one task at a time and measures from
/// `create_task` returning to its handler starting. Returns the samples in milliseconds.
pub async fn pickup_latency(
    client: &Client,
    samples: u64,
    workers: u32,
    concurrency: u32,
    pb: &ProgressBar,
) -> Result<Vec<f64>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(TaskId, Instant)>();
    let mut handles = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    for w in 0..workers {
        let builder = client
            .worker(format!("bench-latency-{w}"))
            .concurrency(concurrency)
            .lease(LEASE)
            .handle_signals(false);
        handles.push(builder.shutdown_handle());
        let tx = tx.clone();
        running.spawn(builder.run(move |ctx: TaskContext| {
            // Stamped before anything else the handler does.
            let at = Instant::now();
            let _ = tx.send((ctx.task.id, at));
            async move { Ok::<(), TaskError>(()) }
        }));
    }
    drop(tx);
    // Let the workers register and go idle, then warm connections and caches with a few
    // unmeasured round trips.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        one_pickup(client, &mut rx, i).await?;
    }
    let mut out = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        out.push(one_pickup(client, &mut rx, i).await?);
        pb.inc(1);
    }
    for h in &handles {
        h.shutdown();
    }
    while let Some(joined) = running.join_next().await {
        joined.context("worker task")??;
    }
    Ok(out)
}

async fn one_pickup(
    client: &Client,
    rx: &mut mpsc::UnboundedReceiver<(TaskId, Instant)>,
    i: u64,
) -> Result<f64> {
    let id = client.create_task(noop_task(i)).await?;
    let created = Instant::now();
    loop {
        let (got, started) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("no worker picked the task up within 30 s")?
            .context("all workers stopped")?;
        if got == id {
            // A handler may start before create_task has returned to the caller (the
            // wake-up fires at commit); that counts as zero latency.
            return Ok(started.saturating_duration_since(created).as_secs_f64() * 1e3);
        }
    }
}
