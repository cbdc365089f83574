-- What the original package's models record and Hive did not yet: a run's creation and
-- last update, a plan's metadata, and why a worker is in its status.

-- When the run was opened and when it last changed (opened, lease extended, closed).
-- Existing runs: created when they started, last changed when they ended (or started).
ALTER TABLE runs ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET created_at = started_at, updated_at = COALESCE(completed_at, started_at);

-- Free-form facts given with the plan at submission: a JSON object.
ALTER TABLE plans ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'
    CHECK (json_valid(metadata) AND json_type(metadata) = 'object');

-- Why the worker is in its status (the reason given when it was marked `error`, or why the
-- reaper marked it `offline`); replaced by every status change.
ALTER TABLE workers ADD COLUMN status_reason TEXT;
