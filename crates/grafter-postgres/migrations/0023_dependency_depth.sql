-- How deep a job sits in chains of dependencies, bounded at 100
-- (grafter_core::dependency::MAX_DEPTH). A failure cancels its dependents
-- trigger by trigger, one nested trigger call per level: about 350 levels
-- exhaust PostgreSQL's stack (max_stack_depth 2 MB), which rolled back the
-- failure (a 500) and made the rescuer fail on the job every pass. A job's
-- depth is one more than its deepest upstream's; a batch's is its deepest
-- job's, so a chain through batches counts too.
ALTER TABLE job_dependencies ADD COLUMN depth integer NOT NULL DEFAULT 1;
ALTER TABLE batch_dependencies ADD COLUMN depth integer NOT NULL DEFAULT 1;
ALTER TABLE batches ADD COLUMN dependency_depth integer NOT NULL DEFAULT 0;

-- A job's depth: 0 for a job that waits for nothing.
CREATE FUNCTION grafter_dependency_depth(job bigint) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT greatest((SELECT max(depth) FROM job_dependencies WHERE job_id = job),
                    (SELECT max(depth) FROM batch_dependencies WHERE job_id = job),
                    0)
$$;

-- Sets a new edge's depth, refuses one past the bound (SQLSTATE GRD01, the
-- field `depends_on`: the stores name the exact entry), and deepens the
-- dependent's batch. The batch's row is written only when it deepens.
CREATE FUNCTION grafter_dependency_linked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'job_dependencies' THEN
        NEW.depth := grafter_dependency_depth(NEW.depends_on) + 1;
    ELSE
        NEW.depth := coalesce((SELECT dependency_depth FROM batches WHERE id = NEW.batch_id), 0) + 1;
    END IF;
    IF NEW.depth > 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'GRD01', COLUMN = 'depends_on',
            MESSAGE = format('job %s would wait at the end of a chain of %s dependencies; '
                             'a chain may be at most 100 deep', NEW.job_id, NEW.depth);
    END IF;
    UPDATE batches SET dependency_depth = NEW.depth
    WHERE id = (SELECT batch_id FROM jobs WHERE id = NEW.job_id) AND dependency_depth < NEW.depth;
    RETURN NEW;
END $$;

CREATE TRIGGER job_dependencies_depth BEFORE INSERT ON job_dependencies
    FOR EACH ROW EXECUTE FUNCTION grafter_dependency_linked();
CREATE TRIGGER batch_dependencies_depth BEFORE INSERT ON batch_dependencies
    FOR EACH ROW EXECUTE FUNCTION grafter_dependency_linked();
