//! The operations a case applies, and the proptest strategies that generate them.

use std::time::Duration;

use hive_models::{PlanStatus, TaskStatus, WorkerId, WorkerStatus};
use proptest::prelude::*;

use crate::ClaimParams;

/// Task types in generated operations; claims may ask for one of them.
pub(super) const TASK_TYPES: [&str; 2] = ["alpha", "beta"];
/// Worker ids in generated operations: few, so claims, heartbeats and unregistering meet.
pub(super) const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
/// Idempotency keys: few, so repeats happen.
pub(super) const KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// A lease no step outlives, and one that has expired by the next step.
pub(super) const LONG_LEASE: Duration = Duration::from_secs(600);
pub(super) const EXPIRED_LEASE: Duration = Duration::ZERO;

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

pub(super) fn pick() -> impl Strategy<Value = Pick> {
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
    /// Given back by a worker cut off from the store.
    GiveBack,
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
    pub(super) fn params(&self) -> ClaimParams {
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

pub(super) fn task_status() -> impl Strategy<Value = TaskStatus> {
    proptest::sample::select(TaskStatus::ALL)
}

pub(super) fn plan_status() -> impl Strategy<Value = PlanStatus> {
    proptest::sample::select(PlanStatus::ALL)
}

pub(super) fn live_plan_status() -> impl Strategy<Value = PlanStatus> {
    proptest::sample::select(vec![PlanStatus::Pending, PlanStatus::InProgress])
}

pub(super) fn run_pick() -> impl Strategy<Value = RunPick> {
    prop_oneof![
        4 => pick().prop_map(RunPick::Running),
        1 => pick().prop_map(RunPick::Any),
    ]
}

pub(super) fn task_spec() -> impl Strategy<Value = TaskSpec> {
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

pub(super) fn node_spec() -> impl Strategy<Value = NodeSpec> {
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

pub(super) fn claim_spec(limit: std::ops::Range<u32>) -> impl Strategy<Value = ClaimSpec> {
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

pub(super) fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        3 => Just(End::Success),
        2 => Just(End::FailureRetry),
        1 => Just(End::FailureFinal),
        1 => Just(End::GiveBack),
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

pub(super) fn worker_id(i: usize) -> WorkerId {
    WorkerId::parse(WORKERS[i % WORKERS.len()]).expect("a valid worker id")
}
