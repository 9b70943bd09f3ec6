-- Fetching (available -> running) and completing (running -> completed) are
-- nearly all of the writer thread's work, and the row triggers that kept the
-- counters for them were about 15 % of it: per job, a counter decrement and
-- an upsert, and per completion a throughput upsert. These two moves are now
-- counted by the statements that make them, once per queue per statement
-- (src/ops.rs, `count_moved` and `count_completed`): only the fetch and the
-- completions make them. The triggers go on counting every other change.
DROP TRIGGER jobs_count_update;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF queue, state ON jobs
WHEN (OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue)
 AND NOT (OLD.queue IS NEW.queue
          AND ((OLD.state = 'available' AND NEW.state = 'running')
               OR (OLD.state = 'running' AND NEW.state = 'completed'))) BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

DROP TRIGGER jobs_throughput_completed;
