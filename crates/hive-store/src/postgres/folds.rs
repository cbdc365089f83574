//! Dependency credits on Postgres: a finish that finds a dependent's row held by another
//! transaction leaves a credit instead of waiting (see `0011_dependency_credits.sql`), and
//! folds it into the row right after its commit, in the background, one fold at a time;
//! the reaper folds what a crash or a failed fold leaves.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::{PostgresStore, rows};
use crate::sql::R;

/// Folds dependency credits into their dependents' counts and announces the dependents
/// that frees: those of the tasks `$1` (a finish, in the background just after its
/// commit), or every credit when `$1` is NULL (the reaper, for what a crash or a failed fold
/// left).
/// Each credit is deleted by the transaction that counts it, so it counts once. `$2` origin.
/// The dependents are locked in id order, as every other statement that locks several
/// tasks does (a cascade's `replay::load_cascade`, say), before any is counted: updated in
/// the join's order, a fold could hold one dependent while waiting for another that the
/// reaper's cascade held while waiting for the first, a deadlock Postgres ends only after
/// `deadlock_timeout` by failing one of them.
pub(super) const FOLD_CREDITS: &str = concat!(
    "WITH c AS ( \
         DELETE FROM dependency_credits \
         WHERE $1::uuid[] IS NULL OR task_id = ANY($1::uuid[]) \
         RETURNING task_id, n \
     ), dec AS ( \
         SELECT task_id AS id, sum(n)::int AS n FROM c GROUP BY task_id \
     ), lk AS ( \
         SELECT t.id FROM tasks t WHERE t.id = ANY(ARRAY(SELECT id FROM dec)) \
         ORDER BY t.id FOR UPDATE \
     ), dep_upd AS (",
    count_dec_down!("SELECT id FROM lk", ""),
    ") SELECT (SELECT count(*) FROM c) AS folded, (",
    notify_rows!(
        later,
        "SELECT id FROM dep_upd WHERE ready",
        "json_build_object('origin', $2::uuid, 'kind', 'task_ready', 'task_id', x.id)"
    ),
    ") AS notes"
);

/// Runs [`FOLD_CREDITS`] for the credits of `tasks` (`None`: every credit), and publishes
/// the dependents it frees.
pub(super) async fn fold_credits(
    pool: &sqlx::PgPool,
    notifier: &crate::Notifier,
    tasks: Option<&[Uuid]>,
) -> R<()> {
    let row = sqlx::query(FOLD_CREDITS)
        .bind(tasks)
        .bind(notifier.origin())
        .fetch_one(pool)
        .await?;
    super::publish::publish_or_wake(pool, notifier, rows::get(&row, "notes", "tasks")?).await;
    Ok(())
}

/// The dependents whose credits wait to be folded, and whether a fold is running. A fold
/// waits for its dependents' rows, which the finishes counting them down hold in turn; one
/// fold per finish would each hold a pooled connection while it waits (a join that many
/// finishes credit could take the whole pool from the worker that finishes them). One fold
/// runs at a time instead, and the credits left meanwhile go together in the next.
#[derive(Debug, Clone, Default)]
pub(super) struct Folds(Arc<Mutex<FoldQueue>>);

#[derive(Debug, Default)]
struct FoldQueue {
    waiting: HashSet<Uuid>,
    running: bool,
}

impl Folds {
    fn queue(&self) -> std::sync::MutexGuard<'_, FoldQueue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `tasks`' credits; true when no fold is running, so the caller starts one.
    fn add(&self, tasks: Vec<Uuid>) -> bool {
        let mut q = self.queue();
        q.waiting.extend(tasks);
        !std::mem::replace(&mut q.running, true)
    }

    /// The dependents to fold next; None (and no fold running) once none wait.
    fn next(&self) -> Option<Vec<Uuid>> {
        let mut q = self.queue();
        if q.waiting.is_empty() {
            q.running = false;
            return None;
        }
        Some(q.waiting.drain().collect())
    }

    /// Drives the fold loop started by an [`add`](Self::add) that returned true, with
    /// `fold` for each set of dependents.
    async fn run<F, Fut>(self, mut fold: F)
    where
        F: FnMut(Vec<Uuid>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut running = Running {
            folds: self,
            armed: true,
        };
        while let Some(tasks) = running.folds.next() {
            fold(tasks).await;
        }
        // `next` cleared the mark itself; clearing it again could clear the mark of a fold
        // another finish has started since.
        running.armed = false;
    }
}

/// A fold loop in progress. Dropped before the loop saw no credits waiting (its task
/// panicked, or the runtime shut down mid-fold), it clears the running mark; otherwise
/// every later finish would find a fold "running" and only queue its credits, leaving them
/// all for the reaper.
struct Running {
    folds: Folds,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed {
            self.folds.queue().running = false;
        }
    }
}

impl PostgresStore {
    /// Folds, in the background, the credits a finish left for dependents it found held by
    /// another transaction. Not awaited: the fold waits for that transaction's commit, and
    /// a worker's finish waiting for it would again take turns on the row. One fold runs at
    /// a time (see [`Folds`]). The dependents it frees are announced as ready; a worker does
    /// not exit idle meanwhile, since they are still queued. A fold that fails (or a crash
    /// before it) leaves its credits to the next reap ([`fold_credits`] with `None`).
    pub(super) fn fold_credits_later(&self, tasks: Vec<Uuid>) {
        // Every finish comes here, most with nothing credited.
        if tasks.is_empty() || !self.folds.add(tasks) {
            return;
        }
        let (pool, notifier, folds) =
            (self.pool.clone(), self.notifier.clone(), self.folds.clone());
        tokio::spawn(folds.run(move |tasks| {
            let (pool, notifier) = (pool.clone(), notifier.clone());
            async move {
                if let Err(e) = fold_credits(&pool, &notifier, Some(&tasks)).await {
                    tracing::warn!(error = ?e, "folding dependency credits failed; the reaper will");
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fold_loop_that_dies_mid_fold_lets_the_next_finish_start_one() {
        let folds = Folds::default();
        assert!(
            folds.add(vec![Uuid::now_v7()]),
            "no fold ran, so this one starts"
        );
        let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
        let mut entered_tx = Some(entered_tx);
        let stuck = tokio::spawn(folds.clone().run(move |_| {
            if let Some(tx) = entered_tx.take() {
                let _ = tx.send(());
            }
            std::future::pending::<()>()
        }));
        entered.await.expect("the loop reached its first fold");
        assert!(!folds.add(vec![Uuid::now_v7()]), "a fold is running");

        stuck.abort();
        assert!(stuck.await.expect_err("aborted").is_cancelled());

        assert!(
            folds.add(vec![Uuid::now_v7()]),
            "the dead loop cleared its mark, so the next finish starts a fold"
        );
    }

    #[tokio::test]
    async fn a_fold_loop_folds_what_waits_then_clears_its_mark() {
        let folds = Folds::default();
        let first = Uuid::now_v7();
        assert!(folds.add(vec![first]));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        folds
            .clone()
            .run(move |tasks| {
                log.lock().unwrap().extend(tasks);
                std::future::ready(())
            })
            .await;
        assert_eq!(*seen.lock().unwrap(), vec![first]);
        assert!(
            folds.add(vec![Uuid::now_v7()]),
            "the loop ended, so a new one starts"
        );
    }
}
