-- Job dependencies (docs/dependencies.md). A job with `depends_on` is
-- `pending` while any upstream is unfinished; `deps_left` counts those
-- upstreams (NULL for a job without dependencies). The move that finishes an
-- upstream releases or cancels its pending dependents in the same
-- transaction, by the triggers below, whose WHEN is false for jobs nothing
-- depends on (`has_dependents`): they pay only that test. The writer
-- connection turns recursive triggers on, so a cancel cascades through
-- dependents of dependents (at most SQLite's trigger depth, 1000, deep).
ALTER TABLE jobs ADD COLUMN deps_left INTEGER;
-- 'run' runs the dependent when an upstream fails; NULL cancels it.
ALTER TABLE jobs ADD COLUMN on_dependency_failure TEXT;
ALTER TABLE jobs ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0;

-- Edges: job_id waits for depends_on. By upstream for the triggers, by
-- dependent for GET /v1/jobs/{id}/dependencies.
CREATE TABLE job_dependencies (
    depends_on INTEGER NOT NULL,
    job_id     INTEGER NOT NULL,
    PRIMARY KEY (depends_on, job_id)
) WITHOUT ROWID;
CREATE INDEX job_dependencies_of_job ON job_dependencies (job_id, depends_on);

-- An upstream finished (or was retried by hand, and so is unfinished again):
-- its pending dependents count it. A failure cancels the dependents whose
-- policy is cancel; the last upstream to finish makes the dependent due.
CREATE TRIGGER jobs_upstream_moved AFTER UPDATE OF state ON jobs
WHEN NEW.has_dependents
    AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired'))
        IS NOT (NEW.state IN ('completed', 'dead', 'cancelled', 'expired'))
BEGIN
    UPDATE jobs SET
        deps_left = deps_left
            + CASE WHEN NEW.state IN ('completed', 'dead', 'cancelled', 'expired') THEN -1 ELSE 1 END,
        state = CASE
            WHEN NEW.state IN ('dead', 'cancelled', 'expired') AND on_dependency_failure IS NULL
                THEN 'cancelled'
            WHEN NEW.state IN ('completed', 'dead', 'cancelled', 'expired') AND deps_left = 1
                THEN CASE WHEN run_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
                          THEN 'scheduled' ELSE 'available' END
            ELSE state END,
        finished_at = CASE
            WHEN NEW.state IN ('dead', 'cancelled', 'expired') AND on_dependency_failure IS NULL
                THEN CAST(unixepoch('subsec') * 1000000 AS INTEGER)
            ELSE finished_at END
    WHERE id IN (SELECT job_id FROM job_dependencies WHERE depends_on = NEW.id)
      AND state = 'pending';
    SELECT grafter_released(queue) FROM jobs
    WHERE id IN (SELECT job_id FROM job_dependencies WHERE depends_on = NEW.id)
      AND state = 'available' AND deps_left = 0;
END;

-- An unfinished upstream deleted by hand fails its pending dependents as a
-- cancel would; its edges go with it.
CREATE TRIGGER jobs_upstream_deleted AFTER DELETE ON jobs WHEN OLD.has_dependents
BEGIN
    UPDATE jobs SET
        deps_left = deps_left - 1,
        state = CASE
            WHEN on_dependency_failure IS NULL THEN 'cancelled'
            WHEN deps_left = 1
                THEN CASE WHEN run_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
                          THEN 'scheduled' ELSE 'available' END
            ELSE state END,
        finished_at = CASE WHEN on_dependency_failure IS NULL
                           THEN CAST(unixepoch('subsec') * 1000000 AS INTEGER)
                           ELSE finished_at END
    WHERE id IN (SELECT job_id FROM job_dependencies WHERE depends_on = OLD.id)
      AND state = 'pending'
      AND OLD.state NOT IN ('completed', 'dead', 'cancelled', 'expired');
    SELECT grafter_released(queue) FROM jobs
    WHERE id IN (SELECT job_id FROM job_dependencies WHERE depends_on = OLD.id)
      AND state = 'available' AND deps_left = 0;
    DELETE FROM job_dependencies WHERE depends_on = OLD.id;
END;

-- A dependent deleted (by hand or pruned) takes its edges with it.
CREATE TRIGGER jobs_dependent_deleted AFTER DELETE ON jobs WHEN OLD.deps_left IS NOT NULL
BEGIN
    DELETE FROM job_dependencies WHERE job_id = OLD.id;
END;

-- A finished dependent retried by hand waits again for the upstreams that
-- are unfinished now; one that failed counts as done (the retry asked for
-- the job to run).
CREATE TRIGGER jobs_dependent_retried AFTER UPDATE OF state ON jobs
WHEN NEW.deps_left IS NOT NULL
    AND OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
    AND NEW.state IN ('scheduled', 'available')
BEGIN
    UPDATE jobs SET deps_left = (
        SELECT count(*) FROM job_dependencies AS d JOIN jobs AS u ON u.id = d.depends_on
        WHERE d.job_id = NEW.id
          AND u.state NOT IN ('completed', 'dead', 'cancelled', 'expired'))
    WHERE id = NEW.id;
    UPDATE jobs SET state = 'pending' WHERE id = NEW.id AND deps_left > 0;
END;
