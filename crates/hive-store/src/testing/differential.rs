//! The state-machine property test: random sequences of store operations applied to the
//! reference [`crate::MemoryStore`] and to another backend, which must agree on every
//! result and on the whole observable state after every step.
//!
//! Each store mints its own ids (UUIDv7) and timestamps, so both are taken out before
//! comparing: ids become names given in creation order (`t3` for the fourth plain task,
//! `p1.n2` for subtask `n2` of the second plan, `t3#2` for its second run), timestamps
//! become "set" or "unset". Lists whose order the [`Store`] contract leaves open (cancelled
//! dependents, reaped, released and unregistered tasks) are sorted; ordered ones (queue
//! order, claims, finish reports, plans newest first) are compared as they come. With
//! SQLite the in-process notifications of each step are compared too.
//!
//! Each case gets fresh stores (a new SQLite file, a new Postgres schema), so a shrunk
//! sequence replays from nothing. `HIVE_DIFF_TRACE=1` prints every step and its result.
//!
//! [`agrees_with_memory`] drives it with proptest, so a failure shrinks to a minimal
//! sequence of [`Op`]s, printed with the first divergence; [`compare`] replays a given
//! sequence (a regression test for a shrunk failure).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hive_models::{
    ExecutionPlan, Json, NewPlan, NewTask, PlanId, PlanStatus, RetryPolicy, RunId, SubTask, TaskId,
    TaskStatus, WorkerId, WorkerStatus,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::json;
use tokio::sync::broadcast;

use crate::{
    Backend, Claim, ClaimParams, Error, FinishReport, Finished, Notification, Outcome, PruneParams,
    ReapParams, RunOutcome, StatusChange, Store, TaskFilter, WorkerFilter, WorkerRegistration,
    WorkerStatusChange,
};

use super::TestStore;

/// Task types in generated operations; claims may ask for one of them.
const TASK_TYPES: [&str; 2] = ["alpha", "beta"];
/// Worker ids in generated operations: few, so claims, heartbeats and unregistering meet.
const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
/// Idempotency keys: few, so repeats happen.
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// A lease no step outlives, and one that has expired by the next step.
const LONG_LEASE: Duration = Duration::from_secs(600);
const EXPIRED_LEASE: Duration = Duration::ZERO;

/// Names an existing task, run or plan: the `n mod count`-th in creation order. Small
/// numbers, so a shrunk sequence reads (and replays) easily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick(pub usize);

impl Pick {
    /// The position this pick names among `len` items; `len` must not be 0.
    pub fn of(self, len: usize) -> usize {
        self.0 % len
    }
}

fn pick() -> impl Strategy<Value = Pick> {
    (0..16usize).prop_map(Pick)
}

/// When a new task may first be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    None,
    /// `run_at` an hour ago: claimable.
    Past,
    /// `run_at` in an hour: not claimable during the test.
    Future,
}

/// One task of an [`Op::Insert`] batch.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub task_type: usize,
    pub priority: i32,
    pub delay: Delay,
    pub key: Option<usize>,
    pub max_retries: u32,
}

/// Which run an operation names: one that is running now, or any run ever opened (often
/// stale, to exercise fencing).
#[derive(Debug, Clone, Copy)]
pub enum RunPick {
    Running(Pick),
    Any(Pick),
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Success,
    FailureRetry,
    FailureFinal,
}

/// One node of a generated plan; dependencies point to earlier nodes only (a valid DAG).
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub depends_on: Vec<Pick>,
    pub task_type: usize,
    pub priority: i32,
    pub max_retries: u32,
}

/// Whose claim, of which type, how many, under which lease.
#[derive(Debug, Clone, Copy)]
pub struct ClaimSpec {
    pub worker: usize,
    pub task_type: Option<usize>,
    pub limit: u32,
    pub expired_lease: bool,
}

impl ClaimSpec {
    fn params(&self) -> ClaimParams {
        ClaimParams {
            worker_id: worker_id(self.worker),
            task_types: self
                .task_type
                .map(|t| vec![TASK_TYPES[t].to_owned()])
                .unwrap_or_default(),
            limit: self.limit,
            lease: if self.expired_lease {
                EXPIRED_LEASE
            } else {
                LONG_LEASE
            },
        }
    }
}

