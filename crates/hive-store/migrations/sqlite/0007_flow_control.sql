-- Flow control: limits per task type or concurrency key, and paused types, enforced inside
-- every claim (see hive-store's claim of flow-controlled tasks).
ALTER TABLE tasks ADD COLUMN concurrency_key TEXT;
ALTER TABLE tasks ADD COLUMN concurrency_limit INTEGER CHECK (concurrency_limit > 0);

-- Stored per scope; a row with no limit that is not paused is deleted instead.
CREATE TABLE flow_rules (
    kind        TEXT    NOT NULL CHECK (kind IN ('type', 'key')),
    name        TEXT    NOT NULL,
    max_running INTEGER CHECK (max_running > 0),
    rate_max    INTEGER CHECK (rate_max > 0),
    rate_per_us INTEGER CHECK (rate_per_us > 0),
    paused      INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, name),
    CHECK ((rate_max IS NULL) = (rate_per_us IS NULL))
);

-- Starts of rate-limited scopes inside their window; older ones are pruned by claims.
CREATE TABLE flow_starts (
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX flow_starts_scope ON flow_starts (kind, name, started_at);

-- Ready tasks of one type in queue order: the claim reads limited types' heads here
-- instead of walking every ready task.
CREATE INDEX tasks_ready_type ON tasks (task_type, priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0;
-- Keyed tasks only, so tasks without a key pay nothing for these.
CREATE INDEX tasks_ready_keyed ON tasks (priority DESC, seq)
    WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL;
CREATE INDEX tasks_running_key ON tasks (concurrency_key)
    WHERE status = 'in_progress' AND concurrency_key IS NOT NULL;
