-- Push queues, cluster leadership and pruning, mirroring
-- grafter-sqlite/migrations/0003_push_leaders_pruning.sql.

-- A queue's push target (a grafter_core::PushTarget as JSON), for push queues.
ALTER TABLE queues ADD COLUMN push jsonb;

-- Named leaderships with an expiry, renewed by the leader. A row whose
-- expires_at has passed is free for the taking.
CREATE TABLE leaders (
    name       text        PRIMARY KEY,
    node       text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The pruner: finished jobs by finish time. Partial, so it costs nothing on the
-- hot paths until a job finishes. Pruning names this predicate so the planner
-- can use it.
CREATE INDEX jobs_finished ON jobs (finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled', 'expired');
