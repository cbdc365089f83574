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

mod apply;
mod ops;
mod side;

use std::future::Future;
use std::sync::Arc;

use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::{Backend, Store};

use crate::testing::TestStore;

pub use ops::{ClaimSpec, Delay, End, NodeSpec, Op, Pick, RunPick, TaskSpec, op, ops};
use side::Side;

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
