-- Live workers, so the server can list them and end the leases of dead ones.
-- Mirrors grafter-sqlite/migrations/0002_workers.sql. pid and concurrency are
-- u32 in Rust, which PostgreSQL's integer cannot hold, hence bigint.
CREATE TABLE workers (
    id           text        PRIMARY KEY,
    host         text        NOT NULL,
    pid          bigint      NOT NULL CHECK (pid BETWEEN 0 AND 4294967295),
    queues       text[]      NOT NULL,
    concurrency  bigint      NOT NULL CHECK (concurrency BETWEEN 0 AND 4294967295),
    kinds        text[]      NOT NULL,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);

-- A worker's running jobs: its count in the worker list, and pruning.
CREATE INDEX jobs_running_worker ON jobs (worker_id) WHERE state = 'running';
