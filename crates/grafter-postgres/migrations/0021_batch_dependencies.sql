-- Jobs that wait for batches (`depends_on_batches`, docs/dependencies.md).
-- A dependent's `deps_left` counts the unfinished batches it waits for
-- beside its unfinished upstream jobs. The batch row's own move into
-- finished (`finished_at` set, its final state with it) releases or cancels
-- its pending dependents in that transaction; a batch reopened (a job of it
-- retried by hand) is unfinished again for those still pending, as a job
-- retried is. Hung on the batch row, not on the functions that count its
-- jobs (migration 15), so how those counts are written may change without
-- this. WHEN is false for batches nothing waits for. A dependent is linked
-- after its inserting transaction has written the batch's row
-- (`has_dependents`), so a batch finishing meanwhile either is seen
-- finished by the link or waits for it and then finds the edge.
ALTER TABLE batches ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

-- Edges: job_id waits for batch_id. By batch for the trigger and the
-- pruner, by job for GET /v1/jobs/{id}/dependencies and a retry's recount.
CREATE TABLE batch_dependencies (
    batch_id bigint NOT NULL,
    job_id   bigint NOT NULL,
    PRIMARY KEY (batch_id, job_id)
);
CREATE INDEX batch_dependencies_of_job ON batch_dependencies (job_id, batch_id);

CREATE FUNCTION grafter_batch_dependents_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released record;
    now timestamptz := clock_timestamp();
    finished boolean;
    failed boolean;
    -- As in grafter_upstream_moved (migration 18): the dependents moved
    -- here are counted by their own batches, even inside a statement that
    -- counts its own batch's jobs.
    counted boolean := current_setting('grafter.batch_counted', true) = 'on';
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- A pruned batch takes its edges with it (the pruner keeps a batch
        -- while a job waiting for it is unfinished).
        DELETE FROM batch_dependencies WHERE batch_id = OLD.id;
        RETURN NULL;
    END IF;
    finished := NEW.finished_at IS NOT NULL;
    failed := finished AND NEW.state <> 'succeeded';
    IF counted THEN
        PERFORM set_config('grafter.batch_counted', 'off', true);
    END IF;
    FOR released IN
        UPDATE jobs SET
            deps_left = deps_left + CASE WHEN finished THEN -1 ELSE 1 END,
            state = CASE WHEN failed AND on_dependency_failure IS NULL THEN 'cancelled'
                         WHEN finished AND deps_left = 1
                             THEN CASE WHEN run_at > now THEN 'scheduled' ELSE 'available' END
                         ELSE state END,
            finished_at = CASE WHEN failed AND on_dependency_failure IS NULL THEN now
                               ELSE finished_at END
        WHERE id IN (SELECT job_id FROM batch_dependencies WHERE batch_id = NEW.id)
          AND state = 'pending'
        RETURNING queue, state
    LOOP
        IF released.state = 'available' THEN
            PERFORM pg_notify(grafter_v1_channel(), E'\n' || released.queue);
        END IF;
    END LOOP;
    IF counted THEN
        PERFORM set_config('grafter.batch_counted', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_dependents_moved AFTER UPDATE OF finished_at ON batches
    FOR EACH ROW
    WHEN (NEW.has_dependents AND (OLD.finished_at IS NULL) <> (NEW.finished_at IS NULL))
    EXECUTE FUNCTION grafter_batch_dependents_moved();
CREATE TRIGGER batches_dependents_deleted AFTER DELETE ON batches
    FOR EACH ROW WHEN (OLD.has_dependents)
    EXECUTE FUNCTION grafter_batch_dependents_moved();

-- As migration 18's, with the batches: a deleted dependent takes its batch
-- edges with it too, and a finished dependent retried by hand waits again
-- for the upstream jobs and batches that are unfinished now.
CREATE OR REPLACE FUNCTION grafter_dependencies_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- An unfinished upstream deleted by hand fails its dependents as a
        -- cancel would; a deleted dependent takes its edges with it.
        IF OLD.has_dependents THEN
            IF OLD.state NOT IN ('completed', 'dead', 'cancelled', 'expired') THEN
                PERFORM grafter_upstream_moved(OLD.id, -1, true);
            END IF;
            DELETE FROM job_dependencies WHERE depends_on = OLD.id;
        END IF;
        IF OLD.deps_left IS NOT NULL THEN
            DELETE FROM job_dependencies WHERE job_id = OLD.id;
            DELETE FROM batch_dependencies WHERE job_id = OLD.id;
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.has_dependents
       AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired'))
           IS DISTINCT FROM (NEW.state IN ('completed', 'dead', 'cancelled', 'expired')) THEN
        IF NEW.state IN ('completed', 'dead', 'cancelled', 'expired') THEN
            PERFORM grafter_upstream_moved(NEW.id, -1, NEW.state <> 'completed');
        ELSE
            PERFORM grafter_upstream_moved(NEW.id, 1, false);
        END IF;
    END IF;
    -- A finished dependent retried by hand waits again for the upstreams
    -- that are unfinished now; one that failed counts as done (the retry
    -- asked for the job to run).
    IF NEW.deps_left IS NOT NULL
       AND OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
       AND NEW.state IN ('scheduled', 'available') THEN
        UPDATE jobs SET
            deps_left = u.unfinished,
            state = CASE WHEN u.unfinished > 0 THEN 'pending' ELSE jobs.state END
        FROM (SELECT ((SELECT count(*)
                       FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
                       WHERE d.job_id = NEW.id
                         AND j.state NOT IN ('completed', 'dead', 'cancelled', 'expired'))
                    + (SELECT count(*)
                       FROM batch_dependencies AS d JOIN batches AS b ON b.id = d.batch_id
                       WHERE d.job_id = NEW.id AND b.finished_at IS NULL))::integer
                     AS unfinished) AS u
        WHERE jobs.id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
