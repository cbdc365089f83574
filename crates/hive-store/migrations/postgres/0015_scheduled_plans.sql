-- A schedule may now create a plan at each slot: its `task` column holds a task as its
-- object (as before) or `{"plan": …}`, which earlier builds cannot read (this version makes
-- them refuse the database rather than fail on every scheduler step). And a schedule may
-- skip a slot while the previous slot's task or plan is unfinished.
COMMENT ON COLUMN schedules.task IS
    'what each slot creates: a task as its JSON object, or {"plan": <plan template>}';
ALTER TABLE schedules ADD COLUMN overlap TEXT NOT NULL DEFAULT 'allow'
    CHECK (overlap IN ('allow', 'skip'));
