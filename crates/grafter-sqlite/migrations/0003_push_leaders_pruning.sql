-- A queue's push target (JSON), for push queues.
ALTER TABLE queues ADD COLUMN push TEXT;

-- Named leaderships with an expiry, renewed by the leader.
CREATE TABLE leaders (
    name       TEXT    PRIMARY KEY,
    node       TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);

-- The pruner: finished jobs by finish time.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('completed', 'dead', 'cancelled', 'expired');
