//! Running tasks: atomic claims with leases, fenced completion and failure, retries,
//! lease extension, release, and the reaper.

use std::time::Duration;

use hive_models::{Json, Run, RunId, Timestamp, WorkerId};
use hive_store::{
    ClaimParams, FinishReport, Finished, Outcome, ReapParams, ReapReport, RunOutcome, Store,
};

use crate::{Error, Ops, OpsConfig, Result};

/// A claimed task and the run opened for it; the run id is the lease token.
pub use hive_store::Claim as Claimed;

/// A batch cut before each spawn that follows an outcome that may fail a plan: a store
/// checks a batch's spawns against its plans as they were before the batch, so an earlier
/// outcome failing the spawner's plan would otherwise let the spawn grow a failed plan. Such
/// outcomes: a failure, a timeout, a snooze (past its limit it fails the task), and a spawn
/// (one the plan refuses fails its spawner). In parts, each spawn meets the plan as the
/// outcomes before it left it, as if sent one at a time. One part, the batch whole, when no
/// spawn follows one (nearly always).
fn in_spawn_order(outcomes: &[RunOutcome]) -> Vec<&[RunOutcome]> {
    let mut parts = Vec::new();
    let (mut start, mut may_fail) = (0, false);
    for (i, o) in outcomes.iter().enumerate() {
        let spawns = matches!(&o.outcome, Outcome::Success { spawn, .. } if !spawn.is_empty());
        if spawns && may_fail {
            parts.push(&outcomes[start..i]);
            (start, may_fail) = (i, false);
        }
        may_fail |= spawns
            || matches!(
                o.outcome,
                Outcome::Failure { .. } | Outcome::TimedOut { .. } | Outcome::Snooze { .. }
            );
    }
    parts.push(&outcomes[start..]);
    parts
}

/// The outcomes as they may be stored. NUL characters in errors, logs and results are
/// replaced by U+FFFD: Postgres cannot store NUL, and refusing a worker's report would
/// leave its task running until the lease expired (and a worker that retries a failed
/// commit stuck on it), so a report is stored on every backend alike with its NULs
/// visibly replaced, as invalid UTF-8 in a command's output already is. A success whose
/// output or spawned subtasks exceed the size limits becomes a permanent failure naming
/// the problem: retrying would produce the same output.
fn storable<'a>(
    outcomes: &'a [RunOutcome],
    limits: &OpsConfig,
) -> std::borrow::Cow<'a, [RunOutcome]> {
    fn text(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    fn json(v: &mut Json) {
        match v {
            Json::String(s) => text(s),
            Json::Array(items) => items.iter_mut().for_each(json),
            Json::Object(map) => {
                let fixed: serde_json::Map<String, Json> = std::mem::take(map)
                    .into_iter()
                    .map(|(mut k, mut x)| {
                        text(&mut k);
                        json(&mut x);
                        (k, x)
                    })
                    .collect();
                *map = fixed;
            }
            _ => {}
        }
    }
    let oversized = |o: &RunOutcome| -> Option<String> {
        let Outcome::Success { result, spawn } = &o.outcome else {
            return None;
        };
        if let Some(r) = result {
            let owner = format!("run {}", o.run_id);
            if let Err(e) = hive_models::check_output_size(&owner, r, limits.max_output_bytes) {
                return Some(e.to_string());
            }
        }
        spawn
            .iter()
            .find_map(|s| hive_models::validate_subtask_fields(s, limits.max_payload_bytes).err())
            .map(|e| format!("cannot spawn: {e}"))
    };
    let has_nul = |o: &RunOutcome| {
        let in_result = match &o.outcome {
            Outcome::Success {
                result: Some(r), ..
            } => hive_models::check_json_storable("", r).is_err(),
            Outcome::Success { result: None, .. } => false,
            Outcome::Failure { error, .. }
            | Outcome::TimedOut { error, .. }
            | Outcome::GiveBack { reason: error } => error.contains('\0'),
            Outcome::Snooze { .. } => false,
        };
        in_result || o.output_log.as_deref().is_some_and(|l| l.contains('\0'))
    };
    let typed_spawn = |o: &RunOutcome| match &o.outcome {
        Outcome::Success { spawn, .. } => spawn
            .iter()
            .any(|s| limits.retry_by_type.contains_key(&s.task_type)),
        _ => false,
    };
    if !outcomes
        .iter()
        .any(|o| has_nul(o) || oversized(o).is_some() || typed_spawn(o))
    {
        return std::borrow::Cow::Borrowed(outcomes);
    }
    let mut fixed = outcomes.to_vec();
    for o in &mut fixed {
        if let Outcome::Success { spawn, .. } = &mut o.outcome {
            spawn.iter_mut().for_each(|s| limits.fill_subtask_retry(s));
        }
        if let Some(error) = oversized(o) {
            o.outcome = Outcome::Failure { error, retry: None };
        }
        if let Some(log) = &mut o.output_log {
            text(log);
        }
        match &mut o.outcome {
            Outcome::Success {
                result: Some(r), ..
            } => json(r),
            Outcome::Success { result: None, .. } => {}
            Outcome::Failure { error, .. }
            | Outcome::TimedOut { error, .. }
            | Outcome::GiveBack { reason: error } => text(error),
            Outcome::Snooze { .. } => {}
        }
    }
    std::borrow::Cow::Owned(fixed)
}

