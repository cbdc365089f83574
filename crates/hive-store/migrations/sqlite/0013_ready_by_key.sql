-- Ready keyed tasks by key, in queue order within each: when a busy key's backlog fills
-- the queue's head, a claim walks the keys one by one (one probe each) instead of every
-- task behind them.
CREATE INDEX IF NOT EXISTS tasks_ready_by_key ON tasks (concurrency_key, priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL;
-- The plain claim's queue: tasks without a key only, so a busy key's backlog ahead of them
-- is not walked row by row by every claim. `tasks_ready` stays for listings in queue order
-- (and for processes of earlier versions, which name it).
CREATE INDEX IF NOT EXISTS tasks_ready_plain ON tasks (priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NULL;
