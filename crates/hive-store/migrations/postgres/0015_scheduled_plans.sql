-- A schedule may now create a plan at each slot: its `task` column holds a task as its
-- object (as before) or `{"plan": …}`, which earlier builds cannot read. This migration
-- changes no data; its version makes those builds refuse the database rather than fail
-- on every scheduler step once a plan schedule exists.
COMMENT ON COLUMN schedules.task IS
    'what each slot creates: a task as its JSON object, or {"plan": <plan template>}';
