-- A 100,000-job batch burned down at two thirds of the speed of the same jobs
-- outside a batch (docs/benchmarks.md, "Batches"), for two reasons, both
-- mended here.
--
-- 1. A batch ack counts its batches' moves itself, one write of each batch's
-- row per statement instead of one per job from the row trigger.
--
-- While such a statement moves its jobs, a row stands in batch_counting
-- (written and taken away in the statement's transaction, so never seen by
-- another): the row trigger, which a trigger of this database can only learn
-- from a table of it, stands aside for those jobs.
CREATE TABLE batch_counting (counting INTEGER NOT NULL);

-- 2. The row trigger's WHEN named the finished states as `IN` lists. In a
-- trigger, SQLite builds a temporary index for a list of three or more
-- values on every row it tests, so every fetch of a job in a batch paid
-- two of them (about 5 µs a job). The states are compared one by one.
DROP TRIGGER jobs_batch_moved;
CREATE TRIGGER jobs_batch_moved AFTER UPDATE OF state, progress ON jobs
WHEN NEW.batch_id IS NOT NULL
    AND (OLD.progress IS NOT NEW.progress
         OR (OLD.state IS NOT NEW.state
             AND (OLD.state = 'completed' OR OLD.state = 'dead'
                  OR OLD.state = 'cancelled' OR OLD.state = 'expired'
                  OR NEW.state = 'completed' OR NEW.state = 'dead'
                  OR NEW.state = 'cancelled' OR NEW.state = 'expired')))
    AND NOT EXISTS (SELECT 1 FROM batch_counting)
BEGIN
    UPDATE batches SET
        completed = completed + (NEW.state = 'completed') - (OLD.state = 'completed'),
        dead = dead + (NEW.state = 'dead') - (OLD.state = 'dead'),
        cancelled_jobs = cancelled_jobs + (NEW.state = 'cancelled') - (OLD.state = 'cancelled'),
        expired = expired + (NEW.state = 'expired') - (OLD.state = 'expired'),
        progress = progress
            + CASE WHEN NEW.state = 'completed' OR NEW.state = 'dead'
                        OR NEW.state = 'cancelled' OR NEW.state = 'expired' THEN 1000000
                   ELSE coalesce(CAST(round(min(max(NEW.progress ->> '$.fraction', 0.0), 1.0) * 1000000) AS INTEGER), 0) END
            - CASE WHEN OLD.state = 'completed' OR OLD.state = 'dead'
                        OR OLD.state = 'cancelled' OR OLD.state = 'expired' THEN 1000000
                   ELSE coalesce(CAST(round(min(max(OLD.progress ->> '$.fraction', 0.0), 1.0) * 1000000) AS INTEGER), 0) END
    WHERE id = NEW.batch_id;
END;
