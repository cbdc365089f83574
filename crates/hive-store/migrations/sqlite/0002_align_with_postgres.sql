-- The SQLite schema declares the same tables and columns as the Postgres one (a test
-- compares them): runs keep their lease in microseconds, and tasks count the runs opened
-- so far, so a claim numbers its run without reading the runs table.

ALTER TABLE runs RENAME COLUMN lease_ms TO lease_us;
UPDATE runs SET lease_us = lease_us * 1000 WHERE lease_us IS NOT NULL;

ALTER TABLE tasks ADD COLUMN run_count INTEGER NOT NULL DEFAULT 0 CHECK (run_count >= 0);
UPDATE tasks SET run_count = (SELECT COUNT(*) FROM runs r WHERE r.task_id = tasks.id);