/// One store operation, naming tasks, runs and plans by index into what exists so far.
#[derive(Debug, Clone)]
pub enum Op {
    Insert(Vec<TaskSpec>),
    Claim(ClaimSpec),
    Finish(Vec<(RunPick, End)>),
    /// Finishes runs and claims in one call, as the worker runtime does.
    FinishAndClaim(Vec<(RunPick, End)>, ClaimSpec),
    ExtendLease {
        run: RunPick,
        expired_lease: bool,
    },
    Release(Vec<RunPick>),
    SetStatus {
        task: Pick,
        status: TaskStatus,
        metadata: Option<u8>,
        requeue: bool,
    },
    Delete(Pick),
    Prune {
        statuses: Vec<TaskStatus>,
        limit: u32,
    },
    Reap {
        limit: u32,
    },
    Register {
        worker: usize,
        role: usize,
        capabilities: Vec<usize>,
    },
    Heartbeat {
        worker: usize,
        status: Option<WorkerStatus>,
    },
    Unregister(usize),
    /// Inserts a plan, and materializes it at once when `materialize`.
    InsertPlan {
        nodes: Vec<NodeSpec>,
        materialize: bool,
    },
    Materialize(Pick),
    CancelPlan(Pick),
    /// Retries a failed or cancelled plan (`Store::retry_plan`).
    RetryPlan(Pick),
    /// Deletes every finished plan whose tasks are all finished (the order among them,
    /// by when each was last updated, is not compared: it is all of them).
    PrunePlans,
    /// Requeues every task of a plan, so its failures can cascade again.
    RequeuePlan(Pick),
    TransitionPlan {
        plan: Pick,
        from: PlanStatus,
        to: PlanStatus,
    },
    /// Read-only queries whose answers depend on the whole state.
    ListTasks {
        status: Option<TaskStatus>,
        task_type: Option<usize>,
        plan: Option<Pick>,
        ready_only: bool,
        limit: Option<u32>,
    },
    DependenciesMet(Vec<Pick>),
    ListPlans {
        status: Option<PlanStatus>,
        limit: Option<u32>,
    },
    ListWorkers {
        role: Option<usize>,
        alive: bool,
    },
}

fn task_status() -> impl Strategy<Value = TaskStatus> {
    proptest::sample::select(TaskStatus::ALL)
}

fn plan_status() -> impl Strategy<Value = PlanStatus> {
    proptest::sample::select(PlanStatus::ALL)
}

fn live_plan_status() -> impl Strategy<Value = PlanStatus> {
    proptest::sample::select(vec![PlanStatus::Pending, PlanStatus::InProgress])
}

fn run_pick() -> impl Strategy<Value = RunPick> {
    prop_oneof![
        4 => pick().prop_map(RunPick::Running),
        1 => pick().prop_map(RunPick::Any),
    ]
}

fn task_spec() -> impl Strategy<Value = TaskSpec> {
    (
        0..TASK_TYPES.len(),
        -1..3i32,
        prop_oneof![6 => Just(Delay::None), 1 => Just(Delay::Past), 1 => Just(Delay::Future)],
        prop::option::weighted(0.3, 0..KEYS.len()),
        0..3u32,
    )
        .prop_map(|(task_type, priority, delay, key, max_retries)| TaskSpec {
            task_type,
            priority,
            delay,
            key,
            max_retries,
        })
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        prop::collection::vec(pick(), 0..3),
        0..TASK_TYPES.len(),
        0..3i32,
        0..2u32,
    )
        .prop_map(|(depends_on, task_type, priority, max_retries)| NodeSpec {
            depends_on,
            task_type,
            priority,
            max_retries,
        })
}

fn claim_spec(limit: std::ops::Range<u32>) -> impl Strategy<Value = ClaimSpec> {
    (
        0..WORKERS.len(),
        prop::option::weighted(0.3, 0..TASK_TYPES.len()),
        limit,
        prop::bool::weighted(0.25),
    )
        .prop_map(|(worker, task_type, limit, expired_lease)| ClaimSpec {
            worker,
            task_type,
            limit,
            expired_lease,
        })
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        3 => Just(End::Success),
        2 => Just(End::FailureRetry),
        1 => Just(End::FailureFinal),
    ]
}

/// One random operation, weighted towards the ones that move tasks along.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(task_spec(), 1..5).prop_map(Op::Insert),
        6 => claim_spec(1..4).prop_map(Op::Claim),
        6 => prop::collection::vec((run_pick(), end()), 1..4).prop_map(Op::Finish),
        4 => (prop::collection::vec((run_pick(), end()), 0..4), claim_spec(0..4))
            .prop_map(|(picks, claim)| Op::FinishAndClaim(picks, claim)),
        1 => (run_pick(), any::<bool>()).prop_map(|(run, expired_lease)| Op::ExtendLease { run, expired_lease }),
        1 => prop::collection::vec(run_pick(), 1..3).prop_map(Op::Release),
        3 => (pick(), task_status(), prop::option::weighted(0.3, any::<u8>()), any::<bool>())
            .prop_map(|(task, status, metadata, requeue)| Op::SetStatus { task, status, metadata, requeue }),
        1 => pick().prop_map(Op::Delete),
        1 => (prop::collection::vec(task_status(), 1..3), 1..4u32)
            .prop_map(|(statuses, limit)| Op::Prune { statuses, limit }),
        3 => (1..4u32).prop_map(|limit| Op::Reap { limit }),
        1 => (0..WORKERS.len(), 0..2usize, prop::collection::vec(0..TASK_TYPES.len(), 0..3))
            .prop_map(|(worker, role, capabilities)| Op::Register { worker, role, capabilities }),
        1 => (0..WORKERS.len(), prop::option::of(proptest::sample::select(WorkerStatus::ALL)))
            .prop_map(|(worker, status)| Op::Heartbeat { worker, status }),
        1 => (0..WORKERS.len()).prop_map(Op::Unregister),
        4 => (prop::collection::vec(node_spec(), 1..6), prop::bool::weighted(0.8))
            .prop_map(|(nodes, materialize)| Op::InsertPlan { nodes, materialize }),
        1 => pick().prop_map(Op::Materialize),
        1 => pick().prop_map(Op::CancelPlan),
        1 => pick().prop_map(Op::RetryPlan),
        1 => Just(Op::PrunePlans),
        1 => pick().prop_map(Op::RequeuePlan),
        // Out of a status a plan can still leave: moving a finished plan back (which no
        // operation does) leaves its status disagreeing with its counters, and Postgres's
        // reaper settles such a plan (it may be one a crash left between commit and settle),
        // which the other backends, never in that state, have no reason to.
        1 => (pick(), live_plan_status(), plan_status())
            .prop_map(|(plan, from, to)| Op::TransitionPlan { plan, from, to }),
        1 => (prop::option::of(task_status()), prop::option::of(0..TASK_TYPES.len()),
              prop::option::of(pick()), any::<bool>(), prop::option::of(1..5u32))
            .prop_map(|(status, task_type, plan, ready_only, limit)| Op::ListTasks { status, task_type, plan, ready_only, limit }),
        1 => prop::collection::vec(pick(), 1..4).prop_map(Op::DependenciesMet),
        1 => (prop::option::of(plan_status()), prop::option::of(1..3u32))
            .prop_map(|(status, limit)| Op::ListPlans { status, limit }),
        1 => (prop::option::of(0..2usize), any::<bool>()).prop_map(|(role, alive)| Op::ListWorkers { role, alive }),
    ]
}

