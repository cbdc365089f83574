-- Each subtask's definition in a row of its own: the plan row, which every finished subtask
-- updates, stays small however large the plan (SQLite rewrites a whole row on update), and
-- a running subtask can add subtasks to its plan without rewriting the others.
CREATE TABLE plan_subtasks (
    plan_id    TEXT    NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    subtask_id TEXT    NOT NULL,
    -- Submission order; subtasks added while the plan runs come after.
    position   INTEGER NOT NULL CHECK (position >= 0),
    -- The validated subtask as JSON.
    spec       TEXT    NOT NULL,
    PRIMARY KEY (plan_id, subtask_id)
);
CREATE INDEX plan_subtasks_position ON plan_subtasks (plan_id, position);

INSERT INTO plan_subtasks (plan_id, subtask_id, position, spec)
SELECT p.id, j.value ->> 'id', CAST(j.key AS INTEGER), j.value
FROM plans p, json_each(p.subtasks) AS j;

ALTER TABLE plans DROP COLUMN subtasks;

-- A run of the task may last this long before the worker stops it (NULL: no limit).
ALTER TABLE tasks ADD COLUMN timeout_secs INTEGER CHECK (timeout_secs > 0);
-- Once its dependencies completed (at creation for a task without any), the task waits this
-- long before it can be claimed.
ALTER TABLE tasks ADD COLUMN delay_secs INTEGER NOT NULL DEFAULT 0 CHECK (delay_secs >= 0);
