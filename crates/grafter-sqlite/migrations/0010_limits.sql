-- Flow control (issue 15): a queue's limits, a job's own partition, and the
-- log of starts that a rate limit counts.
--
-- A job's partition is read at fetch time (this column, or a path into its
-- args, as the queue's limits say), so changing `partition_by` applies to
-- jobs already waiting. No index holds it: running jobs are few and read
-- through jobs_leases; waiting ones are walked through jobs_fetch.
ALTER TABLE jobs ADD COLUMN partition TEXT;

-- JSON of grafter_core::QueueLimits, or NULL for none.
ALTER TABLE queues ADD COLUMN limits TEXT;

-- One row per job started on a rate-limited queue (microseconds): the
-- sliding log a rate counts. A limited fetch deletes its queue's rows older
-- than the window, so the table holds about one window of starts.
CREATE TABLE queue_starts (
    queue      TEXT    NOT NULL,
    partition  TEXT    NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX queue_starts_window ON queue_starts (queue, partition, started_at);
