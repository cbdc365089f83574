//! Prometheus metrics for Hive: the queue's gauges, read from the store on each scrape
//! (a grouped count, the active workers, the schedules), and run counters and durations,
//! counted from the event bus.
//!
//! Every name starts with `hive_` and says its unit; labels are bounded (task type,
//! status, schedule name, work kind), never a task id. [`Metrics::watch`] counts what the bus carries (every
//! process's runs; [`Metrics::watch_with`] and [`Counting::ThisProcess`] this process's);
//! [`Metrics::scrape`] refreshes the gauges and renders the text format; [`router`] and
//! [`serve`] expose `GET /metrics`, for the dashboard and for an app running workers
//! without it (`hive worker run --metrics-bind`), and [`health_router`] a worker's
//! liveness and readiness probes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = hive_client::Client::connect("sqlite:hive.db").await?;
//! let metrics = hive_metrics::Metrics::new()?;
//! metrics.watch(client.clone()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! hive_metrics::serve(listener, client, metrics).await?;
//! # Ok(())
//! # }
//! ```

mod health;
mod schedules;
mod watch;

pub use health::health_router;
pub use watch::Counting;

use std::sync::{Arc, OnceLock};

use hive_client::Client;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// What can go wrong building, refreshing or serving the metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
    #[error("reading the store for metrics: {0}")]
    Store(#[from] hive_client::ops::Error),
    #[error("serving metrics: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The run counters fed from the event bus.
#[derive(Debug, Clone)]
pub(crate) struct RunCounters {
    pub started: IntCounter,
    pub completed: IntCounter,
    pub failed: IntCounter,
    pub timed_out: IntCounter,
    pub stale: IntCounter,
    pub given_back: IntCounter,
    pub duration: HistogramVec,
    /// Events the counters never saw: a burst larger than the event bus holds.
    pub missed: IntCounter,
}

/// One registry with every Hive metric. Cheap to clone (it is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    tasks: IntGaugeVec,
    oldest_ready: GaugeVec,
    workers_alive: IntGauge,
    store_up: IntGauge,
    schedules: schedules::ScheduleGauges,
    pub(crate) runs: RunCounters,
    /// One scrape at a time: a refresh resets the gauges before setting them.
    scraping: Arc<tokio::sync::Mutex<()>>,
    /// Held while a closed run moves its histogram and its counter, and while the registry
    /// is gathered: the registry collects metrics in no fixed order, so without it a
    /// scrape could read the counters after a run's count and the histogram before it.
    pub(crate) counting: Arc<std::sync::Mutex<()>>,
}

