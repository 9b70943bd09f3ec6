-- What the dashboard reads at any size without counting the jobs table: job
-- counts per queue and state, throughput per minute, and tags as index rows.
-- All kept by triggers, so every change to a job (whoever makes it) keeps them
-- exact in the same transaction. SQLite has one writer, so the counter rows
-- never make writers wait for each other.

CREATE TABLE job_counts (
    queue TEXT    NOT NULL,
    state TEXT    NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

INSERT INTO job_counts (queue, state, n) SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;

CREATE TRIGGER jobs_count_update AFTER UPDATE OF queue, state ON jobs
WHEN OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

-- Attempts ended per minute (microseconds at the minute's start, UTC). A
-- completion counts in the minute of finished_at; a failure in the minute of
-- the error it recorded (the caller's "now" either way, never the clock here).
CREATE TABLE job_throughput (
    minute    INTEGER PRIMARY KEY,
    completed INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0
);

CREATE TRIGGER jobs_throughput_completed AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'running' AND NEW.state = 'completed' BEGIN
    INSERT INTO job_throughput (minute, completed)
        VALUES (NEW.finished_at - (NEW.finished_at % 60000000), 1)
        ON CONFLICT (minute) DO UPDATE SET completed = completed + 1;
END;

CREATE TRIGGER jobs_throughput_failed AFTER UPDATE OF state ON jobs
WHEN OLD.state = 'running' AND NEW.state IN ('retryable', 'dead') BEGIN
    INSERT INTO job_throughput (minute, failed)
        VALUES (coalesce(CAST(strftime('%s', json_extract(NEW.errors, '$[#-1].at')) AS INTEGER) / 60 * 60000000,
                         NEW.attempted_at - (NEW.attempted_at % 60000000)), 1)
        ON CONFLICT (minute) DO UPDATE SET failed = failed + 1;
END;

-- Two days are kept; a new minute's first row clears what fell out.
CREATE TRIGGER job_throughput_prune AFTER INSERT ON job_throughput BEGIN
    DELETE FROM job_throughput WHERE minute < NEW.minute - 172800000000;
END;

-- Tags as rows, so "jobs tagged X, newest first" is an index range.
CREATE TABLE job_tags (
    tag    TEXT    NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (tag, job_id)
) WITHOUT ROWID;

INSERT OR IGNORE INTO job_tags (tag, job_id)
    SELECT t.value, jobs.id FROM jobs, json_each(jobs.tags) AS t WHERE jobs.tags <> '[]';

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

-- Listing by kind, with or without a state, newest first: (kind, state, rowid).
-- Counting no longer reads the jobs table, so (queue, state) serves listing only.
DROP INDEX jobs_kind;
CREATE INDEX jobs_kind_state ON jobs (kind, state);