/// A sequence of up to `max` operations.
pub fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=max.max(1))
}

/// How many random sequences to run, and how long each may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub cases: u32,
    pub max_ops: usize,
}

impl Budget {
    /// Small in the default `cargo test` run, larger under `cargo xtask soak`. A Postgres
    /// case costs a fresh schema, so it gets fewer.
    pub fn for_backend(backend: Backend) -> Budget {
        let cases = match backend {
            Backend::Postgres => super::size(12, 200),
            _ => super::size(32, 400),
        };
        Budget {
            cases: u32::try_from(cases).unwrap_or(u32::MAX),
            max_ops: super::size(60, 100),
        }
    }
}

/// Where two stores stopped agreeing.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The step (index into the sequence), or `None` for the initial state.
    pub step: Option<usize>,
    pub what: String,
    pub reference: String,
    pub other: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Some(i) => write!(f, "step {i}: {} differs", self.what)?,
            None => write!(f, "{} differs before any step", self.what)?,
        }
        write!(
            f,
            "\n  memory: {}\n  other:  {}",
            self.reference, self.other
        )?;
        let at = self
            .reference
            .char_indices()
            .zip(self.other.chars())
            .find(|((_, x), y)| x != y)
            .map(|((i, _), _)| i);
        if let Some(at) = at {
            let window = |s: &str| -> String {
                let start = s.floor_char_boundary(at.saturating_sub(60));
                let end = s.ceil_char_boundary((at + 60).min(s.len()));
                s[start..end].to_owned()
            };
            write!(
                f,
                "\n  first difference:\n  memory: …{}…\n  other:  …{}…",
                window(&self.reference),
                window(&self.other)
            )?;
        }
        Ok(())
    }
}

/// Runs `budget.cases` random operation sequences, each on a fresh [`crate::MemoryStore`]
/// and a fresh store from `factory`, and panics with the shrunk minimal sequence when they
/// disagree. Reports a skip when `factory` gives no store (Postgres without its URL).
/// Builds its own runtime: call it from a plain `#[test]`, not `#[tokio::test]`.
pub fn agrees_with_memory<F, Fut>(test: &str, factory: F, budget: Budget)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<TestStore>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    // Probe once so a missing Postgres URL is one SKIPPED line, not a failure per case.
    match runtime.block_on(factory()) {
        Some(probe) => runtime.block_on(probe.run(|_| async {})),
        None => {
            super::report_skip(test);
            return;
        }
    }
    let config = Config {
        cases: budget.cases,
        // Shrinking replays sequences on fresh stores; bound it so a failure reports soon.
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&ops(budget.max_ops), |ops| {
        runtime.block_on(async {
            let Some(ts) = factory().await else {
                return Err(TestCaseError::fail(
                    "the store factory stopped giving stores",
                ));
            };
            let mut outcome = Ok(());
            let slot = &mut outcome;
            let ops = &ops;
            ts.run(|store| async move {
                *slot = compare(ops, Arc::new(crate::MemoryStore::new()), store).await;
            })
            .await;
            outcome.map_err(|d| TestCaseError::fail(d.to_string()))
        })
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => {
            let listing: Vec<String> = ops
                .iter()
                .enumerate()
                .map(|(i, op)| format!("  {i}: {op:?}"))
                .collect();
            panic!(
                "{test}: the stores disagree after this minimal sequence of {} operations:\n{}\n{reason}",
                ops.len(),
                listing.join("\n")
            );
        }
        Err(TestError::Abort(reason)) => panic!("{test}: aborted: {reason}"),
    }
}