/// Refuses a lease of zero, which would end the run as it starts.
fn check_lease(lease: Duration) -> Result<()> {
    if lease.is_zero() {
        return Err(hive_models::Error::InvalidField {
            field: "lease".into(),
            reason: "must be longer than zero".into(),
        }
        .into());
    }
    Ok(())
}

fn claim_params(
    worker_id: &WorkerId,
    task_types: &[String],
    limit: u32,
    lease: Duration,
) -> Result<ClaimParams> {
    check_lease(lease)?;
    Ok(ClaimParams {
        worker_id: worker_id.clone(),
        task_types: task_types.to_vec(),
        limit,
        lease,
    })
}

impl<S: Store + ?Sized> Ops<S> {
    /// Atomically claims the best ready task of the given types (any type when empty) for
    /// a worker, opening a run whose lease expires after `lease` unless extended.
    pub async fn claim_next_task(
        &self,
        worker_id: &WorkerId,
        task_types: &[String],
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        Ok(self
            .claim_tasks(worker_id, task_types, 1, lease)
            .await?
            .into_iter()
            .next())
    }

    /// Claims up to `limit` ready tasks in one atomic step.
    pub async fn claim_tasks(
        &self,
        worker_id: &WorkerId,
        task_types: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        let params = claim_params(worker_id, task_types, limit, lease)?;
        let claims = self.store.claim_tasks(&params).await?;
        self.plans_changed(claims.iter().filter_map(|c| c.task.plan_id));
        Ok(claims)
    }

