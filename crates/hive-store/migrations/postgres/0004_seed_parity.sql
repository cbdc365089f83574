-- What the original package's models record and Hive did not yet: a run's creation and
-- last update, a plan's metadata, and why a worker is in its status.

-- When the run was opened and when it last changed (opened, lease extended, closed).
-- Existing runs: created when they started, last changed when they ended (or started).
ALTER TABLE runs ADD COLUMN created_at timestamptz, ADD COLUMN updated_at timestamptz;
UPDATE runs SET created_at = started_at, updated_at = coalesce(completed_at, started_at);
ALTER TABLE runs ALTER COLUMN created_at SET NOT NULL, ALTER COLUMN updated_at SET NOT NULL;

-- Free-form facts given with the plan at submission: a JSON object.
ALTER TABLE plans ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(metadata) = 'object');

-- Why the worker is in its status (the reason given when it was marked `error`, or why the
-- reaper marked it `offline`); replaced by every status change.
ALTER TABLE workers ADD COLUMN status_reason text;

-- Plans are read through this view, which now shows their metadata too (a view's columns
-- are fixed when it is created; new ones may only be added at the end).
CREATE OR REPLACE VIEW plans_counted AS
SELECT p.id, p.title, p.description, p.parent_task_id, p.status, p.total_subtasks,
    p.completed_subtasks + coalesce(s.completed, 0) AS completed_subtasks,
    p.failed_subtasks + coalesce(s.failed, 0) AS failed_subtasks,
    p.cancelled_subtasks + coalesce(s.cancelled, 0) AS cancelled_subtasks,
    p.materialized, p.created_at, p.updated_at, p.metadata
FROM plans p
LEFT JOIN LATERAL (
    SELECT sum(t.completed)::bigint AS completed, sum(t.failed)::bigint AS failed,
        sum(t.cancelled)::bigint AS cancelled
    FROM plan_tallies t WHERE t.plan_id = p.id
) s ON true;
