-- A schedule may now create a plan at each slot: its `task` column holds a task as its
-- object (as before) or `{"plan": …}`, which earlier builds cannot read. This migration
-- changes no data; its version makes those builds refuse the database rather than fail
-- on every scheduler step once a plan schedule exists. (SQLite keeps no column comments.)
SELECT 1;
