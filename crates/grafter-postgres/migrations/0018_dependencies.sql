-- Job dependencies (docs/dependencies.md). A job with `depends_on` is
-- `pending` while any upstream is unfinished; `deps_left` counts those
-- upstreams (NULL for a job without dependencies). The move that finishes an
-- upstream releases or cancels its pending dependents in the same
-- transaction, by the row triggers below, whose WHEN is false for jobs
-- nothing depends on (`has_dependents`): they pay only that test. Two
-- upstreams of one dependent finishing at once on two connections both
-- write the dependent's row: the second waits for the first's row lock and
-- then counts from what the first left, so exactly one of them releases it.
-- A cancelled dependent cancels its own dependents by the same trigger.
-- The new state. NOT VALID: every row already meets the narrower check it
-- replaces, and validating would read the whole table under the
-- migration's lock; new and updated rows are checked all the same.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('pending', 'scheduled', 'available', 'running', 'retryable', 'completed',
                     'dead', 'cancelled', 'expired')) NOT VALID;
-- Nullable or with a constant default: adding them rewrites no row.
ALTER TABLE jobs ADD COLUMN deps_left integer;
-- 'run' runs the dependent when an upstream fails; NULL cancels it.
ALTER TABLE jobs ADD COLUMN on_dependency_failure text;
ALTER TABLE jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

-- Edges: job_id waits for depends_on. By upstream for the triggers, by
-- dependent for GET /v1/jobs/{id}/dependencies.
CREATE TABLE job_dependencies (
    depends_on bigint NOT NULL,
    job_id     bigint NOT NULL,
    PRIMARY KEY (depends_on, job_id)
);
CREATE INDEX job_dependencies_of_job ON job_dependencies (job_id, depends_on);

-- Counts an upstream's move into (finished) or out of (retried by hand)
-- the finished states for its pending dependents; `failed` cancels those
-- whose policy is cancel; the last upstream to finish makes a dependent due,
-- and wakes the nodes' waiters of its queue when the transaction commits.
CREATE FUNCTION grafter_upstream_moved(upstream bigint, delta integer, failed boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    released record;
    now timestamptz := clock_timestamp();
    -- A batch cancel counts its own jobs (grafter.batch_counted, migration
    -- 15); the dependents cancelled here are not among them (its waiting
    -- jobs are all cancelled before any row trigger runs), so their
    -- batches count them as usual.
    counted boolean := current_setting('grafter.batch_counted', true) = 'on';
BEGIN
    IF counted THEN
        PERFORM set_config('grafter.batch_counted', 'off', true);
    END IF;
    FOR released IN
        UPDATE jobs SET
            deps_left = deps_left + delta,
            state = CASE WHEN failed AND on_dependency_failure IS NULL THEN 'cancelled'
                         WHEN delta < 0 AND deps_left = 1
                             THEN CASE WHEN run_at > now THEN 'scheduled' ELSE 'available' END
                         ELSE state END,
            finished_at = CASE WHEN failed AND on_dependency_failure IS NULL THEN now
                               ELSE finished_at END
        WHERE id IN (SELECT job_id FROM job_dependencies WHERE depends_on = upstream)
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
END
$$;

CREATE FUNCTION grafter_dependencies_moved() RETURNS trigger LANGUAGE plpgsql AS $$
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
        FROM (SELECT count(*)::integer AS unfinished
              FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
              WHERE d.job_id = NEW.id
                AND j.state NOT IN ('completed', 'dead', 'cancelled', 'expired')) AS u
        WHERE jobs.id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_dependencies_moved AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN ((NEW.has_dependents
           AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired'))
               IS DISTINCT FROM (NEW.state IN ('completed', 'dead', 'cancelled', 'expired')))
          OR (NEW.deps_left IS NOT NULL
              AND OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
              AND NEW.state IN ('scheduled', 'available')))
    EXECUTE FUNCTION grafter_dependencies_moved();
CREATE TRIGGER jobs_dependencies_deleted AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.has_dependents OR OLD.deps_left IS NOT NULL)
    EXECUTE FUNCTION grafter_dependencies_moved();
