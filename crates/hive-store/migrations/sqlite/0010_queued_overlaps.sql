-- A schedule may now queue a slot behind the previous slot's unfinished task or plan
-- (`overlap = 'queue'`), which earlier builds cannot read: this version makes them refuse
-- the database rather than fail on every scheduler step. And a schedule notes its last
-- manual run's idempotency key (`last_manual`), whose work holds back a schedule that skips
-- or queues overlaps as a slot's does. SQLite cannot change a column's CHECK in place, so
-- the table is built again with the same rows.
CREATE TABLE schedules_new (
    name        TEXT    PRIMARY KEY,
    cron        TEXT    NOT NULL,
    timezone    TEXT    NOT NULL,
    task        TEXT    NOT NULL CHECK (json_valid(task)),
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    missed      TEXT    NOT NULL CHECK (json_valid(missed)),
    done_until  INTEGER NOT NULL,
    last_fired  INTEGER,
    next_slot   INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    overlap     TEXT    NOT NULL DEFAULT 'allow'
        CHECK (overlap IN ('allow', 'skip', 'queue')),
    last_manual TEXT
);
INSERT INTO schedules_new (name, cron, timezone, task, enabled, missed, done_until,
                           last_fired, next_slot, created_at, updated_at, overlap)
    SELECT name, cron, timezone, task, enabled, missed, done_until,
           last_fired, next_slot, created_at, updated_at, overlap
    FROM schedules;
DROP TABLE schedules;
ALTER TABLE schedules_new RENAME TO schedules;
CREATE INDEX schedules_due ON schedules (next_slot) WHERE enabled = 1;
