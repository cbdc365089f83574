-- A task's own retry backoff ({"base": ms, "max": ms, "jitter": "full"|"none"}); NULL means
-- the worker's policy.
ALTER TABLE tasks ADD COLUMN retry_policy jsonb CHECK (retry_policy IS NULL OR jsonb_typeof(retry_policy) = 'object');

-- How far a running handler says it has got, with its message and when it said so.
ALTER TABLE runs ADD COLUMN progress double precision CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1));
ALTER TABLE runs ADD COLUMN progress_message text;
ALTER TABLE runs ADD COLUMN progress_at timestamptz;
