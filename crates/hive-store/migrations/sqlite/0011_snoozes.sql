-- How many times each task was snoozed (see migrations/postgres/0019_snoozes.sql): the
-- limit on snoozes used to count the runs that did not use an attempt, which a plan retry
-- and runs given back at a worker's shutdown broke. Tasks still open keep their count so
-- far.
ALTER TABLE tasks ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET snoozes = run_count - attempts
WHERE status NOT IN ('completed', 'failed', 'cancelled') AND run_count > attempts;
