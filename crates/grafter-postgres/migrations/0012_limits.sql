-- Flow control (issue 15): a queue's limits, a job's own partition, and the
-- log of starts that a rate limit counts.
--
-- A job's partition is read at fetch time (this column, or a path into its
-- args, as the queue's limits say), so changing `partition_by` applies to
-- jobs already waiting. No index holds it: running jobs are few and read
-- through jobs_leases; waiting ones are walked through jobs_fetch. Adding a
-- nullable column without a default rewrites nothing.
ALTER TABLE jobs ADD COLUMN partition text;

-- grafter_core::QueueLimits, or NULL for none. The plain fetch refuses a
-- queue whose row has limits; only the admission path leases from it.
ALTER TABLE queues ADD COLUMN limits jsonb;

-- One row per job started on a rate-limited queue: the sliding log a rate
-- counts. A limited fetch deletes its queue's rows older than the window,
-- so the table holds about one window of starts.
CREATE TABLE queue_starts (
    queue      text        NOT NULL,
    partition  text        NOT NULL,
    started_at timestamptz NOT NULL
);
CREATE INDEX queue_starts_window ON queue_starts (queue, partition, started_at);
