-- Jobs and queues. Timestamps are integer microseconds since the Unix epoch (UTC);
-- JSON columns hold serialized JSON text.
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    args             TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL,
    run_at           INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    errors           TEXT    NOT NULL DEFAULT '[]',
    progress         TEXT,
    result           TEXT,
    tags             TEXT    NOT NULL DEFAULT '[]',
    unique_key       TEXT,
    timeout_ms       INTEGER,
    expires_at       INTEGER,
    backoff          TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    lease            TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    attempted_at     INTEGER,
    finished_at      INTEGER
);

-- The fetch path: only available jobs, in the order they are handed out.
CREATE INDEX jobs_fetch ON jobs (queue, priority, run_at, id) WHERE state = 'available';
-- The scheduler: scheduled and retryable jobs by due time.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'retryable');
-- The rescuer: running jobs by lease expiry.
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
-- The expirer: unstarted jobs with a deadline.
CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE state IN ('scheduled', 'available', 'retryable');
-- Uniqueness holds among unfinished jobs only.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE state IN ('scheduled', 'available', 'running', 'retryable');
-- Listing and counting.
CREATE INDEX jobs_state ON jobs (state, id);
CREATE INDEX jobs_queue_state ON jobs (queue, state);
CREATE INDEX jobs_kind ON jobs (kind, id);

CREATE TABLE queues (
    name       TEXT    PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
