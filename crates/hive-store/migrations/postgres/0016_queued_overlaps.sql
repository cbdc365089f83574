-- A schedule may now queue a slot behind the previous slot's unfinished task or plan
-- (`overlap = 'queue'`), which earlier builds cannot read: this version makes them refuse
-- the database rather than fail on every scheduler step. And a schedule notes its last
-- manual run's idempotency key, whose work holds back a schedule that skips or queues
-- overlaps as a slot's does.
ALTER TABLE schedules DROP CONSTRAINT schedules_overlap_check,
    ADD CONSTRAINT schedules_overlap_check CHECK (overlap IN ('allow', 'skip', 'queue'));
ALTER TABLE schedules ADD COLUMN last_manual TEXT;
