-- A batch's jobs are found through a table of their own, written once when a
-- job joins its batch, instead of an index on jobs (docs/benchmarks.md,
-- "Batches"). A job's state is in the predicate of the jobs table's partial
-- indexes, so every move of a job is a new row version with a new entry in
-- each of its indexes: `jobs_of_batch` cost every job of a batch two more
-- index entries (its fetch and its ack), a tenth of a batch's burn-down.
CREATE TABLE batch_jobs (
    batch_id bigint NOT NULL,
    job_id   bigint NOT NULL,
    PRIMARY KEY (batch_id, job_id)
);
INSERT INTO batch_jobs (batch_id, job_id)
    SELECT batch_id, id FROM jobs WHERE batch_id IS NOT NULL;
DROP INDEX jobs_of_batch;

-- As migration 20's, and a job deleted by hand (or pruned) leaves
-- batch_jobs too.
CREATE OR REPLACE FUNCTION grafter_batch_job_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM batch_jobs WHERE batch_id = OLD.batch_id AND job_id = OLD.id;
    END IF;
    IF current_setting('grafter.batch_counted', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        UPDATE batches SET
            total = total - 1,
            completed = completed - (OLD.state = 'completed')::int,
            dead = dead - (OLD.state = 'dead')::int,
            cancelled_jobs = cancelled_jobs - (OLD.state = 'cancelled')::int,
            expired = expired - (OLD.state = 'expired')::int,
            progress = progress - grafter_batch_share(OLD.state, OLD.progress)
        WHERE id = OLD.batch_id;
        RETURN NULL;
    END IF;
    UPDATE batches SET
        completed = completed + (NEW.state = 'completed')::int - (OLD.state = 'completed')::int,
        dead = dead + (NEW.state = 'dead')::int - (OLD.state = 'dead')::int,
        cancelled_jobs = cancelled_jobs + (NEW.state = 'cancelled')::int
                                        - (OLD.state = 'cancelled')::int,
        expired = expired + (NEW.state = 'expired')::int - (OLD.state = 'expired')::int,
        progress = progress + grafter_batch_share(NEW.state, NEW.progress)
                            - grafter_batch_share(OLD.state, OLD.progress)
    WHERE id = NEW.batch_id;
    RETURN NULL;
END
$$;
