-- A running subtask that another subtask's spawn made a dependency of. Its finish then
-- counts down its dependents in a statement of its own rather than in the one-statement
-- finish, whose snapshot, taken before it waited for the spawn's lock on this row, would
-- not show the dependency the spawn added (and the dependent would wait for good).
-- Adding a column with a constant default rewrites nothing.
ALTER TABLE tasks ADD COLUMN late_dependents BOOLEAN NOT NULL DEFAULT false;
