-- How deep a job sits in chains of dependencies, bounded at 100
-- (grafter_core::dependency::MAX_DEPTH). A failure cancels its dependents
-- trigger by trigger, one nested trigger per level, and SQLite refuses more
-- than 1000: the failure rolled back and the rescuer failed on the job every
-- pass. A job's depth is one more than its deepest upstream's; a batch's is
-- its deepest job's, so a chain through batches counts too. (PostgreSQL's
-- stack holds fewer levels than SQLite's limit; one bound serves both.)
ALTER TABLE job_dependencies ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
ALTER TABLE batch_dependencies ADD COLUMN depth INTEGER NOT NULL DEFAULT 1;
ALTER TABLE batches ADD COLUMN dependency_depth INTEGER NOT NULL DEFAULT 0;

-- A new edge's depth; past the bound the insert fails with the message the
-- store recognizes (dependencies.rs); the dependent's batch deepens.
CREATE TRIGGER job_dependencies_depth AFTER INSERT ON job_dependencies
BEGIN
    UPDATE job_dependencies SET depth = 1 + max(
        coalesce((SELECT max(depth) FROM job_dependencies WHERE job_id = NEW.depends_on), 0),
        coalesce((SELECT max(depth) FROM batch_dependencies WHERE job_id = NEW.depends_on), 0))
    WHERE depends_on = NEW.depends_on AND job_id = NEW.job_id;
    SELECT RAISE(ABORT, 'grafter: dependency chain too deep')
    WHERE (SELECT depth FROM job_dependencies
           WHERE depends_on = NEW.depends_on AND job_id = NEW.job_id) > 100;
    UPDATE batches SET dependency_depth = d.depth
    FROM (SELECT depth FROM job_dependencies
          WHERE depends_on = NEW.depends_on AND job_id = NEW.job_id) AS d
    WHERE batches.id = (SELECT batch_id FROM jobs WHERE id = NEW.job_id)
      AND batches.dependency_depth < d.depth;
END;

CREATE TRIGGER batch_dependencies_depth AFTER INSERT ON batch_dependencies
BEGIN
    UPDATE batch_dependencies SET depth = 1 + coalesce(
        (SELECT dependency_depth FROM batches WHERE id = NEW.batch_id), 0)
    WHERE batch_id = NEW.batch_id AND job_id = NEW.job_id;
    SELECT RAISE(ABORT, 'grafter: dependency chain too deep')
    WHERE (SELECT depth FROM batch_dependencies
           WHERE batch_id = NEW.batch_id AND job_id = NEW.job_id) > 100;
    UPDATE batches SET dependency_depth = d.depth
    FROM (SELECT depth FROM batch_dependencies
          WHERE batch_id = NEW.batch_id AND job_id = NEW.job_id) AS d
    WHERE batches.id = (SELECT batch_id FROM jobs WHERE id = NEW.job_id)
      AND batches.dependency_depth < d.depth;
END;
