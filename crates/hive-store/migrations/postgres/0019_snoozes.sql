-- How many times each task was snoozed. The limit on snoozes used to count the runs that
-- did not use an attempt (run_count - attempts), which a plan retry broke (it gives the
-- attempts back, not the runs: every earlier run then counted as a snooze) and which
-- counted runs given back at a worker's shutdown as snoozes. A column with a constant
-- default is added without rewriting the table. Every task starts from 0: the old count
-- cannot tell snoozes from those runs, and a task snoozing as it is upgraded gets a fresh
-- budget rather than one spent by runs that were not snoozes.
ALTER TABLE tasks ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
