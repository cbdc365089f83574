-- Running tasks of one type: what a type's limit counts, in the flow probe and under the
-- scope's lock. Counted through `tasks_status` instead, the count walked every in-progress
-- entry left behind by finished tasks until vacuum (14,000 of them for 64 running during
-- a 20,000-task drain), and the probe took ~3 ms a round.
CREATE INDEX tasks_running_type ON tasks (task_type) WHERE status = 'in_progress';
