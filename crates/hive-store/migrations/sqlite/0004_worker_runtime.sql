-- A task's own retry backoff (JSON: {"base": ms, "max": ms, "jitter": "full"|"none"});
-- NULL means the worker's policy.
ALTER TABLE tasks ADD COLUMN retry_policy TEXT;

-- How far a running handler says it has got, with its message and when it said so.
ALTER TABLE runs ADD COLUMN progress REAL CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1));
ALTER TABLE runs ADD COLUMN progress_message TEXT;
ALTER TABLE runs ADD COLUMN progress_at INTEGER;