/// Applies `ops` to both stores, comparing every result and the observable state after
/// every step; the first difference is returned.
pub async fn compare(
    ops: &[Op],
    reference: Arc<dyn Store>,
    other: Arc<dyn Store>,
) -> Result<(), Divergence> {
    // Postgres delivers notifications through LISTEN, after its own delay: comparing them
    // step by step only works between stores that notify in-process at commit.
    let notifications = other.backend() != Backend::Postgres;
    let mut a = Side::new(reference, notifications).await;
    let mut b = Side::new(other, notifications).await;
    agree(None, "state", a.snapshot().await, b.snapshot().await)?;
    // HIVE_DIFF_TRACE=1 prints each step and its result, to see what a run exercises.
    let trace = std::env::var_os("HIVE_DIFF_TRACE").is_some();
    for (i, op) in ops.iter().enumerate() {
        let ra = a.apply(op).await;
        let rb = b.apply(op).await;
        if trace {
            eprintln!("{i}: {op:?}\n   => {ra}");
        }
        agree(Some(i), "result", ra, rb)?;
        agree(Some(i), "notifications", a.notes(), b.notes())?;
        agree(Some(i), "state", a.snapshot().await, b.snapshot().await)?;
    }
    Ok(())
}

fn agree(step: Option<usize>, what: &str, a: String, b: String) -> Result<(), Divergence> {
    if a == b {
        return Ok(());
    }
    // Point at the first differing line of long snapshots (and a few after it) rather than
    // printing both whole.
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let first = (0..la.len().max(lb.len()))
        .find(|i| la.get(*i) != lb.get(*i))
        .unwrap_or(0);
    let excerpt = |lines: &[&str]| {
        lines
            .iter()
            .skip(first)
            .take(4)
            .copied()
            .collect::<Vec<_>>()
            .join("\n          ")
    };
    Err(Divergence {
        step,
        what: what.to_owned(),
        reference: excerpt(&la),
        other: excerpt(&lb),
    })
}

/// One store under test, with the names given to the ids it minted.
struct Side {
    store: Arc<dyn Store>,
    /// Task ids in creation order, with their names.
    tasks: Vec<(TaskId, String)>,
    plans: Vec<(PlanId, String)>,
    runs: Vec<(RunId, String)>,
    /// Every id (as text) → its name, for normalizing whatever mentions ids.
    names: HashMap<String, String>,
    /// Runs that were running at the last snapshot, by name.
    running: Vec<RunId>,
    plain_tasks: usize,
    rx: Option<broadcast::Receiver<Notification>>,
}

impl Side {
    async fn new(store: Arc<dyn Store>, notifications: bool) -> Side {
        let rx = if notifications {
            store.subscribe().await.ok()
        } else {
            None
        };
        Side {
            store,
            tasks: Vec::new(),
            plans: Vec::new(),
            runs: Vec::new(),
            names: HashMap::new(),
            running: Vec::new(),
            plain_tasks: 0,
            rx,
        }
    }

    fn name_task(&mut self, id: TaskId, name: String) {
        self.names.insert(id.to_string(), name.clone());
        self.tasks.push((id, name));
    }

    fn name_run(&mut self, id: RunId, name: String) {
        if self.names.insert(id.to_string(), name.clone()).is_none() {
            self.runs.push((id, name));
        }
    }

    fn task(&self, i: Pick) -> Option<TaskId> {
        (!self.tasks.is_empty()).then(|| self.tasks[i.of(self.tasks.len())].0)
    }

    fn plan(&self, i: Pick) -> Option<PlanId> {
        (!self.plans.is_empty()).then(|| self.plans[i.of(self.plans.len())].0)
    }

    /// The picked run; a running pick falls back to any run when none is running.
    fn run(&self, pick: RunPick) -> Option<RunId> {
        let all = || self.runs.iter().map(|(r, _)| *r).collect::<Vec<_>>();
        let (list, i) = match pick {
            RunPick::Running(i) if !self.running.is_empty() => (self.running.clone(), i),
            RunPick::Running(i) | RunPick::Any(i) => (all(), i),
        };
        (!list.is_empty()).then(|| list[i.of(list.len())])
    }

    /// Text with every known id replaced by its name.
    /// [`Self::text`] of each id.
    fn texts<I: ToString>(&self, ids: impl Iterator<Item = I>) -> Vec<String> {
        ids.map(|id| self.text(&id.to_string())).collect()
    }

    fn text(&self, s: &str) -> String {
        let mut out = s.to_owned();
        if out.contains('-') {
            for (id, name) in &self.names {
                if out.contains(id.as_str()) {
                    out = out.replace(id.as_str(), name);
                }
            }
        }
        out
    }

