-- Each subtask's definition in a row of its own: reading a plan's counters never touches
-- its definition, and a running subtask can add subtasks to its plan without rewriting the
-- others.
CREATE TABLE plan_subtasks (
    plan_id    uuid    NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    subtask_id text    NOT NULL,
    -- Submission order; subtasks added while the plan runs come after.
    position   integer NOT NULL CHECK (position >= 0),
    -- The validated subtask.
    spec       jsonb   NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    PRIMARY KEY (plan_id, subtask_id)
);
CREATE INDEX plan_subtasks_position ON plan_subtasks (plan_id, position);

INSERT INTO plan_subtasks (plan_id, subtask_id, position, spec)
SELECT p.id, e.value ->> 'id', (e.ordinality - 1)::int, e.value
FROM plans p, jsonb_array_elements(p.subtasks) WITH ORDINALITY AS e(value, ordinality);

ALTER TABLE plans DROP COLUMN subtasks;

-- A run of the task may last this long before the worker stops it (NULL: no limit).
ALTER TABLE tasks ADD COLUMN timeout_secs integer CHECK (timeout_secs > 0);
-- Once its dependencies completed (at creation for a task without any), the task waits this
-- long before it can be claimed.
ALTER TABLE tasks ADD COLUMN delay_secs bigint NOT NULL DEFAULT 0 CHECK (delay_secs >= 0);

-- Finishing subtasks of one plan from many connections must not queue on the plan's row
-- (a row lock lasts until commit): each connection adds what it counted to a shard of its
-- own, and a plan's counts are its row's plus its shards' (the view `plans_counted`). The
-- plan row is written only when its status changes.
CREATE TABLE plan_tallies (
    plan_id   uuid     NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    shard     smallint NOT NULL,
    completed bigint   NOT NULL DEFAULT 0 CHECK (completed >= 0),
    failed    bigint   NOT NULL DEFAULT 0 CHECK (failed >= 0),
    cancelled bigint   NOT NULL DEFAULT 0 CHECK (cancelled >= 0),
    PRIMARY KEY (plan_id, shard)
);

CREATE VIEW plans_counted AS
SELECT p.id, p.title, p.description, p.parent_task_id, p.status, p.total_subtasks,
    p.completed_subtasks + coalesce(s.completed, 0) AS completed_subtasks,
    p.failed_subtasks + coalesce(s.failed, 0) AS failed_subtasks,
    p.cancelled_subtasks + coalesce(s.cancelled, 0) AS cancelled_subtasks,
    p.materialized, p.created_at, p.updated_at
FROM plans p
LEFT JOIN LATERAL (
    SELECT sum(t.completed)::bigint AS completed, sum(t.failed)::bigint AS failed,
        sum(t.cancelled)::bigint AS cancelled
    FROM plan_tallies t WHERE t.plan_id = p.id
) s ON true;
