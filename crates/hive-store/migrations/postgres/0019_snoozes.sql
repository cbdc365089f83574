-- How many times each task was snoozed. The limit on snoozes used to count the runs that
-- did not use an attempt (run_count - attempts), which a plan retry broke (it gives the
-- attempts back, not the runs: every earlier run then counted as a snooze) and which
-- counted runs given back at a worker's shutdown as snoozes. A column with a constant
-- default is added without rewriting the table; only tasks still open are given their
-- count so far (a finished task starts from 0 if it is ever queued again).
ALTER TABLE tasks ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
UPDATE tasks SET snoozes = run_count - attempts
WHERE status NOT IN ('completed', 'failed', 'cancelled') AND run_count > attempts;
