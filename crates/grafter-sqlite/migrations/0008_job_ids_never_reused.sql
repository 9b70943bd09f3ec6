-- A job id is never handed out twice. `INTEGER PRIMARY KEY` alone gives a new
-- row one more than the largest id in the table, so deleting the newest job,
-- or pruning every job, made the next job take an id that an earlier job had
-- had: an application keeping `Grafter-Job-Id`s for idempotency would drop it
-- as a duplicate, and a stored status URL would show another job. With
-- AUTOINCREMENT, SQLite keeps the largest id ever used in `sqlite_sequence`
-- and never goes below it, through deletes, prunes and restarts.
--
-- SQLite cannot add AUTOINCREMENT to a column, so the table is rebuilt (the
-- procedure of https://www.sqlite.org/lang_altertable.html#otheralter): a new
-- table, the rows copied with their ids, the old table dropped (with its
-- indexes and triggers), the new one renamed, and every index and trigger
-- made again exactly as migrations 1 to 7 left them. The copy starts the
-- sequence at the largest id in the table. Ids of jobs deleted before this
-- upgrade that were above it cannot be known (nothing recorded them), so they
-- can come again once; that is where the old table would have gone on too, and
-- from here on no id comes twice. The copy takes time and room in proportion
-- to the jobs kept, once.
CREATE TABLE jobs_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
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

INSERT INTO jobs_new (id, queue, kind, args, priority, state, run_at, attempt, max_attempts,
                      errors, progress, result, tags, unique_key, timeout_ms, expires_at, backoff,
                      cancel_requested, worker_id, lease, lease_expires_at, created_at,
                      attempted_at, finished_at)
    SELECT id, queue, kind, args, priority, state, run_at, attempt, max_attempts,
           errors, progress, result, tags, unique_key, timeout_ms, expires_at, backoff,
           cancel_requested, worker_id, lease, lease_expires_at, created_at,
           attempted_at, finished_at
    FROM jobs;

-- The counters and tag rows describe the rows just copied; dropping the old
-- table fires no delete triggers, so they stay as they are.
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

-- The indexes as migrations 1, 3, 5 and 6 left them.
CREATE INDEX jobs_fetch ON jobs (queue, priority, run_at, id) WHERE state = 'available';
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('scheduled', 'retryable');
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('completed', 'dead', 'cancelled', 'expired');
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');
CREATE INDEX jobs_expiry ON jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('scheduled', 'available', 'retryable');
CREATE INDEX jobs_queue_state ON jobs (queue, state) WHERE state <> 'running';
CREATE INDEX jobs_kind_state ON jobs (kind, state) WHERE state <> 'running';

-- The triggers as migrations 4 and 7 left them.
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;

CREATE TRIGGER jobs_count_update AFTER UPDATE OF queue, state ON jobs
WHEN (OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue)
 AND NOT (OLD.queue IS NEW.queue
          AND ((OLD.state = 'available' AND NEW.state = 'running')
               OR (OLD.state = 'running' AND NEW.state = 'completed'))) BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER jobs_throughput_failed AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'running' AND NEW.state IN ('retryable', 'dead') BEGIN
    INSERT INTO job_throughput (minute, failed)
        VALUES (coalesce(CAST(strftime('%s', json_extract(NEW.errors, '$[#-1].at')) AS INTEGER) / 60 * 60000000,
                         NEW.attempted_at - (NEW.attempted_at % 60000000)), 1)
        ON CONFLICT (minute) DO UPDATE SET failed = failed + 1;
END;

CREATE TRIGGER jobs_tags_insert AFTER INSERT ON jobs WHEN NEW.tags <> '[]' BEGIN
    INSERT OR IGNORE INTO job_tags (tag, job_id) SELECT value, NEW.id FROM json_each(NEW.tags);
END;

CREATE TRIGGER jobs_tags_delete AFTER DELETE ON jobs WHEN OLD.tags <> '[]' BEGIN
    DELETE FROM job_tags WHERE job_id = OLD.id AND tag IN (SELECT value FROM json_each(OLD.tags));
END;

CREATE TRIGGER jobs_tags_update AFTER UPDATE OF tags ON jobs WHEN OLD.tags IS NOT NEW.tags BEGIN
    DELETE FROM job_tags WHERE job_id = OLD.id AND tag IN (SELECT value FROM json_each(OLD.tags));
    INSERT OR IGNORE INTO job_tags (tag, job_id) SELECT value, NEW.id FROM json_each(NEW.tags);
END;
