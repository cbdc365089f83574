-- The plain claim's index holds unkeyed tasks only: a large backlog under a concurrency
-- key (a serial key's thousands of queued tasks) sat at the head of `tasks_ready`, and
-- every claim of every worker walked past it. Keyed tasks are read through
-- `tasks_ready_keyed`.
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NULL;
