-- Ready keyed tasks by key, in queue order within each: when a busy key's backlog fills
-- the queue's head, a claim walks the keys one by one (one probe each) instead of every
-- task behind them.
CREATE INDEX tasks_ready_by_key ON tasks (concurrency_key, priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL;
-- The plain claim's queue holds tasks without a key only, so a busy key's backlog ahead
-- of them is not walked row by row by every claim. Its order is an expression the claim
-- names, so the planner cannot take `tasks_status` instead (their estimates tie, and that
-- walk reads every queued task: keyed ones, waiting plan subtasks). Listings of ready
-- tasks in queue order read `tasks_status`; keyed tasks have `tasks_ready_keyed`.
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready_plain ON tasks ((-priority::bigint), seq)
    WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NULL;
