-- The fetch (available -> running) and the acks (running -> completed) make
-- nearly every move of a job, and the statement trigger that counted every
-- update cost them about a tenth of their CPU: with transition tables,
-- PostgreSQL copies each updated row, before and after, into a tuple store
-- for the trigger to read (docs/benchmarks.md, "PostgreSQL cost per job").
-- These two moves are now counted by the statements that make them, once per
-- queue per statement, into the same delta tables (src/leasing.rs,
-- `count_moves!`, `count_completions!`): only the fetches (leasing.rs,
-- limits.rs) and the completions (leasing.rs) make them, as on SQLite since
-- its migration 7. Every other change of a job's state or queue is counted
-- by a row trigger, whose WHEN PostgreSQL tests in C as each row is written,
-- so the hot moves queue nothing and copy nothing.
DROP TRIGGER jobs_counts_updated ON jobs;
DROP FUNCTION jobs_counts_updated();

CREATE FUNCTION jobs_counts_moved() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_count_deltas (queue, state, n)
    VALUES (OLD.queue, OLD.state, -1), (NEW.queue, NEW.state, 1);
    -- An attempt that ends, in the minute it ended (see migration 4).
    IF OLD.state = 'running' AND NEW.state IN ('completed', 'retryable', 'dead') THEN
        INSERT INTO job_throughput_deltas (minute, completed, failed)
        VALUES (date_trunc('minute', CASE WHEN NEW.state = 'completed' THEN NEW.finished_at
                                          ELSE coalesce((NEW.errors -> -1 ->> 'at')::timestamptz,
                                                        NEW.attempted_at) END
                                     AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                (NEW.state = 'completed')::int, (NEW.state <> 'completed')::int);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_counts_moved AFTER UPDATE OF state, queue ON jobs
    FOR EACH ROW
    WHEN ((OLD.state IS DISTINCT FROM NEW.state OR OLD.queue IS DISTINCT FROM NEW.queue)
          AND NOT (OLD.queue = NEW.queue
                   AND ((OLD.state = 'available' AND NEW.state = 'running')
                        OR (OLD.state = 'running' AND NEW.state = 'completed'))))
    EXECUTE FUNCTION jobs_counts_moved();
