//! `cargo xtask bench`: throughput and latency of Hive on each backend, next to raw-SQL
//! baselines on the same database kind (see `docs/BENCHMARKS.md` for how to read them).
//!
//! Every scenario runs on a fresh database (a new SQLite file or Postgres schema) so no
//! scenario sees another's rows, and prints one `RESULT` line as soon as it finishes.

mod db;
mod hive;
mod keys;
mod plans;
mod raw;
pub(crate) mod report;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hive_client::models::Scope;
use hive_client::{Client, NewPlan, NewTask};

use db::{Backend, FreshDb, RawPool};
use hive::Until;
use report::{BenchResult, quantile, rate};

/// Handler slots of the flat drains: 2 workers × 32.
const DRAIN_WORKERS: u32 = 2;
const DRAIN_CONCURRENCY: u32 = 32;
/// `plan-wide`: each plan is 1 root → this many parallel subtasks → 1 join.
const WIDE_WIDTH: u64 = 500;
/// `plan-large`: the small plan its per-task rate is compared with, and the layer width.
const LARGE_SMALL: u64 = 1_000;
const LARGE_WIDTH: u64 = 100;
/// `drain-limited`: tasks of the limited type among the drain's.
const LIMITED_TASKS: u64 = 50;
/// `plan-submit`: one plan of this many subtasks, submitted and materialized.
const SUBMIT_SUBTASKS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Memory,
    Sqlite,
    Postgres,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    EnqueueSingle,
    EnqueueBatch,
    Drain,
    /// The drain with a concurrency limit on another type, 50 of whose tasks share the
    /// queue: what limits cost the tasks they do not concern.
    DrainLimited,
    /// One worker at concurrency 8 against raw single-row claims on 8 connections.
    DrainC8,
    /// The flat drain of 200,000 tasks (20,000 with --quick), against the drain's rate.
    DrainLarge,
    /// The drain behind 50,000 tasks (10,000 with --quick) of one serial key, queued first
    /// at a higher priority while the key runs a task: what a busy key's backlog costs the
    /// claims of everything else.
    DrainKeyed,
    /// The drain with every task under a concurrency key of its own kind (2,000 keys, the
    /// drain's tasks spread over them, a key's at most one at a time): what keys cost.
    DrainKeys,
    Latency,
    /// 100 chains of 100 subtasks (20 with --quick).
    PlanChains,
    /// 20 plans of 1 → 500 → 1 (4 with --quick).
    PlanWide,
    /// A 100,000-subtask plan's rate against a 1,000-subtask one's (10,000 with --quick).
    PlanLarge,
    /// Submitting and materializing one plan of 10,000 subtasks.
    PlanSubmit,
    Backlog,
}

impl Scenario {
    fn is_against_drain(self) -> bool {
        matches!(
            self,
            Scenario::PlanChains
                | Scenario::PlanWide
                | Scenario::PlanLarge
                | Scenario::DrainLimited
                | Scenario::DrainLarge
                | Scenario::DrainKeyed
                | Scenario::DrainKeys
        )
    }
}

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which backend(s) to measure.
    #[arg(long, value_enum, default_value = "all")]
    backend: BackendArg,
    /// A tenth of the work (2,000 tasks), for a run under a minute per backend.
    #[arg(long)]
    quick: bool,
    /// Print the results as a JSON array instead of RESULT lines and a table.
    #[arg(long)]
    json: bool,
    /// Only these scenarios (repeatable; all when absent).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// The Postgres server; each scenario gets a schema of its own there, dropped afterwards.
    #[arg(
        long,
        env = "HIVE_BENCH_POSTGRES_URL",
        default_value = "postgres://root@127.0.0.1:5432/test"
    )]
    postgres_url: String,
}

/// How much work each scenario does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    tasks: u64,
    backlog_queued: u64,
    backlog_finished: u64,
    keyed_backlog: u64,
    chain_length: u64,
    wide_plans: u64,
    large: u64,
    large_drain: u64,
    latency_samples: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                tasks: 2_000,
                backlog_queued: 20_000,
                backlog_finished: 10_000,
                keyed_backlog: 10_000,
                chain_length: 20,
                wide_plans: 4,
                large: 10_000,
                large_drain: 20_000,
                latency_samples: 200,
            }
        } else {
            Sizes {
                tasks: 20_000,
                backlog_queued: 200_000,
                backlog_finished: 100_000,
                keyed_backlog: 50_000,
                chain_length: 100,
                wide_plans: 20,
                large: 100_000,
                large_drain: 200_000,
                latency_samples: 1_000,
            }
        }
    }
}

