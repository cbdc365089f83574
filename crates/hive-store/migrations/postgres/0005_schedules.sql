-- Schedules: a cron expression in a time zone creating a task at each slot. Each slot's task
-- carries the idempotency key `schedule:<name>:<slot>`, so however many schedulers fire a
-- slot, it creates one task; `done_until` moves compare-and-set.
CREATE TABLE schedules (
    name        text        PRIMARY KEY,
    cron        text        NOT NULL,
    timezone    text        NOT NULL,
    task        jsonb       NOT NULL CHECK (jsonb_typeof(task) = 'object'),
    enabled     boolean     NOT NULL,
    missed      jsonb       NOT NULL CHECK (jsonb_typeof(missed) = 'object'),
    done_until  timestamptz NOT NULL,
    last_fired  timestamptz,
    next_slot   timestamptz,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_slot) WHERE enabled;
