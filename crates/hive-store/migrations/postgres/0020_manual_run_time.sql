-- When the last manual run was noted: its work is created just after, so a scheduler that
-- finds no work under its key yet treats it as about to exist for a while, rather than as
-- finished (which would start a slot beside it).
ALTER TABLE schedules ADD COLUMN last_manual_at TIMESTAMPTZ;