impl Metrics {
    pub fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let tasks = IntGaugeVec::new(
            Opts::new("hive_tasks", "Tasks per status and type."),
            &["status", "task_type"],
        )?;
        let oldest_ready = GaugeVec::new(
            Opts::new(
                "hive_oldest_ready_task_age_seconds",
                "How long the longest-waiting ready task of each type has been claimable.",
            ),
            &["task_type"],
        )?;
        let workers_alive = IntGauge::new("hive_workers_alive", "Workers registered as active.")?;
        let store_up = IntGauge::new(
            "hive_store_up",
            "1 when this scrape read the database's gauges, 0 when it did not answer in time \
             (those gauges then stand as last read).",
        )?;
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        let runs = RunCounters {
            started: counter("hive_runs_started_total", "Runs opened by a claim.")?,
            completed: counter("hive_runs_completed_total", "Runs that succeeded.")?,
            failed: counter(
                "hive_runs_failed_total",
                "Runs that failed (retried or for good), not counting timeouts or stale runs.",
            )?,
            timed_out: counter(
                "hive_runs_timed_out_total",
                "Runs whose handler overran its timeout.",
            )?,
            stale: counter(
                "hive_runs_stale_total",
                "Runs the reaper closed because their lease expired (the worker went silent).",
            )?,
            given_back: counter(
                "hive_runs_given_back_total",
                "Runs given back to the queue, their attempt not counted: released by a \
                 stopping worker, or given back by one cut off from the store for longer \
                 than its lease.",
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "hive_run_duration_seconds",
                    "How long finished runs took, from claim to outcome, per task type.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    1800.0,
                ]),
                &["task_type"],
            )?,
            missed: counter(
                "hive_events_missed_total",
                "Events the run counters missed by falling behind the event bus (a burst \
                 larger than it holds): the run counters are short by about this many.",
            )?,
        };
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(oldest_ready.clone()))?;
        registry.register(Box::new(workers_alive.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        for c in [
            &runs.started,
            &runs.completed,
            &runs.failed,
            &runs.timed_out,
            &runs.stale,
            &runs.given_back,
            &runs.missed,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(runs.duration.clone()))?;
        let schedules = schedules::ScheduleGauges::new(&registry)?;
        Ok(Metrics {
            registry,
            tasks,
            oldest_ready,
            workers_alive,
            store_up,
            schedules,
            runs,
            scraping: Arc::default(),
            counting: Arc::default(),
        })
    }

    /// Reads the gauges from the store (one grouped count, the ready index, the active
    /// workers, the schedules with their last runs) and renders every metric in the
    /// Prometheus text format. A database that fails or does not answer within
    /// [`STORE_READ_WITHIN`] (a scraper gives up after 10 s by default) leaves those gauges
    /// as they were and sets `hive_store_up` to 0: the run counters, kept in this process,
    /// are still worth the scrape, and a gap in them would break every `rate()`.
    pub async fn scrape(&self, client: &Client) -> Result<String> {
        let _one = self.scraping.lock().await;
        match tokio::time::timeout(STORE_READ_WITHIN, self.read_gauges(client)).await {
            Ok(Ok(())) => self.store_up.set(1),
            Ok(Err(e)) => {
                // The driver's text (naming the database) goes to the log only.
                tracing::warn!("metrics: the database's gauges were not read: {e}");
                self.store_up.set(0);
            }
            Err(_) => {
                tracing::warn!(
                    "metrics: the database did not answer within {STORE_READ_WITHIN:?}; its \
                     gauges stand as last read"
                );
                self.store_up.set(0);
            }
        }
        self.render()
    }

    async fn read_gauges(&self, client: &Client) -> Result<()> {
        let stats = client.queue_stats(None).await?;
        let workers = client.get_active_workers(None).await?;
        self.tasks.reset();
        for c in &stats.counts {
            self.tasks
                .with_label_values(&[c.status.as_str(), c.task_type.as_str()])
                .set(i64::try_from(c.count).unwrap_or(i64::MAX));
        }
        self.oldest_ready.reset();
        for o in &stats.oldest_ready {
            let age = (stats.now - o.since).num_milliseconds().max(0) as f64 / 1000.0;
            self.oldest_ready
                .with_label_values(&[o.task_type.as_str()])
                .set(age);
        }
        self.workers_alive
            .set(i64::try_from(workers.len()).unwrap_or(i64::MAX));
        // The queue's gauges and the run counters are worth a scrape without the schedules.
        match client.list_schedule_views().await {
            Ok(views) => self.schedules.set(&views),
            Err(e) => tracing::warn!(error = %e, "schedule gauges not refreshed"),
        }
        Ok(())
    }

    /// Every metric as it stands, in the Prometheus text format.
    pub fn render(&self) -> Result<String> {
        let families = {
            let _still = self.counting.lock().unwrap_or_else(|e| e.into_inner());
            self.registry.gather()
        };
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// How long a scrape waits for the database's gauges.
pub const STORE_READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /metrics` over `client` (the gauges are refreshed on each request).
pub fn router(client: Client, metrics: Metrics) -> axum::Router {
    let source = Source::default();
    source.set(client, metrics);
    router_for(source)
}

/// What `/metrics` reads, once there is a client: a process binds its endpoints before
/// its database answers (an orchestrator probes it meanwhile), and until [`Source::set`]
/// `/metrics` answers 503.
#[derive(Debug, Clone, Default)]
pub struct Source(Arc<OnceLock<(Client, Metrics)>>);

impl Source {
    /// From now on `/metrics` scrapes `client` into `metrics`; a second call changes
    /// nothing.
    pub fn set(&self, client: Client, metrics: Metrics) {
        let _ = self.0.set((client, metrics));
    }

    /// Has `metrics` count runs as `counting` says ([`Metrics::watch_with`]), then serves
    /// them. Tried once before returning, so the runs that follow are counted; failing
    /// (no connection slot free on the server, say), tried again in the background under
    /// backoff, so a process is never stopped for its metrics, and `/metrics` answers 503
    /// until it follows.
    pub async fn watch(&self, client: Client, metrics: Metrics, counting: Counting) {
        match metrics.watch_with(client.clone(), counting).await {
            Ok(()) => self.set(client, metrics),
            Err(e) => {
                tracing::warn!("metrics cannot follow the runs yet ({e}); trying again");
                self.watch_in_background(client, metrics, counting);
            }
        }
    }

    /// [`Source::watch`], every try in the background.
    pub fn watch_in_background(&self, client: Client, metrics: Metrics, counting: Counting) {
        let source = self.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_millis(500);
            loop {
                match metrics.watch_with(client.clone(), counting).await {
                    Ok(()) => return source.set(client, metrics),
                    Err(e) => {
                        tracing::warn!(
                            "metrics cannot follow the runs yet ({e}); trying again in {wait:?}"
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(30));
                    }
                }
            }
        });
    }
}

/// `GET /metrics` over what `source` has, or 503 while it has nothing yet.
pub fn router_for(source: Source) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let source = source.clone();
            async move {
                let Some((client, metrics)) = source.0.get() else {
                    let says = "metrics unavailable: waiting for the database";
                    return (StatusCode::SERVICE_UNAVAILABLE, says).into_response();
                };
                match metrics.scrape(client).await {
                    Ok(text) => (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    // The error's text (the driver's, naming the database) goes to the log,
                    // not to whoever scrapes.
                    Err(e) => {
                        tracing::warn!("metrics scrape failed: {e}");
                        let says = "metrics unavailable: the database did not answer (see the log)";
                        (StatusCode::SERVICE_UNAVAILABLE, says).into_response()
                    }
                }
            }
        }),
    )
}

/// Serves [`router`] on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    client: Client,
    metrics: Metrics,
) -> Result<()> {
    serve_router(listener, router(client, metrics)).await
}

/// Serves `router` (say [`router`] merged with [`health_router`]) on `listener` until the
/// process ends.
pub async fn serve_router(listener: tokio::net::TcpListener, router: axum::Router) -> Result<()> {
    axum::serve(listener, router).await?;
    Ok(())
}
