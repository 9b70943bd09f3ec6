-- Live workers, so the server can list them and end the leases of dead ones.
CREATE TABLE workers (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    queues       TEXT    NOT NULL,
    concurrency  INTEGER NOT NULL,
    kinds        TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);

-- A worker's running jobs: its count in the worker list, and pruning.
CREATE INDEX jobs_running_worker ON jobs (worker_id) WHERE state = 'running';
