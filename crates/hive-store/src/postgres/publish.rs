//! Publishing the frequent writes' notifications after their commits.
//!
//! A transaction that calls `pg_notify` takes a lock Postgres holds cluster-wide from just
//! before its commit until the commit's WAL flush is done (`PreCommit_Notify` in
//! `async.c`: the queue must hold notifications in commit order). So every notifying
//! commit, in every database of the server, waits for the one before it, flush included,
//! and concurrent commits no longer share flushes. With `pgbench` here (8 clients, one
//! row updated a transaction): 6,500 commits/s without a notification, 3,700 with one in
//! the transaction, 5,600 with it sent just after the commit.
//!
//! So the writes workers and producers make all the time (claims, finishes, task
//! creation, progress, the folding of dependency credits, every write through the rules'
//! replay) return their notifications' payloads instead of sending them, and the caller
//! publishes them just after the commit, before it returns, in a statement of its own that
//! writes nothing. A transaction without writes
//! commits without waiting for a flush, so the lock is held only while the queue is
//! appended to. Because the call returns only after its notifications went out, whatever a
//! caller does next (or another process does, woken by them) is announced after them.
//! What it costs: one round trip more per write, and a notification goes out a moment after
//! its change commits rather than with it; a process that dies in between loses it
//! (workers poll anyway, and a disconnected listener misses notifications either way). The
//! rarer writes still notify inside their transactions.

use sqlx::PgPool;

/// Sends payloads on the store's channel, in the order given.
const PUBLISH: &str = concat!(
    "SELECT count(pg_notify(",
    channel_sql!(),
    ", p)) FROM unnest($1::text[]) AS p"
);

/// How long a failed publish waits before its one more try.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Publishes a committed change's notifications ([`publish`]). When they cannot go out,
/// this process's own subscribers are told that something changed, so its waits read again
/// and its workers look for work, rather than missing them unawares.
pub(super) async fn publish_or_wake(
    pool: &PgPool,
    notifier: &crate::Notifier,
    payloads: Vec<String>,
) {
    if !publish(pool, payloads).await {
        notifier.forward(crate::Notification {
            origin: uuid::Uuid::nil(),
            change: crate::Change::StoreChanged,
        });
    }
}

/// Publishes a committed change's notifications, trying once more after a failure (a
/// connection the pool handed out dead). Best effort: the change is committed, and failing
/// its call now would make the caller do it again. False when they did not go out.
pub(super) async fn publish(pool: &PgPool, payloads: Vec<String>) -> bool {
    if payloads.is_empty() {
        return true;
    }
    let mut tried_before = false;
    loop {
        match sqlx::query(PUBLISH).bind(&payloads).execute(pool).await {
            Ok(_) => return true,
            Err(e) if !tried_before => {
                tracing::debug!(error = %e, "publishing notifications failed; trying once more");
                tried_before = true;
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    payloads = payloads.len(),
                    "publishing notifications after commit failed; listeners in other \
                     processes miss these changes (their workers find the work by polling)"
                );
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A server that cannot be reached: tried twice, then reported as not published.
    #[tokio::test]
    async fn a_publish_that_cannot_go_out_says_so() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        assert!(
            super::publish(&pool, Vec::new()).await,
            "nothing to publish"
        );
        assert!(!super::publish(&pool, vec!["{}".into()]).await);
    }

    /// What the module is for: none of these statements notifies inside its transaction;
    /// each returns its payloads to publish.
    #[test]
    fn the_frequent_writes_send_no_notification_themselves() {
        for (name, text) in [
            ("CLAIM", super::super::claim::CLAIM),
            ("CLAIM_DEFERRED", super::super::claim::CLAIM_DEFERRED),
            ("CLAIM_ADMITTED", super::super::claim::CLAIM_ADMITTED),
            ("FINISH_SUCCESSES", super::super::runs::FINISH_SUCCESSES),
            ("FOLD_CREDITS", super::super::folds::FOLD_CREDITS),
            ("APPLY", super::super::replay::APPLY),
        ] {
            assert!(
                !text.contains("pg_notify"),
                "{name} notifies in its transaction"
            );
            assert!(
                text.contains("array_agg(c.p)"),
                "{name} returns no payloads"
            );
        }
    }
}
