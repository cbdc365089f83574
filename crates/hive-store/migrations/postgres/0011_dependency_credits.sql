-- A finish counts its completed subtasks' dependents down, and each count is a row update
-- whose lock lasts until COMMIT. A join that many subtasks feed is counted down by every
-- batch that completes one of them, so workers finishing one fan-out took turns on that
-- row: in `plan-wide`, four fifths of the slow finishes' time was spent waiting for it.
-- A finish that finds a dependent's row locked by another transaction leaves a credit here
-- instead of waiting, and folds it into the row right after its own commit, in the
-- background; the reaper folds what a crash or a failed fold leaves. A dependent nobody
-- else holds is counted down in place, as before. A task's dependencies recounted from
-- their statuses (requeued from a finished state) drop its credits.
--
-- No foreign key: its check would lock the dependent's row in key-share mode and wait for a
-- transaction that holds it for update, the very wait this table exists to avoid. A credit
-- whose task is gone is deleted by the next fold like any other and counts nothing.
CREATE TABLE dependency_credits (
    task_id uuid    NOT NULL,
    n       integer NOT NULL CHECK (n > 0)
);
CREATE INDEX dependency_credits_task ON dependency_credits (task_id);
