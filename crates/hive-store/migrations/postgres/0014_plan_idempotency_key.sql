-- A plan submitted with a key is submitted once: a second submission with the same key
-- (a retried request, a client that timed out after the commit) finds the first plan
-- instead of creating another. Only keyed plans are indexed.
ALTER TABLE plans ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX plans_idempotency_key ON plans (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Plans are read through this view; new columns may only be added at its end.
CREATE OR REPLACE VIEW plans_counted AS
SELECT p.id, p.title, p.description, p.parent_task_id, p.status, p.total_subtasks,
    p.completed_subtasks + coalesce(s.completed, 0) AS completed_subtasks,
    p.failed_subtasks + coalesce(s.failed, 0) AS failed_subtasks,
    p.cancelled_subtasks + coalesce(s.cancelled, 0) AS cancelled_subtasks,
    p.materialized, p.created_at, p.updated_at, p.metadata, p.idempotency_key
FROM plans p
LEFT JOIN LATERAL (
    SELECT sum(t.completed)::bigint AS completed, sum(t.failed)::bigint AS failed,
        sum(t.cancelled)::bigint AS cancelled
    FROM plan_tallies t WHERE t.plan_id = p.id
) s ON true;
