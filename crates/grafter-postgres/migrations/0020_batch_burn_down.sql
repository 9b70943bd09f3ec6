-- A 100,000-job batch burned down at a quarter of the speed of the same jobs
-- outside a batch (docs/benchmarks.md, "Batches"). Mended here:
--
-- A batch ack counts its batches' moves itself, one write of each batch's row
-- per statement instead of one per job: with every job's ack writing the same
-- row, the acks queued on that row's lock and each walked the versions the
-- ones before had left.
--
-- Settling moves from the row trigger's body to a trigger on the batch's own
-- row, so that it follows every write of the counts, whoever makes it: the row
-- trigger on jobs, a statement that counts its own moves (the batch ack, a
-- batch cancel) or an insert into the batch. PostgreSQL fires a table's
-- triggers in the order of their names: `batches_written_then_settled` runs
-- after `batches_watched_changed`, so a stream's log has the counts that
-- finished a batch before the state that says so.
CREATE FUNCTION grafter_batch_counts_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM grafter_batch_settle(NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_written_then_settled AFTER UPDATE OF total, completed, dead,
        cancelled_jobs, expired, open ON batches
    FOR EACH ROW
    WHEN ((OLD.total, OLD.completed, OLD.dead, OLD.cancelled_jobs, OLD.expired, OLD.open)
          IS DISTINCT FROM
          (NEW.total, NEW.completed, NEW.dead, NEW.cancelled_jobs, NEW.expired, NEW.open))
    EXECUTE FUNCTION grafter_batch_counts_written();

-- A batch's jobs are found through a table of their own, written once when a
-- job joins its batch, instead of an index on jobs. A job's state is in the
-- predicate of the jobs table's partial indexes, so every move of a job is a
-- new row version with a new entry in each of its indexes: `jobs_of_batch`
-- cost every job of a batch two more index entries (its fetch and its ack),
-- a tenth of a batch's burn-down.
CREATE TABLE batch_jobs (
    batch_id bigint NOT NULL,
    job_id   bigint NOT NULL,
    PRIMARY KEY (batch_id, job_id)
);
INSERT INTO batch_jobs (batch_id, job_id)
    SELECT batch_id, id FROM jobs WHERE batch_id IS NOT NULL;
DROP INDEX jobs_of_batch;

-- The row trigger counts one job's move (the batch's own trigger settles
-- it), and a job deleted by hand (or pruned) leaves batch_jobs.
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

-- A statement that counts its own moves sets grafter.batch_counted before
-- its first row moves: tested in the WHEN, as each row is written, the row
-- trigger is not even queued for them, where the function's own test costs
-- a call per job at the statement's end.
DROP TRIGGER jobs_batch_moved ON jobs;
CREATE TRIGGER jobs_batch_moved AFTER UPDATE OF state, progress ON jobs
    FOR EACH ROW
    WHEN (NEW.batch_id IS NOT NULL
          AND (OLD.progress IS DISTINCT FROM NEW.progress
               OR (OLD.state IS DISTINCT FROM NEW.state
                   AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
                        OR NEW.state IN ('completed', 'dead', 'cancelled', 'expired'))))
          AND current_setting('grafter.batch_counted', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION grafter_batch_job_moved();