    /// A JSON value with ids replaced by names and timestamps by whether they are set.
    fn normalize(&self, v: &Json) -> Json {
        const TIMES: [&str; 9] = [
            "created_at",
            "updated_at",
            "started_at",
            "completed_at",
            "lease_expires_at",
            "last_heartbeat",
            "registered_at",
            "run_at",
            "due_date",
        ];
        match v {
            Json::String(s) => Json::String(self.text(s)),
            Json::Array(a) => Json::Array(a.iter().map(|x| self.normalize(x)).collect()),
            Json::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, x)| {
                        let x = if TIMES.contains(&k.as_str()) {
                            Json::from(if x.is_null() { "unset" } else { "set" })
                        } else {
                            self.normalize(x)
                        };
                        (self.text(k), x)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn show<T: serde::Serialize>(&self, v: &T) -> String {
        let v = serde_json::to_value(v).unwrap_or_else(|e| json!(format!("unserializable: {e}")));
        self.normalize(&v).to_string()
    }

    fn error(&self, e: &Error) -> String {
        format!("error: {}", self.text(&e.to_string()))
    }

    fn sorted_names<I: IntoIterator<Item = T>, T: ToString>(&self, ids: I) -> Vec<String> {
        let mut v: Vec<String> = ids.into_iter().map(|i| self.text(&i.to_string())).collect();
        v.sort();
        v
    }

    /// The notifications since the last call, normalized and sorted (the order within one
    /// transaction is not part of the contract).
    fn notes(&mut self) -> String {
        let Some(rx) = self.rx.as_mut() else {
            return String::new();
        };
        let mut raw = Vec::new();
        while let Ok(n) = rx.try_recv() {
            raw.push(n);
        }
        let mut notes: Vec<String> = raw
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(n).unwrap_or(Json::Null);
                if let Some(o) = v.as_object_mut() {
                    o.remove("origin");
                }
                self.normalize(&v).to_string()
            })
            .collect();
        notes.sort();
        notes.join("\n")
    }

    /// Everything a caller can observe, one line per row, with ids as names.
    async fn snapshot(&mut self) -> String {
        let s = self.store.clone();
        let mut out = Vec::new();
        let tasks = match s.list_tasks(&TaskFilter::default()).await {
            Ok(t) => t,
            Err(e) => return self.error(&e),
        };
        self.running.clear();
        for t in &tasks {
            out.push(format!("task {}", self.show(t)));
            match s.list_runs(t.id).await {
                Ok(runs) => {
                    for r in runs {
                        if r.is_running() {
                            self.running.push(r.id);
                        }
                        out.push(format!("  run {}", self.show(&r)));
                    }
                }
                Err(e) => out.push(self.error(&e)),
            }
        }
        // Give the running runs a stable order for picks: by name.
        let mut running: Vec<(String, RunId)> = self
            .running
            .iter()
            .map(|r| (self.text(&r.to_string()), *r))
            .collect();
        running.sort();
        self.running = running.into_iter().map(|(_, r)| r).collect();
        match s.count_tasks(None).await {
            Ok(c) => out.push(format!("counts {c:?}")),
            Err(e) => out.push(self.error(&e)),
        }
        match s.list_plans(None, None).await {
            Ok(plans) => {
                for p in plans {
                    out.push(format!("plan {}", self.show(&p)));
                    match s.count_tasks(Some(p.id)).await {
                        Ok(c) => out.push(format!("  counts {c:?}")),
                        Err(e) => out.push(self.error(&e)),
                    }
                }
            }
            Err(e) => out.push(self.error(&e)),
        }
        match s.list_workers(&WorkerFilter::default()).await {
            Ok(workers) => out.extend(workers.iter().map(|w| format!("worker {}", self.show(w)))),
            Err(e) => out.push(self.error(&e)),
        }
        out.join("\n")
    }

