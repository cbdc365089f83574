-- When a chore that one worker of a cluster does for all last ran. Every worker's reaper
-- used to repair what crashes leave (fold every dependency credit, settle stalled plans) at
-- each of its reaps, so the database did that work once per worker per reap interval; the
-- reaper that finds the chore due now claims it here and the others pass. A new table:
-- nothing existing is locked or rewritten.
CREATE TABLE chores (
    name TEXT PRIMARY KEY,
    last_run TIMESTAMPTZ NOT NULL
);