    /// Finishes runs and claims up to `limit` ready tasks in one transaction: how a worker
    /// refills the slots its finished tasks freed without a second round trip. A batch
    /// holding a spawn after an outcome that may fail its plan is cut there (see
    /// `in_spawn_order`): the parts before commit first, each in its own transaction, so an
    /// error may come after some committed (sent again, those report `Stale`).
    pub async fn finish_and_claim(
        &self,
        outcomes: &[RunOutcome],
        worker_id: &WorkerId,
        task_types: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<(Vec<FinishReport>, Vec<Claimed>)> {
        let params = claim_params(worker_id, task_types, limit, lease)?;
        let outcomes = &storable(outcomes, &self.config);
        let mut parts = in_spawn_order(outcomes);
        let last = parts.pop().unwrap_or_default();
        let mut reports = self.finish_parts(parts).await?;
        let (last, claims) = self.store.finish_and_claim(last, &params).await?;
        self.plans_changed(last.iter().filter_map(|r| r.plan_id));
        self.plans_changed(claims.iter().filter_map(|c| c.task.plan_id));
        reports.extend(last);
        Ok((reports, claims))
    }

    /// Finishes each part in a transaction of its own, in order.
    async fn finish_parts(&self, parts: Vec<&[RunOutcome]>) -> Result<Vec<FinishReport>> {
        let mut reports = Vec::new();
        for part in parts {
            let done = self.store.finish_runs(part).await?;
            self.plans_changed(done.iter().filter_map(|r| r.plan_id));
            reports.extend(done);
        }
        Ok(reports)
    }

    /// Completes the task of a run. [`Error::StaleRun`] when the run is no longer the
    /// task's current run (its lease expired and the task was taken back).
    /// An output over [`OpsConfig::max_output_bytes`] is refused, changing nothing.
    pub async fn complete_task(&self, run_id: RunId, result: Option<Json>) -> Result<()> {
        if let Some(r) = &result {
            let owner = format!("run {run_id}");
            hive_models::check_output_size(&owner, r, self.config.max_output_bytes)?;
        }
        let outcome = RunOutcome {
            run_id,
            outcome: Outcome::success(result),
            output_log: None,
            waited: std::time::Duration::ZERO,
        };
        self.finish_one(outcome).await.map(|_| ())
    }

    /// Records a failed attempt: the task is retried after the configured backoff while it
    /// has retries left, else it fails for good (cancelling its dependents).
    pub async fn fail_task(&self, run_id: RunId, error: impl Into<String>) -> Result<Finished> {
        let outcome = RunOutcome {
            run_id,
            outcome: Outcome::Failure {
                error: error.into(),
                retry: Some(self.config.retry),
            },
            output_log: None,
            waited: std::time::Duration::ZERO,
        };
        self.finish_one(outcome).await
    }

    async fn finish_one(&self, outcome: RunOutcome) -> Result<Finished> {
        let run_id = outcome.run_id;
        let report = self.finish_runs(vec![outcome]).await?.into_iter().next();
        match report.map(|r| r.finished) {
            Some(Finished::Stale) | None => Err(Error::StaleRun { run_id }),
            Some(f) => Ok(f),
        }
    }

    /// Finishes many runs in one transaction (what the worker runtime's batching completer
    /// uses). Stale runs are reported, not raised, so one late worker cannot fail a batch.
    /// NUL characters in errors, logs and results are stored as U+FFFD (see `storable`).
    pub async fn finish_runs(&self, outcomes: Vec<RunOutcome>) -> Result<Vec<FinishReport>> {
        let outcomes = storable(&outcomes, &self.config);
        self.finish_parts(in_spawn_order(&outcomes)).await
    }

    /// Extends a run's lease to at least now + `lease` (never shortening it, nor the length
    /// the worker's heartbeats extend it by); [`Error::StaleRun`] when the task was taken
    /// back, `Invalid` for a lease of zero.
    pub async fn extend_lease(&self, run_id: RunId, lease: Duration) -> Result<Timestamp> {
        check_lease(lease)?;
        Ok(self.store.extend_lease(run_id, lease).await?)
    }

    /// Records how far a running run has got: `fraction` from 0 to 1, and a message.
    /// [`Error::StaleRun`] when the run was taken back or cancelled. Workers call this at
    /// most once a second per run ([`hive_models::Progress`]).
    pub async fn record_progress(
        &self,
        run_id: RunId,
        fraction: f64,
        message: Option<String>,
    ) -> Result<()> {
        hive_models::Progress::check(fraction, message.as_deref())?;
        Ok(self
            .store
            .record_progress(run_id, fraction, message)
            .await?)
    }

    /// The runs the store has `worker` holding (running, under its lease).
    pub async fn running_runs(&self, worker: &WorkerId) -> Result<Vec<Run>> {
        Ok(self
            .store
            .running_runs(std::slice::from_ref(worker))
            .await?)
    }

    /// The runs the store has each of `workers` holding, by task, in one read.
    pub async fn running_runs_of(&self, workers: &[WorkerId]) -> Result<Vec<Run>> {
        Ok(self.store.running_runs(workers).await?)
    }

    /// Gives held tasks back to the queue without using up a retry (graceful shutdown).
    pub async fn release_runs(&self, run_ids: &[RunId]) -> Result<Vec<hive_models::TaskId>> {
        Ok(self.store.release_runs(run_ids).await?)
    }

    /// Gives back claims whose handlers never started (a stopping worker's buffer), as
    /// [`Ops::release_runs`]; their starts no longer count against rate limits.
    pub async fn release_unstarted_runs(
        &self,
        run_ids: &[RunId],
    ) -> Result<Vec<hive_models::TaskId>> {
        Ok(self.store.release_unstarted(run_ids).await?)
    }

    /// Takes back every task whose lease expired (the run is marked `timeout`; the task is
    /// requeued with backoff, or failed when out of retries) and marks workers with stale
    /// heartbeats offline. Safe to call from many workers at once.
    pub async fn reap(&self) -> Result<ReapReport> {
        let params = ReapParams {
            heartbeat_timeout: self.config.heartbeat_timeout,
            retry: self.config.retry,
            limit: self.config.reap_batch.max(1),
        };
        let mut total = ReapReport::default();
        loop {
            let report = self.store.reap(&params).await?;
            self.plans_changed(report.plan_transitions.iter().map(|(p, _)| *p));
            let full = report.requeued.len() + report.failed.len() >= params.limit as usize;
            total.requeued.extend(report.requeued);
            total.failed.extend(report.failed);
            total.offline_workers.extend(report.offline_workers);
            total.plan_transitions.extend(report.plan_transitions);
            if !full {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hive_models::{RunId, SubTask};
    use hive_store::{Outcome, RunOutcome};

    use super::in_spawn_order;

    fn outcome(outcome: Outcome) -> RunOutcome {
        RunOutcome {
            run_id: RunId::new(),
            outcome,
            output_log: None,
            waited: std::time::Duration::ZERO,
        }
    }

    fn spawn() -> RunOutcome {
        outcome(Outcome::Success {
            result: None,
            spawn: vec![SubTask::new("x", "X", "t")],
        })
    }

    fn done() -> RunOutcome {
        outcome(Outcome::success(None))
    }

    fn failed() -> RunOutcome {
        outcome(Outcome::Failure {
            error: "e".into(),
            retry: None,
        })
    }

    fn snoozed() -> RunOutcome {
        outcome(Outcome::Snooze {
            delay: std::time::Duration::from_secs(1),
            limit: 0,
        })
    }

    fn sizes(batch: &[RunOutcome]) -> Vec<usize> {
        in_spawn_order(batch).iter().map(|p| p.len()).collect()
    }

    /// A spawn is cut from what came before it only when that may fail its plan: a
    /// failure, a snooze (past its limit it fails), another spawn (refused, it fails).
    #[test]
    fn a_batch_is_cut_before_a_spawn_only_after_what_may_fail_a_plan() {
        assert_eq!(sizes(&[done(), done(), spawn(), done()]), [4]);
        assert_eq!(sizes(&[done(), failed(), done(), spawn(), done()]), [3, 2]);
        assert_eq!(sizes(&[snoozed(), spawn()]), [1, 1]);
        assert_eq!(sizes(&[spawn(), done(), spawn(), spawn()]), [2, 1, 1]);
        assert_eq!(sizes(&[failed(), failed()]), [2]);
        assert_eq!(sizes(&[]), [0]);
    }
}
