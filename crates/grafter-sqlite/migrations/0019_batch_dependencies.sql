-- Jobs that wait for batches (`depends_on_batches`, docs/dependencies.md).
-- A dependent's `deps_left` counts the unfinished batches it waits for
-- beside its unfinished upstream jobs. The batch row's own move into
-- finished (`finished_at` set, its final state with it) releases or cancels
-- its pending dependents in that transaction; a batch reopened (a job of it
-- retried by hand) is unfinished again for those still pending, as a job
-- retried is. Hung on the batch row, not on the jobs triggers that count
-- its jobs (migration 13), so how those counts are written may change
-- without this. WHEN is false for batches nothing waits for.
ALTER TABLE batches ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0;

-- Edges: job_id waits for batch_id. By batch for the trigger and the
-- pruner, by job for GET /v1/jobs/{id}/dependencies and a retry's recount.
CREATE TABLE batch_dependencies (
    batch_id INTEGER NOT NULL,
    job_id   INTEGER NOT NULL,
    PRIMARY KEY (batch_id, job_id)
) WITHOUT ROWID;
CREATE INDEX batch_dependencies_of_job ON batch_dependencies (job_id, batch_id);

CREATE TRIGGER batches_upstream_moved AFTER UPDATE OF finished_at ON batches
WHEN NEW.has_dependents AND (OLD.finished_at IS NULL) IS NOT (NEW.finished_at IS NULL)
BEGIN
    UPDATE jobs SET
        deps_left = deps_left + CASE WHEN NEW.finished_at IS NOT NULL THEN -1 ELSE 1 END,
        state = CASE
            WHEN NEW.finished_at IS NOT NULL AND NEW.state <> 'succeeded'
                 AND on_dependency_failure IS NULL
                THEN 'cancelled'
            WHEN NEW.finished_at IS NOT NULL AND deps_left = 1
                THEN CASE WHEN run_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
                          THEN 'scheduled' ELSE 'available' END
            ELSE state END,
        finished_at = CASE
            WHEN NEW.finished_at IS NOT NULL AND NEW.state <> 'succeeded'
                 AND on_dependency_failure IS NULL
                THEN CAST(unixepoch('subsec') * 1000000 AS INTEGER)
            ELSE finished_at END
    WHERE id IN (SELECT job_id FROM batch_dependencies WHERE batch_id = NEW.id)
      AND state = 'pending';
    SELECT grafter_released(queue) FROM jobs
    WHERE id IN (SELECT job_id FROM batch_dependencies WHERE batch_id = NEW.id)
      AND state = 'available' AND deps_left = 0;
END;

-- A pruned batch takes its edges with it (the pruner keeps a batch while a
-- job waiting for it is unfinished).
CREATE TRIGGER batches_upstream_deleted AFTER DELETE ON batches WHEN OLD.has_dependents
BEGIN
    DELETE FROM batch_dependencies WHERE batch_id = OLD.id;
END;

-- A dependent deleted (by hand or pruned) takes its batch edges with it.
CREATE TRIGGER jobs_batch_dependent_deleted AFTER DELETE ON jobs WHEN OLD.deps_left IS NOT NULL
BEGIN
    DELETE FROM batch_dependencies WHERE job_id = OLD.id;
END;

-- As migration 16's, counting the unfinished batches too: a finished
-- dependent retried by hand waits again for the upstream jobs and batches
-- that are unfinished now.
DROP TRIGGER jobs_dependent_retried;
CREATE TRIGGER jobs_dependent_retried AFTER UPDATE OF state ON jobs
WHEN NEW.deps_left IS NOT NULL
    AND OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
    AND NEW.state IN ('scheduled', 'available')
BEGIN
    UPDATE jobs SET deps_left = (
        SELECT count(*) FROM job_dependencies AS d JOIN jobs AS u ON u.id = d.depends_on
        WHERE d.job_id = NEW.id
          AND u.state NOT IN ('completed', 'dead', 'cancelled', 'expired')) + (
        SELECT count(*) FROM batch_dependencies AS d JOIN batches AS b ON b.id = d.batch_id
        WHERE d.job_id = NEW.id AND b.finished_at IS NULL)
    WHERE id = NEW.id;
    UPDATE jobs SET state = 'pending' WHERE id = NEW.id AND deps_left > 0;
END;