struct Bench {
    args: BenchArgs,
    sizes: Sizes,
    results: Vec<BenchResult>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let sizes = Sizes::new(args.quick);
    let mut bench = Bench {
        args,
        sizes,
        results: Vec::new(),
    };
    runtime.block_on(bench.all())?;
    bench.print();
    Ok(())
}

impl Bench {
    fn wants(&self, s: Scenario) -> bool {
        self.args.scenarios.is_empty() || self.args.scenarios.contains(&s)
    }

    fn record(&mut self, mut r: BenchResult) {
        if r.scenario.starts_with("plan-")
            || ["drain-limited", "drain-large", "drain-keyed", "drain-keys"].contains(&&*r.scenario)
        {
            let flat = self
                .results
                .iter()
                .find(|d| d.scenario == "drain" && d.backend == r.backend)
                .and_then(|d| d.per_s);
            r.ratio_to_drain = report::ratio(r.per_s, flat);
        }
        if !self.args.json {
            println!("{}", r.line());
        }
        self.results.push(r);
    }

    fn print(&self) {
        if self.args.json {
            match serde_json::to_string_pretty(&self.results) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode results: {e}"),
            }
            return;
        }
        println!();
        print!("{}", report::table(&self.results));
        let targets = report::targets(&self.results);
        if !targets.is_empty() {
            println!();
            println!("Targets (informational):");
            for t in targets {
                println!("  {t}");
            }
        }
    }

    async fn all(&mut self) -> Result<()> {
        let backends = match self.args.backend {
            BackendArg::Memory => vec![Backend::Memory],
            BackendArg::Sqlite => vec![Backend::Sqlite],
            BackendArg::Postgres => vec![Backend::Postgres],
            BackendArg::All => vec![Backend::Memory, Backend::Sqlite, Backend::Postgres],
        };
        for b in backends {
            self.backend(b)
                .await
                .with_context(|| format!("benchmarking {}", b.name()))?;
        }
        Ok(())
    }

    async fn fresh(&self, b: Backend) -> Result<(FreshDb, Client)> {
        let db = FreshDb::new(b, &self.args.postgres_url).await?;
        let client = Client::connect(&db.url)
            .await
            .with_context(|| format!("opening a {} store", b.name()))?;
        Ok((db, client))
    }

    /// A fresh database holding only the baselines' `raw_tasks` table; `None` for memory.
    async fn fresh_raw(&self, b: Backend) -> Result<Option<(FreshDb, RawPool)>> {
        if b == Backend::Memory {
            return Ok(None);
        }
        let db = FreshDb::new(b, &self.args.postgres_url).await?;
        let pool = db
            .raw_pool(raw::CONNECTIONS)
            .await?
            .context("a SQL backend has a raw pool")?;
        raw::create_table(&pool).await?;
        Ok(Some((db, pool)))
    }

    async fn backend(&mut self, b: Backend) -> Result<()> {
        let n = self.sizes.tasks;
        if self.wants(Scenario::EnqueueSingle) {
            self.enqueue(b, false, n).await?;
        }
        if self.wants(Scenario::EnqueueBatch) {
            self.enqueue(b, true, n).await?;
        }
        // Plan drains, drain-limited and drain-large are reported against the flat drain of
        // the same run.
        let against_drain = self.args.scenarios.iter().any(|s| s.is_against_drain());
        if self.wants(Scenario::Drain) || against_drain {
            self.drain(b, n, false).await?;
        }
        if self.wants(Scenario::DrainLimited) {
            self.drain(b, n, true).await?;
        }
        if self.wants(Scenario::DrainC8) {
            self.drain_c8(b, n).await?;
        }
        if self.wants(Scenario::DrainLarge) {
            self.drain_large(b).await?;
        }
        if self.wants(Scenario::DrainKeyed) {
            self.drain_keyed(b, n).await?;
        }
        if self.wants(Scenario::DrainKeys) {
            self.drain_keys(b, n).await?;
        }
        if self.wants(Scenario::Latency) {
            self.latency(b).await?;
        }
        if self.wants(Scenario::PlanChains) {
            let plan = plans::chains(100, self.sizes.chain_length);
            self.plan_drain("plan-chains", b, vec![plan]).await?;
        }
        if self.wants(Scenario::PlanWide) {
            let plans = (0..self.sizes.wide_plans)
                .map(|_| plans::wide(WIDE_WIDTH))
                .collect();
            self.plan_drain("plan-wide", b, plans).await?;
        }
        if self.wants(Scenario::PlanLarge) {
            self.plan_large(b).await?;
        }
        if self.wants(Scenario::PlanSubmit) {
            self.plan_submit(b).await?;
        }
        if self.wants(Scenario::Backlog) {
            self.backlog(b).await?;
        }
        Ok(())
    }

    async fn enqueue(&mut self, b: Backend, batched: bool, n: u64) -> Result<()> {
        let name = if batched {
            "enqueue-batch"
        } else {
            "enqueue-single"
        };
        let (db, client) = self.fresh(b).await?;
        let pb = hive::bar(n, format!("{name} {}", b.name()));
        let secs = if batched {
            hive::enqueue_batch(&client, n, &pb).await?
        } else {
            hive::enqueue_single(&client, n, &pb).await?
        };
        pb.finish_and_clear();
        drop(client);
        db.cleanup().await?;
        // Like for like: one at a time against single autocommit INSERTs (batched: 100
        // rows per statement); batches of 1,000 against 1,000 single-row INSERTs in one
        // transaction (batched: one 1,000-row INSERT).
        let (raw, raw_batch) = if batched {
            (
                self.raw_insert(b, n, RawInsert::Transactions(1_000))
                    .await?,
                self.raw_insert(b, n, RawInsert::MultiRow(1_000)).await?,
            )
        } else {
            (
                self.raw_insert(b, n, RawInsert::Single).await?,
                self.raw_insert(b, n, RawInsert::MultiRow(raw::CLAIM_BATCH as u64))
                    .await?,
            )
        };
        self.record(
            BenchResult::throughput(name, b.name(), n, secs).with_baselines(raw, raw_batch),
        );
        Ok(())
    }

    async fn raw_insert(&self, b: Backend, n: u64, how: RawInsert) -> Result<Option<f64>> {
        let Some((db, pool)) = self.fresh_raw(b).await? else {
            return Ok(None);
        };
        let secs = match how {
            RawInsert::Single => raw::insert_single(&pool, n).await?,
            RawInsert::Transactions(k) => raw::insert_in_transactions(&pool, n, k).await?,
            RawInsert::MultiRow(k) => raw::insert_multi_row(&pool, n, k).await?,
        };
        pool.close().await;
        db.cleanup().await?;
        Ok(Some(rate(n, secs)))
    }

    /// The two claim baselines on `n` queued rows: one at a time, and 100 at a time.
    async fn raw_drains(&self, b: Backend, n: u64) -> Result<(Option<f64>, Option<f64>)> {
        let mut out = [None, None];
        for (slot, batched) in out.iter_mut().zip([false, true]) {
            let Some((db, pool)) = self.fresh_raw(b).await? else {
                return Ok((None, None));
            };
            raw::insert_multi_row(&pool, n, 1_000).await?;
            let (secs, done) = if batched {
                raw::drain_batched(&pool).await?
            } else {
                raw::drain_one_by_one(&pool).await?
            };
            raw::expect_drained("raw drain", done, n)?;
            pool.close().await;
            db.cleanup().await?;
            *slot = Some(rate(n, secs));
        }
        Ok((out[0], out[1]))
    }

    /// The flat drain; `limited` adds a concurrency limit of 2 on another type with
    /// [`LIMITED_TASKS`] tasks of it in the queue.
    async fn drain(&mut self, b: Backend, n: u64, limited: bool) -> Result<()> {
        let name = if limited { "drain-limited" } else { "drain" };
        let total = if limited { n + LIMITED_TASKS } else { n };
        let mut runs = Vec::new();
        for _ in 0..repeats(b) {
            runs.push(self.flat_drain_once(name, b, n, limited).await?);
        }
        let secs = median(runs);
        if limited {
            self.record(BenchResult::throughput(name, b.name(), total, secs));
            return Ok(());
        }
        let (raw, raw_batch) = self.raw_drains(b, n).await?;
        self.record(
            BenchResult::throughput(name, b.name(), n, secs).with_baselines(raw, raw_batch),
        );
        Ok(())
    }

    /// One timed run of [`Bench::drain`] on a fresh database; returns its seconds.
    async fn flat_drain_once(&self, name: &str, b: Backend, n: u64, limited: bool) -> Result<f64> {
        let (db, client) = self.fresh(b).await?;
        let total = if limited { n + LIMITED_TASKS } else { n };
        let pb = hive::bar(total, format!("{name} {} (loading)", b.name()));
        hive::load(&client, n, &pb).await?;
        if limited {
            let limits = hive_client::Limits {
                max_running: Some(2),
                rate: None,
            };
            client
                .set_limits(Scope::Type("metered".into()), limits, true)
                .await?;
            let metered = (0..LIMITED_TASKS)
                .map(|i| NewTask::new(format!("metered {i}"), "metered"))
                .collect();
            client.create_tasks(metered).await?;
        }
        pb.set_position(0);
        pb.set_message(format!("{name} {}", b.name()));
        let d = hive::drain(&client, DRAIN_WORKERS, DRAIN_CONCURRENCY, Until::Idle, &pb).await?;
        pb.finish_and_clear();
        if d.handled != total {
            bail!("{name}: handled {} tasks, expected {total}", d.handled);
        }
        drop(client);
        db.cleanup().await?;
        Ok(d.secs)
    }

    /// `n` queued no-op tasks on a fresh database, drained by `workers` × `concurrency`;
    /// returns the seconds the drain took.
    async fn timed_drain(
        &self,
        name: &str,
        b: Backend,
        n: u64,
        workers: u32,
        concurrency: u32,
    ) -> Result<f64> {
        let (db, client) = self.fresh(b).await?;
        let pb = hive::bar(n, format!("{name} {} (loading)", b.name()));
        hive::load(&client, n, &pb).await?;
        pb.set_position(0);
        pb.set_message(format!("{name} {}", b.name()));
        let d = hive::drain(&client, workers, concurrency, Until::Idle, &pb).await?;
        pb.finish_and_clear();
        if d.handled != n {
            bail!("{name}: handled {} tasks, expected {n}", d.handled);
        }
        drop(client);
        db.cleanup().await?;
        Ok(d.secs)
    }

    /// One worker × 8 slots: how far a single small worker gets against 8 raw claimers.
    async fn drain_c8(&mut self, b: Backend, n: u64) -> Result<()> {
        let secs = self.timed_drain("drain-c8", b, n, 1, 8).await?;
        let (raw, _) = self.raw_drains(b, n).await?;
        self.record(
            BenchResult::throughput("drain-c8", b.name(), n, secs).with_baselines(raw, None),
        );
        Ok(())
    }

    /// The flat drain at ten times its size: whether a worker's cost per task grows with
    /// the queue behind it and the finished rows before it.
    async fn drain_large(&mut self, b: Backend) -> Result<()> {
        let n = self.sizes.large_drain;
        let secs = self
            .timed_drain("drain-large", b, n, DRAIN_WORKERS, DRAIN_CONCURRENCY)
            .await?;
        self.record(BenchResult::throughput("drain-large", b.name(), n, secs));
        Ok(())
    }

    async fn latency(&mut self, b: Backend) -> Result<()> {
        let samples = self.sizes.latency_samples;
        let (db, client) = self.fresh(b).await?;
        let pb = hive::bar(samples, format!("latency {}", b.name()));
        let start = std::time::Instant::now();
        let mut ms =
            hive::pickup_latency(&client, samples, DRAIN_WORKERS, DRAIN_CONCURRENCY, &pb).await?;
        let secs = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        drop(client);
        db.cleanup().await?;
        ms.sort_by(f64::total_cmp);
        let mut r = BenchResult::new("latency", b.name(), samples, secs);
        r.p50_ms = Some(quantile(&ms, 0.50));
        r.p99_ms = Some(quantile(&ms, 0.99));
        self.record(r);
        Ok(())
    }

    /// Drains plans on a fresh database `times` times; returns the median's seconds.
    async fn drained(
        &self,
        what: &str,
        b: Backend,
        plans: Vec<NewPlan>,
        times: usize,
    ) -> Result<(u64, f64)> {
        let n: u64 = plans.iter().map(|p| p.subtasks.len() as u64).sum();
        let mut runs = Vec::new();
        for _ in 0..times {
            let (db, client) = self.fresh(b).await?;
            let pb = hive::bar(n, format!("{what} {}", b.name()));
            let d = plans::drain(
                &client,
                plans.clone(),
                DRAIN_WORKERS,
                DRAIN_CONCURRENCY,
                &pb,
            )
            .await?;
            pb.finish_and_clear();
            drop(client);
            db.cleanup().await?;
            runs.push(d.secs);
        }
        Ok((n, median(runs)))
    }

    async fn plan_drain(&mut self, name: &str, b: Backend, plans: Vec<NewPlan>) -> Result<()> {
        let (n, secs) = self.drained(name, b, plans, repeats(b)).await?;
        self.record(BenchResult::throughput(name, b.name(), n, secs));
        Ok(())
    }

    /// The per-task rate of a large plan against a small one of the same shape.
    async fn plan_large(&mut self, b: Backend) -> Result<()> {
        let small = plans::layered(LARGE_SMALL, LARGE_WIDTH);
        let (ns, small_secs) = self
            .drained("plan-large (small)", b, vec![small], large_repeats(b))
            .await?;
        let large = plans::layered(self.sizes.large, LARGE_WIDTH);
        let (n, secs) = self
            .drained("plan-large", b, vec![large], large_repeats(b))
            .await?;
        let mut r = BenchResult::throughput("plan-large", b.name(), n, secs);
        r.ratio_to_small = report::ratio(r.per_s, Some(rate(ns, small_secs)));
        self.record(r);
        Ok(())
    }

    async fn plan_submit(&mut self, b: Backend) -> Result<()> {
        let (db, client) = self.fresh(b).await?;
        let secs = plans::submit(&client, plans::layered(SUBMIT_SUBTASKS, LARGE_WIDTH)).await?;
        drop(client);
        db.cleanup().await?;
        let mut r = BenchResult::new("plan-submit", b.name(), SUBMIT_SUBTASKS, secs);
        r.submit_per_s = Some(rate(SUBMIT_SUBTASKS, secs));
        self.record(r);
        Ok(())
    }

    async fn backlog(&mut self, b: Backend) -> Result<()> {
        let s = self.sizes;
        let (db, client) = self.fresh(b).await?;
        let pb = hive::bar(
            s.backlog_finished + s.backlog_queued,
            format!("backlog {} (loading)", b.name()),
        );
        hive::load(&client, s.backlog_finished, &pb).await?;
        match db.raw_pool(1).await? {
            // Real rows in the real schema, finished by one UPDATE instead of 100,000
            // claim/finish round trips; the claim path's queries see them exactly as
            // they would see tasks finished by workers (minus their runs rows).
            Some(pool) => {
                let done = pool
                    .execute("UPDATE tasks SET status = 'completed', attempts = 1 WHERE status = 'queued'")
                    .await?;
                if done != s.backlog_finished {
                    bail!(
                        "backlog: finished {done} rows, expected {}",
                        s.backlog_finished
                    );
                }
                hive::load(&client, s.backlog_queued, &pb).await?;
                if b == Backend::Postgres {
                    // What autovacuum would have done by the time such a backlog exists:
                    // no dead index entries from the fixture's mass update, fresh stats.
                    pool.execute("VACUUM ANALYZE tasks").await?;
                }
                pool.close().await;
            }
            // Memory has no SQL: finish them through the workers, untimed.
            None => {
                let d = hive::drain(
                    &client,
                    DRAIN_WORKERS,
                    DRAIN_CONCURRENCY,
                    Until::Idle,
                    &hive::bar(0, String::new()),
                )
                .await?;
                if d.handled != s.backlog_finished {
                    bail!(
                        "backlog: finished {}, expected {}",
                        d.handled,
                        s.backlog_finished
                    );
                }
                hive::load(&client, s.backlog_queued, &pb).await?;
            }
        }
        pb.finish_and_clear();
        let pb = hive::bar(s.tasks, format!("backlog {}", b.name()));
        let d = hive::drain(
            &client,
            DRAIN_WORKERS,
            DRAIN_CONCURRENCY,
            Until::Handled(s.tasks),
            &pb,
        )
        .await?;
        pb.finish_and_clear();
        drop(client);
        db.cleanup().await?;
        self.record(BenchResult::throughput(
            "backlog",
            b.name(),
            s.tasks,
            d.secs,
        ));
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum RawInsert {
    Single,
    Transactions(u64),
    MultiRow(u64),
}

/// Timed runs of the drain and the two plan shapes, whose rates make the plans' ratios:
/// memory's runs take a tenth of a second, where one run moved its ratios by ±0.15 (the
/// scheduler, the allocator), so it reports the median of five; a database's take about a
/// second, where one run moved SQLite's plan-chains ratio between 0.58 and 0.77 on one
/// machine in a day, so the median of three.
fn repeats(b: Backend) -> usize {
    if b == Backend::Memory { 5 } else { 3 }
}

/// Timed runs of each half of `plan-large`: as [`repeats`] on memory; once on a database,
/// where the large half alone drains for 5–20 s and its ratio is steady.
fn large_repeats(b: Backend) -> usize {
    if b == Backend::Memory { repeats(b) } else { 1 }
}

/// The median of `runs` (nearest rank); 0 for none.
fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    quantile(&runs, 0.5)
}
