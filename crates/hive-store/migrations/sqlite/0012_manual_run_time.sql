-- When the last manual run was noted: its work is created just after, so a scheduler that
-- finds no work under its key yet treats it as about to exist for a while, rather than as
-- finished (which would start a slot beside it).
ALTER TABLE schedules ADD COLUMN last_manual_at INTEGER;
-- When the last slot started was claimed: a starter stalled longer than a while since is
-- presumed dead, measured from its claim (a slot may be claimed long after its time).
ALTER TABLE schedules ADD COLUMN last_claimed_at INTEGER;
