-- Live events (docs/events.md): while a stream watches a job, every change of
-- its state, attempt or progress is logged, in the transaction that makes it,
-- so a stream that reconnects with Last-Event-ID replays exactly what it
-- missed. Only watched jobs are logged: the triggers' WHEN is false for every
-- other job, which then pays nothing but that test.
ALTER TABLE jobs ADD COLUMN watched INTEGER NOT NULL DEFAULT 0;

-- seq orders a job's events and is each event's id. AUTOINCREMENT: never
-- reused, so an id a client holds never names a different event later.
CREATE TABLE job_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL,   -- 'state', 'progress' or 'deleted'
    state    TEXT,
    attempt  INTEGER,
    progress TEXT
);
CREATE INDEX job_events_of_job ON job_events (job_id, seq);
-- The pruner's way to the deletions, which outlive their jobs.
CREATE INDEX job_events_deletions ON job_events (at) WHERE kind = 'deleted';

CREATE TRIGGER jobs_watched_changed AFTER UPDATE OF state, attempt, progress ON jobs
WHEN NEW.watched
    AND (OLD.state IS NOT NEW.state OR OLD.attempt IS NOT NEW.attempt
         OR OLD.progress IS NOT NEW.progress)
BEGIN
    INSERT INTO job_events (job_id, at, kind, state, attempt, progress)
    VALUES (NEW.id, CAST(unixepoch('subsec') * 1000000 AS INTEGER),
            CASE WHEN OLD.state IS NEW.state AND OLD.attempt IS NEW.attempt
                 THEN 'progress' ELSE 'state' END,
            NEW.state, NEW.attempt, NEW.progress);
END;

-- A deleted job's log goes with it, leaving one event that tells its streams.
CREATE TRIGGER jobs_watched_deleted AFTER DELETE ON jobs WHEN OLD.watched
BEGIN
    DELETE FROM job_events WHERE job_id = OLD.id;
    INSERT INTO job_events (job_id, at, kind)
    VALUES (OLD.id, CAST(unixepoch('subsec') * 1000000 AS INTEGER), 'deleted');
END;
