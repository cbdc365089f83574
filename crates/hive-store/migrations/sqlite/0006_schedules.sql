-- Schedules: a cron expression in a time zone creating a task at each slot. Each slot's task
-- carries the idempotency key `schedule:<name>:<slot>`, so however many schedulers fire a
-- slot, it creates one task; `done_until` moves compare-and-set.
CREATE TABLE schedules (
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
    updated_at  INTEGER NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_slot) WHERE enabled = 1;
