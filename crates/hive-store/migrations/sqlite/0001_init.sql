-- Hive's SQLite schema.
--
-- Ids are UUID strings (workers: their chosen names). Timestamps are INTEGER microseconds
-- since the Unix epoch, so they sort and compare in SQL and round-trip exactly. JSON values
-- are TEXT. `IF NOT EXISTS` lets two processes that race to migrate a new file both succeed.

CREATE TABLE IF NOT EXISTS plans (
    id                 TEXT    PRIMARY KEY NOT NULL,
    title              TEXT    NOT NULL,
    description        TEXT    NOT NULL DEFAULT '',
    parent_task_id     TEXT,
    status             TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
    total_subtasks     INTEGER NOT NULL CHECK (total_subtasks >= 0),
    completed_subtasks INTEGER NOT NULL DEFAULT 0 CHECK (completed_subtasks >= 0),
    failed_subtasks    INTEGER NOT NULL DEFAULT 0 CHECK (failed_subtasks >= 0),
    cancelled_subtasks INTEGER NOT NULL DEFAULT 0 CHECK (cancelled_subtasks >= 0),
    -- The validated subtasks as a JSON array; subtask ids and the dependency graph derive from it.
    subtasks           TEXT    NOT NULL,
    materialized       INTEGER NOT NULL DEFAULT 0 CHECK (materialized IN (0, 1)),
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

-- list_plans: newest first, optionally of one status.
CREATE INDEX IF NOT EXISTS plans_created ON plans (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS plans_status_created ON plans (status, created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS tasks (
    -- Insertion order, the tie-break of queue order.
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    title           TEXT    NOT NULL,
    description     TEXT    NOT NULL DEFAULT '',
    task_type       TEXT    NOT NULL,
    priority        INTEGER NOT NULL DEFAULT 1,
    status          TEXT    NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'assigned', 'in_progress', 'review_pending', 'approved',
                          'rejected', 'rework_needed', 'escalated', 'completed', 'failed',
                          'cancelled')),
    current_phase   TEXT    NOT NULL DEFAULT 'start',
    workflow        TEXT,
    payload         TEXT    NOT NULL DEFAULT '{}',
    assigned_worker TEXT,
    due_date        INTEGER,
    max_retries     INTEGER NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    parent_task_id  TEXT,
    plan_id         TEXT    REFERENCES plans (id),
    plan_subtask_id TEXT,
    -- How many dependencies have not completed yet; 0 with status queued means ready.
    pending_deps    INTEGER NOT NULL DEFAULT 0 CHECK (pending_deps >= 0),
    tags            TEXT    NOT NULL DEFAULT '[]',
    metadata        TEXT    NOT NULL DEFAULT '{}',
    run_at          INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    current_run_id  TEXT,
    idempotency_key TEXT    UNIQUE,
    result          TEXT,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- The next ready task: claims walk this index in queue order.
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0;
-- count_tasks, list_tasks by status, prune (oldest first by updated_at).
CREATE INDEX IF NOT EXISTS tasks_status_updated ON tasks (status, updated_at);
-- A plan's tasks, and "does this plan still have non-terminal tasks".
CREATE INDEX IF NOT EXISTS tasks_plan ON tasks (plan_id, status) WHERE plan_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS task_dependencies (
    task_id    TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    depends_on TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- The dependency's place in the task's `dependencies` list.
    position   INTEGER NOT NULL,
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;

-- A completed or failed task finds its dependents through this index.
CREATE INDEX IF NOT EXISTS task_dependencies_depends_on ON task_dependencies (depends_on);

CREATE TABLE IF NOT EXISTS runs (
    id               TEXT    PRIMARY KEY NOT NULL,
    task_id          TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- No foreign key: runs outlive an unregistered worker.
    worker_id        TEXT    NOT NULL,
    run_number       INTEGER NOT NULL CHECK (run_number >= 1),
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'running', 'success', 'failure', 'timeout', 'cancelled')),
    phase            TEXT    NOT NULL DEFAULT '',
    started_at       INTEGER NOT NULL,
    completed_at     INTEGER,
    -- The lease duration a heartbeat extends the run by.
    lease_ms         INTEGER,
    lease_expires_at INTEGER,
    result_data      TEXT,
    error_message    TEXT,
    output_log       TEXT,
    transcript       TEXT,
    UNIQUE (task_id, run_number)
);

-- The reaper's scan of expired leases.
CREATE INDEX IF NOT EXISTS runs_lease ON runs (lease_expires_at) WHERE status = 'running';
-- Heartbeats and unregistering find a worker's running runs.
CREATE INDEX IF NOT EXISTS runs_worker ON runs (worker_id) WHERE status = 'running';

CREATE TABLE IF NOT EXISTS workers (
    id              TEXT    PRIMARY KEY NOT NULL,
    role            TEXT    NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('active', 'idle', 'offline', 'error')),
    last_heartbeat  INTEGER NOT NULL,
    capabilities    TEXT    NOT NULL DEFAULT '[]',
    current_task_id TEXT,
    registered_at   INTEGER NOT NULL,
    metadata        TEXT    NOT NULL DEFAULT 'null'
);