    /// Applies one operation and describes its result with names.
    async fn apply(&mut self, op: &Op) -> String {
        let s = self.store.clone();
        match op {
            Op::Insert(specs) => {
                let tasks: Vec<NewTask> = specs
                    .iter()
                    .enumerate()
                    .map(|(k, spec)| self.new_task(spec, self.plain_tasks + k))
                    .collect();
                match s.insert_tasks(tasks).await {
                    Ok(ids) => {
                        for id in &ids {
                            if !self.names.contains_key(&id.to_string()) {
                                let name = format!("t{}", self.plain_tasks);
                                self.plain_tasks += 1;
                                self.name_task(*id, name);
                            }
                        }
                        format!("inserted {:?}", self.names_of(&ids))
                    }
                    Err(e) => self.error(&e),
                }
            }
            Op::Claim(claim) => match s.claim_tasks(&claim.params()).await {
                Ok(claims) => format!("claimed {:#?}", self.show_claims(&claims).await),
                Err(e) => self.error(&e),
            },
            Op::Finish(picks) => {
                let outcomes = self.outcomes(picks);
                match s.finish_runs(&outcomes).await {
                    Ok(reports) => format!("finished {:#?}", self.show_reports(&reports)),
                    Err(e) => self.error(&e),
                }
            }
            Op::FinishAndClaim(picks, claim) => {
                let outcomes = self.outcomes(picks);
                match s.finish_and_claim(&outcomes, &claim.params()).await {
                    Ok((reports, claims)) => format!(
                        "finished {:#?} claimed {:#?}",
                        self.show_reports(&reports),
                        self.show_claims(&claims).await
                    ),
                    Err(e) => self.error(&e),
                }
            }
            Op::ExtendLease { run, expired_lease } => {
                let Some(run_id) = self.run(*run) else {
                    return "no run".into();
                };
                let lease = if *expired_lease {
                    EXPIRED_LEASE
                } else {
                    LONG_LEASE
                };
                match s.extend_lease(run_id, lease).await {
                    Ok(_) => "extended".into(),
                    Err(e) => self.error(&e),
                }
            }
            Op::Release(picks) => {
                let ids: Vec<RunId> = picks.iter().filter_map(|p| self.run(*p)).collect();
                match s.release_runs(&ids).await {
                    Ok(tasks) => format!("released {:?}", self.sorted_names(&tasks)),
                    Err(e) => self.error(&e),
                }
            }
            Op::SetStatus {
                task,
                status,
                metadata,
                requeue,
            } => {
                let Some(id) = self.task(*task) else {
                    return "no task".into();
                };
                let change = StatusChange {
                    status: *status,
                    metadata: metadata.map(|m| json!({ format!("k{}", m % 4): m })),
                    requeue: *requeue,
                    // Every other change with metadata also gives a reason.
                    reason: metadata
                        .filter(|m| m % 2 == 0)
                        .map(|m| format!("reason {m}")),
                };
                match s.set_task_status(id, change).await {
                    Ok(Some(ch)) => format!(
                        "changed from {} to {} cancelled={:?} plan={}",
                        ch.previous,
                        self.show(&ch.task),
                        self.sorted_names(&ch.cancelled_dependents),
                        self.text(&format!(
                            "{:?}",
                            ch.plan_transition.map(|(p, st)| (p.to_string(), st))
                        )),
                    ),
                    Ok(None) => "unknown task".into(),
                    Err(e) => self.error(&e),
                }
            }
            Op::Delete(task) => {
                let Some(id) = self.task(*task) else {
                    return "no task".into();
                };
                match s.delete_task(id).await {
                    Ok(deleted) => format!("deleted {deleted}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::Prune { statuses, limit } => {
                let params = PruneParams {
                    older_than: Duration::ZERO,
                    statuses: statuses.clone(),
                    limit: *limit,
                };
                match s.prune_tasks(&params).await {
                    Ok(n) => format!("pruned {n}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::Reap { limit } => {
                let params = ReapParams {
                    // Long enough that no worker goes offline by the clock during a test.
                    heartbeat_timeout: Duration::from_secs(3600),
                    retry: RetryPolicy::IMMEDIATE,
                    limit: *limit,
                };
                match s.reap(&params).await {
                    Ok(r) => format!(
                        "reaped requeued={:?} failed={:?} offline={:?} plans={:?}",
                        self.sorted_names(r.requeued.iter().map(|(t, r)| format!("{t} {r}"))),
                        self.sorted_names(&r.failed),
                        r.offline_workers,
                        self.sorted_names(
                            r.plan_transitions.iter().map(|(p, st)| format!("{p} {st}"))
                        ),
                    ),
                    Err(e) => self.error(&e),
                }
            }
            Op::Register {
                worker,
                role,
                capabilities,
            } => {
                let registration = WorkerRegistration {
                    id: worker_id(*worker),
                    role: format!("role{role}"),
                    capabilities: capabilities
                        .iter()
                        .map(|c| TASK_TYPES[*c].to_owned())
                        .collect(),
                    metadata: json!({ "registered_as": role }),
                };
                match s.register_worker(&registration).await {
                    Ok(w) => format!("registered {}", self.show(&w)),
                    Err(e) => self.error(&e),
                }
            }
            Op::Heartbeat { worker, status } => {
                // An `error` comes with the reason for it; other statuses clear it.
                let change = status.map(|st| WorkerStatusChange {
                    status: st,
                    reason: (st == WorkerStatus::Error).then(|| format!("{st} on {worker}")),
                });
                match s.heartbeat(&worker_id(*worker), change).await {
                    Ok(r) => format!("heartbeat {r:?}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::Unregister(worker) => match s.unregister_worker(&worker_id(*worker)).await {
                Ok(r) => format!(
                    "unregistered {:?}",
                    r.map(|tasks| self.sorted_names(&tasks))
                ),
                Err(e) => self.error(&e),
            },
            Op::InsertPlan { nodes, materialize } => {
                let k = self.plans.len();
                let plan = new_plan(k, nodes);
                // Materialized at once means submitted: stored and materialized in one step.
                let stored = if *materialize {
                    s.submit_plan(plan).await.map(|(id, n)| (id, Some(n)))
                } else {
                    s.insert_plan(plan).await.map(|id| (id, None))
                };
                let (id, created) = match stored {
                    Ok(stored) => stored,
                    Err(e) => return self.error(&e),
                };
                let name = format!("p{k}");
                self.names.insert(id.to_string(), name.clone());
                self.plans.push((id, name));
                match created {
                    Some(n) => self.name_plan_tasks(id, Some(n)).await,
                    None => "inserted plan".into(),
                }
            }
            Op::Materialize(plan) => match self.plan(*plan) {
                Some(id) => self.materialize(id).await,
                None => "no plan".into(),
            },
            Op::CancelPlan(plan) => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                match s.cancel_plan(id).await {
                    Ok(r) => format!("cancelled {:?}", r.map(|tasks| self.sorted_names(&tasks))),
                    Err(e) => self.error(&e),
                }
            }
            Op::RetryPlan(plan) => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                match s.retry_plan(id).await {
                    Ok(r) => format!("retried {:?}", r.map(|tasks| self.sorted_names(&tasks))),
                    Err(e) => self.error(&e),
                }
            }
            Op::PrunePlans => {
                let params = crate::PlanPruneParams {
                    older_than: Duration::ZERO,
                    statuses: vec![
                        PlanStatus::Completed,
                        PlanStatus::Failed,
                        PlanStatus::Cancelled,
                    ],
                    limit: 1000,
                };
                match s.prune_plans(&params).await {
                    Ok(n) => format!("pruned {n:?}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::RequeuePlan(plan) => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                let plan_name = self.text(&id.to_string());
                let prefix = format!("{plan_name}.");
                let mut tasks: Vec<(String, TaskId)> = self
                    .tasks
                    .iter()
                    .filter(|(_, n)| n.starts_with(&prefix))
                    .map(|(t, n)| (n.clone(), *t))
                    .collect();
                tasks.sort();
                let mut out = Vec::new();
                for (name, task) in tasks {
                    let change = StatusChange::requeue();
                    out.push(match s.set_task_status(task, change).await {
                        Ok(Some(ch)) => format!(
                            "{name}: {} -> queued, pending {}",
                            ch.previous, ch.task.pending_dependencies
                        ),
                        Ok(None) => format!("{name}: unknown"),
                        Err(e) => format!("{name}: {}", self.error(&e)),
                    });
                }
                format!("requeued plan {out:#?}")
            }
            Op::TransitionPlan { plan, from, to } => {
                let Some(id) = self.plan(*plan) else {
                    return "no plan".into();
                };
                match s.transition_plan(id, *from, *to).await {
                    Ok(changed) => format!("transitioned {changed}"),
                    Err(e) => self.error(&e),
                }
            }
            Op::ListTasks {
                status,
                task_type,
                plan,
                ready_only,
                limit,
            } => {
                let filter = TaskFilter {
                    status: *status,
                    task_type: task_type.map(|t| TASK_TYPES[t].to_owned()),
                    plan_id: plan.and_then(|p| self.plan(p)),
                    ready_only: *ready_only,
                    updated_not_after: None,
                    depending_on: None,
                    limit: *limit,
                };
                match s.list_tasks(&filter).await {
                    Ok(tasks) => format!("listed {:?}", self.texts(tasks.iter().map(|t| t.id))),
                    Err(e) => self.error(&e),
                }
            }
            Op::DependenciesMet(picks) => {
                let ids: Vec<TaskId> = picks.iter().filter_map(|p| self.task(*p)).collect();
                match s.dependencies_met(&ids).await {
                    Ok(met) => {
                        let met: BTreeMap<String, bool> = met
                            .into_iter()
                            .map(|(t, m)| (self.text(&t.to_string()), m))
                            .collect();
                        format!("met {met:?}")
                    }
                    Err(e) => self.error(&e),
                }
            }
            Op::ListPlans { status, limit } => match s.list_plans(*status, *limit).await {
                Ok(plans) => {
                    let headers = s.list_plan_headers(*status, *limit).await;
                    let mut agree = headers.is_ok_and(|h| {
                        h == plans.iter().map(ExecutionPlan::header).collect::<Vec<_>>()
                    });
                    for p in &plans {
                        let one = s.get_plan_header(p.id).await;
                        agree &= one.is_ok_and(|h| h == Some(p.header()));
                    }
                    let ids = self.texts(plans.iter().map(|p| p.id));
                    format!("plans {ids:?}, headers the same: {agree}")
                }
                Err(e) => self.error(&e),
            },
            Op::ListWorkers { role, alive } => {
                let filter = WorkerFilter {
                    role: role.map(|r| format!("role{r}")),
                    alive_within: alive.then_some(Duration::from_secs(3600)),
                };
                match s.list_workers(&filter).await {
                    Ok(w) => format!(
                        "workers {:?}",
                        w.iter().map(|w| w.id.to_string()).collect::<Vec<_>>()
                    ),
                    Err(e) => self.error(&e),
                }
            }
        }
    }

    /// Outcomes for the picked runs (a pick with no run to name is skipped).
    fn outcomes(&self, picks: &[(RunPick, End)]) -> Vec<RunOutcome> {
        let mut outcomes = Vec::new();
        for (k, (pick, end)) in picks.iter().enumerate() {
            let Some(run_id) = self.run(*pick) else {
                continue;
            };
            let outcome = match end {
                End::Success => Outcome::success(Some(json!({ "step": k, "ok": true }))),
                End::FailureRetry => Outcome::Failure {
                    error: format!("error {k}"),
                    retry: Some(RetryPolicy::IMMEDIATE),
                },
                End::FailureFinal => Outcome::Failure {
                    error: format!("fatal {k}"),
                    retry: None,
                },
            };
            outcomes.push(RunOutcome {
                run_id,
                outcome,
                output_log: (k % 2 == 0).then(|| format!("log {k}")),
                waited: std::time::Duration::ZERO,
            });
        }
        outcomes
    }

    fn show_reports(&self, reports: &[FinishReport]) -> Vec<String> {
        reports
            .iter()
            .map(|r| {
                let finished = match r.finished {
                    Finished::Retrying { .. } => "retrying".to_owned(),
                    ref f => format!("{f:?}"),
                };
                format!(
                    "{} task={} {finished} plan={} cancelled={:?} plan_now={:?}",
                    self.text(&r.run_id.to_string()),
                    self.text(&format!("{:?}", r.task_id.map(|t| t.to_string()))),
                    self.text(&format!("{:?}", r.plan_id.map(|p| p.to_string()))),
                    self.sorted_names(&r.cancelled_dependents),
                    r.plan_transition,
                )
            })
            .collect()
    }

    /// Names the claims' runs and shows each claim, checking it hands out exactly the rows
    /// it stored.
    async fn show_claims(&mut self, claims: &[Claim]) -> Vec<String> {
        let mut shown = Vec::new();
        for c in claims {
            let name = format!("{}#{}", self.text(&c.task.id.to_string()), c.run.run_number);
            self.name_run(c.run.id, name);
            let stored_task = self.store.get_task(c.task.id).await.ok().flatten();
            let stored_run = self.store.get_run(c.run.id).await.ok().flatten();
            let as_stored =
                stored_task.as_ref() == Some(&c.task) && stored_run.as_ref() == Some(&c.run);
            shown.push(format!(
                "{} {} as_stored={as_stored}",
                self.show(&c.task),
                self.show(&c.run)
            ));
        }
        shown
    }

    fn new_task(&self, spec: &TaskSpec, position: usize) -> NewTask {
        let now = chrono::Utc::now();
        let mut t = NewTask::new(format!("task {position}"), TASK_TYPES[spec.task_type])
            .priority(spec.priority)
            .max_retries(spec.max_retries)
            .payload(json!({ "n": position }));
        t.run_at = match spec.delay {
            Delay::None => None,
            Delay::Past => Some(now - chrono::Duration::hours(1)),
            Delay::Future => Some(now + chrono::Duration::hours(1)),
        };
        t.idempotency_key = spec.key.map(|k| KEYS[k].to_owned());
        t
    }

    fn names_of(&self, ids: &[TaskId]) -> Vec<String> {
        ids.iter().map(|i| self.text(&i.to_string())).collect()
    }

    async fn materialize(&mut self, id: PlanId) -> String {
        match self.store.materialize_plan(id).await {
            Ok(created) => self.name_plan_tasks(id, created).await,
            Err(e) => self.error(&e),
        }
    }

    /// Names the tasks plan `id` has just created; what the step that created them reports.
    async fn name_plan_tasks(&mut self, id: PlanId, created: Option<u64>) -> String {
        let filter = TaskFilter::in_plan(id);
        let tasks = match self.store.list_tasks(&filter).await {
            Ok(t) => t,
            Err(e) => return self.error(&e),
        };
        let plan = self.text(&id.to_string());
        // Name the new tasks by plan and subtask id, in subtask order, so names do not
        // depend on the order a backend lists or creates them in.
        let mut new: Vec<(String, TaskId)> = tasks
            .iter()
            .filter(|t| !self.names.contains_key(&t.id.to_string()))
            .map(|t| {
                let sub = t.plan_subtask_id.clone().unwrap_or_else(|| "?".into());
                (format!("{plan}.{sub}"), t.id)
            })
            .collect();
        new.sort();
        for (name, tid) in new {
            self.name_task(tid, name);
        }
        format!("materialized {created:?}")
    }
}

fn worker_id(i: usize) -> WorkerId {
    WorkerId::parse(WORKERS[i % WORKERS.len()]).expect("a valid worker id")
}

/// A valid plan: node `i` may depend only on nodes before it, so there is no cycle.
fn new_plan(k: usize, nodes: &[NodeSpec]) -> NewPlan {
    let subtasks = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut deps: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                n.depends_on
                    .iter()
                    .map(|d| format!("n{}", d.of(i)))
                    .collect()
            };
            deps.sort();
            deps.dedup();
            let mut st = SubTask::new(
                format!("n{i}"),
                format!("plan {k} node {i}"),
                TASK_TYPES[n.task_type],
            )
            .depends_on(deps);
            st.priority = n.priority;
            st.max_retries = Some(n.max_retries);
            st.payload = json!({ "plan": k, "node": i });
            st
        })
        .collect();
    NewPlan::new(format!("plan {k}"), subtasks)
        .description(format!("generated plan {k}"))
        .metadata(json!({ "plan": k }))
}
