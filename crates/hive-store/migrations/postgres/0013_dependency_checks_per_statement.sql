-- A plan's dependency rows were checked against `tasks` by two foreign keys: Postgres runs
-- one query per row and key, which made up 70% of inserting them (a plan of 10,000
-- subtasks with 19,996 dependencies: 270 of 380 ms). The same guarantees, checked once per
-- statement over every row it wrote: each task a row names must exist, and is locked as a
-- foreign key locks it (KEY SHARE) so that it cannot be deleted before the row commits;
-- deleting tasks deletes the rows that name them, as ON DELETE CASCADE did. Task ids never
-- change, so no update of `tasks.id` is guarded. The functions name this schema as their
-- search_path (below), so they find its tables from any session.

ALTER TABLE task_dependencies DROP CONSTRAINT task_dependencies_task_id_fkey;
ALTER TABLE task_dependencies DROP CONSTRAINT task_dependencies_depends_on_fkey;

CREATE FUNCTION task_dependencies_name_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing uuid;
BEGIN
    -- A lateral lookup by primary key per task named, whatever the statement's size (the
    -- plan is cached for the session).
    SELECT named.id INTO missing
    FROM (SELECT task_id AS id FROM written UNION SELECT depends_on FROM written) named
    LEFT JOIN LATERAL (SELECT true AS found FROM tasks t WHERE t.id = named.id FOR KEY SHARE) k
        ON true
    WHERE k.found IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'task_dependencies names task %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation', TABLE = 'task_dependencies';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_dependencies_inserted AFTER INSERT ON task_dependencies
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT
    EXECUTE FUNCTION task_dependencies_name_tasks();
CREATE TRIGGER task_dependencies_updated AFTER UPDATE ON task_dependencies
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT
    EXECUTE FUNCTION task_dependencies_name_tasks();

CREATE FUNCTION tasks_deleted_drop_dependencies() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- By index whatever the number deleted: the plan is cached for the session, and a join
    -- planned for a prune's thousands would scan the whole table for one task's delete.
    DELETE FROM task_dependencies WHERE task_id = ANY (ARRAY(SELECT id FROM removed));
    DELETE FROM task_dependencies WHERE depends_on = ANY (ARRAY(SELECT id FROM removed));
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_deleted AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT
    EXECUTE FUNCTION tasks_deleted_drop_dependencies();

-- `TRUNCATE tasks CASCADE` emptied the dependency rows through the keys; now this does.
CREATE FUNCTION tasks_truncated_drop_dependencies() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_dependencies;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_truncated AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_truncated_drop_dependencies();

-- The schema the tables were just created in, then only `pg_temp` (last, so a session's
-- temporary tables cannot stand in for these).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION task_dependencies_name_tasks() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION tasks_deleted_drop_dependencies() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION tasks_truncated_drop_dependencies() SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
