//! Runs given back without an outcome, on Postgres.

use hive_models::{RunId, TaskId};

use super::replay::{self, load_locked};
use super::runs::lock_runs;
use super::sql::{begin_by_key, end, server_now};
use super::{PostgresStore, flow};
use crate::rules::Loaded;
use crate::sql::R;

impl PostgresStore {
    /// Releases live runs in the given order; returns their tasks. With `unstarted`, the
    /// starts their claims counted leave their scopes' rate windows in the same
    /// transaction.
    pub(super) async fn release_once(&self, run_ids: &[RunId], unstarted: bool) -> R<Vec<TaskId>> {
        let mut tx = begin_by_key(&self.pool).await?;
        let out: R<_> = async {
            let locked = lock_runs(&mut tx, run_ids).await?;
            let Some(first) = locked.first() else {
                return Ok(None);
            };
            let at = server_now(first)?;
            let mut view = Loaded::default();
            let run_task = load_locked(&mut view, &locked)?;
            let order: Vec<(RunId, TaskId)> = run_ids
                .iter()
                .filter_map(|r| run_task.get(r).map(|t| (*r, *t)))
                .collect();
            let (released, written) =
                replay::replay(&mut tx, &self.notifier, &mut view, at, true, |ch| {
                    ch.release_all(&order)
                })
                .await?;
            if unstarted {
                let runs: Vec<RunId> = released.iter().map(|(r, _)| *r).collect();
                flow::forget_starts(&mut tx, &runs).await?;
            }
            Ok(Some((
                released.into_iter().map(|(_, t)| t).collect(),
                written,
            )))
        }
        .await;
        let Some((released, written)) = end(tx, out).await? else {
            return Ok(Vec::new());
        };
        self.after_commit(written).await?;
        Ok(released)
    }
}
