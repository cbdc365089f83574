-- How many times each task was snoozed (see migrations/postgres/0019_snoozes.sql): the
-- limit on snoozes used to count the runs that did not use an attempt, which a plan retry
-- and runs given back at a worker's shutdown broke. Every task starts from 0.
ALTER TABLE tasks ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;
