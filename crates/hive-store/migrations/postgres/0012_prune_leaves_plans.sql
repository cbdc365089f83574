-- `prune_tasks` deletes finished tasks outside plans only: a plan's subtasks are its state
-- (outputs its dependents read, what a retry builds on, what `hive plan status` shows) and
-- go with their plan (`prune_plans`). The prune's index holds only the tasks it may delete,
-- so old subtasks of plans nobody pruned are never walked past, and finishing a plan's
-- subtask writes one index entry fewer.
DROP INDEX tasks_terminal_updated;
CREATE INDEX tasks_terminal_updated ON tasks (updated_at, id)
    WHERE plan_id IS NULL AND status IN ('completed', 'failed', 'cancelled');
