-- Jobs and queues, mirroring the SQLite schema (grafter-sqlite/migrations/0001_jobs.sql).
-- Runs with search_path set to the store's schema, so names are unqualified here.
-- Timestamps are timestamptz (microsecond precision, as every backend stores them);
-- structured values are jsonb.
CREATE TABLE jobs (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text        NOT NULL,
    kind             text        NOT NULL,
    args             jsonb       NOT NULL,
    priority         smallint    NOT NULL DEFAULT 0,
    -- Text with a CHECK rather than an enum type: adding a state later is a
    -- plain constraint swap instead of ALTER TYPE, which cannot run in a
    -- transaction on older servers.
    state            text        NOT NULL CHECK (state IN ('scheduled', 'available', 'running',
                                     'retryable', 'completed', 'dead', 'cancelled', 'expired')),
    run_at           timestamptz NOT NULL,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    errors           jsonb       NOT NULL DEFAULT '[]',
    progress         jsonb,
    result           jsonb,
    tags             text[]      NOT NULL DEFAULT '{}',
    unique_key       text,
    timeout_ms       bigint,
    expires_at       timestamptz,
    backoff          jsonb,
    cancel_requested boolean     NOT NULL DEFAULT false,
    worker_id        text,
    lease            text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL,
    attempted_at     timestamptz,
    finished_at      timestamptz
);

-- Every index on the hot paths is partial, so finished jobs (the bulk of the
-- table on a busy system) never slow fetching, scheduling or rescuing.

-- The fetch path: only available jobs, in the order they are handed out.
CREATE INDEX jobs_fetch ON jobs (queue, priority, run_at, id) WHERE state = 'available';
-- The scheduler: scheduled and retryable jobs by due time.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'retryable');
-- The rescuer: running jobs by lease expiry.
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
-- The expirer: unstarted jobs with a deadline.
CREATE INDEX jobs_expiry ON jobs (expires_at)
    WHERE state IN ('scheduled', 'available', 'retryable') AND expires_at IS NOT NULL;
-- Uniqueness holds among unfinished jobs only. Inserts name this predicate in
-- ON CONFLICT, so it must match it exactly.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE state IN ('scheduled', 'available', 'running', 'retryable');
-- Listing and counting.
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_queue_state ON jobs (queue, state);
CREATE INDEX jobs_kind ON jobs (kind, id);

CREATE TABLE queues (
    name       text        PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL
);
