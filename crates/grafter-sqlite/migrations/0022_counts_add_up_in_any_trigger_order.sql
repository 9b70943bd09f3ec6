-- Queue counts drifted for good when a finished dependent was retried or
-- rescheduled while an upstream was unfinished. SQLite fires a table's
-- triggers newest first, so jobs_dependent_retried (migration 19) ran before
-- the counter trigger (migration 8) of the update that made the job
-- available (or scheduled): its nested update, which moves the job on to
-- pending, took one from the (queue, available) count before the outer
-- update had added one there, and where that row did not exist yet the
-- decrement changed nothing, so the count kept the job as available too.
--
-- The counter trigger takes one away by an upsert, so the moves add up
-- whatever order the triggers run in (a count may be below zero within a
-- statement, never after it: each decrement goes with the increment of the
-- move that put the job in that state).
DROP TRIGGER jobs_count_update;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF queue, state ON jobs
WHEN (OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue)
 AND NOT (OLD.queue IS NEW.queue
          AND ((OLD.state = 'available' AND NEW.state = 'running')
               OR (OLD.state = 'running' AND NEW.state = 'completed'))) BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (OLD.queue, OLD.state, -1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n - 1;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

-- The counts that drifted before this upgrade are counted again, once.
DELETE FROM job_counts;
INSERT INTO job_counts (queue, state, n) SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;
