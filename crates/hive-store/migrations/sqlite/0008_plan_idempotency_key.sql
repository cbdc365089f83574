-- A plan submitted with a key is submitted once: a second submission with the same key
-- (a retried request, a client that timed out after the commit) finds the first plan
-- instead of creating another. NULLs do not collide in a unique index.
ALTER TABLE plans ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX plans_idempotency_key ON plans (idempotency_key);
