//! Chores one worker of a cluster does for all: repairing what a crash between a commit and
//! its follow-up left (credits not folded, plans not settled). Every reaper asks; the first
//! to find the chore due claims it in the `chores` table and does it, the others pass, so
//! the database does it once per [`REPAIR_EVERY`] however many workers share it.

use std::time::Duration;

use super::{PostgresStore, folds, replay};
use crate::sql::R;

/// How often the crash repair runs across a cluster at most: within a second of the next
/// reap after a crash, as when every reaper did it.
pub(super) const REPAIR_EVERY: Duration = Duration::from_secs(1);

/// Claims the chore `$1` when it last ran at least `$2` µs ago (or never): returns a row
/// to the one caller that claims it. Upserted, so a deleted row is made again.
const CLAIM_CHORE: &str = "INSERT INTO chores AS c (name, last_run) VALUES ($1, now()) \
     ON CONFLICT (name) DO UPDATE SET last_run = now() \
     WHERE c.last_run <= now() - $2::bigint * interval '1 microsecond' \
     RETURNING 1";

impl PostgresStore {
    /// Folds every credit and settles up to `limit` stalled plans, when no other worker of
    /// the cluster did within [`REPAIR_EVERY`]. Best effort, after a committed reap: an
    /// error (a deadlock with a fold) is logged, not returned, so the caller does not run
    /// the reap again and lose its report; the next pass repairs.
    pub(super) async fn repair_crashes_if_due(&self, limit: u32) {
        if let Err(e) = self.repair_crashes(limit).await {
            tracing::warn!(error = ?e, "repairing what a crash left failed; the next reap tries again");
        }
    }

    async fn repair_crashes(&self, limit: u32) -> R<()> {
        let due = sqlx::query(CLAIM_CHORE)
            .bind("crash_repair")
            .bind(super::sql::micros(REPAIR_EVERY))
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if !due {
            return Ok(());
        }
        folds::fold_credits(&self.pool, &self.notifier, None).await?;
        let mut conn = self.pool.acquire().await?;
        replay::settle_stalled(&mut conn, &self.notifier, limit).await
    }
}
