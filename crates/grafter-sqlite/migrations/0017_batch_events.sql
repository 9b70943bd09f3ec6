-- A batch's live events (docs/events.md), as a job's (migration 12): while a
-- stream watches a batch, every change of its state, sealing, finishing,
-- counts or progress is logged in the transaction that makes it, so a stream
-- that reconnects with Last-Event-ID replays exactly what it missed. The
-- trigger's WHEN is false for batches no one watches.
ALTER TABLE batches ADD COLUMN watched INTEGER NOT NULL DEFAULT 0;

-- seq orders a batch's events and is each event's id; AUTOINCREMENT, so never
-- reused. Each row is the batch as it stood right after the change.
CREATE TABLE batch_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id       INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    kind           TEXT    NOT NULL,   -- 'state' (state, sealing or finishing) or 'progress'
    state          TEXT    NOT NULL,
    open           INTEGER NOT NULL,
    finished       INTEGER NOT NULL,
    total          INTEGER NOT NULL,
    completed      INTEGER NOT NULL,
    dead           INTEGER NOT NULL,
    cancelled_jobs INTEGER NOT NULL,
    expired        INTEGER NOT NULL,
    progress       INTEGER NOT NULL    -- millionths, as batches.progress
);
CREATE INDEX batch_events_of_batch ON batch_events (batch_id, seq);

-- The values are read from the batch's row rather than NEW: the settling
-- triggers of migration 13 update the row again from inside this update, and
-- SQLite does not say in which order triggers on one table fire, so an event
-- logged after the settling one must not go back to the row before it.
CREATE TRIGGER batches_watched_changed AFTER UPDATE ON batches
WHEN NEW.watched
    AND (OLD.state IS NOT NEW.state OR OLD.open IS NOT NEW.open
         OR (OLD.finished_at IS NULL) IS NOT (NEW.finished_at IS NULL)
         OR OLD.total IS NOT NEW.total OR OLD.completed IS NOT NEW.completed
         OR OLD.dead IS NOT NEW.dead OR OLD.cancelled_jobs IS NOT NEW.cancelled_jobs
         OR OLD.expired IS NOT NEW.expired OR OLD.progress IS NOT NEW.progress)
BEGIN
    INSERT INTO batch_events (batch_id, at, kind, state, open, finished, total, completed,
                              dead, cancelled_jobs, expired, progress)
    SELECT b.id, CAST(unixepoch('subsec') * 1000000 AS INTEGER),
           CASE WHEN OLD.state IS b.state AND OLD.open IS b.open
                     AND (OLD.finished_at IS NULL) IS (b.finished_at IS NULL)
                THEN 'progress' ELSE 'state' END,
           b.state, b.open, b.finished_at IS NOT NULL, b.total, b.completed, b.dead,
           b.cancelled_jobs, b.expired, b.progress
    FROM batches AS b WHERE b.id = NEW.id;
END;

-- A pruned batch's log goes with it (its streams ended when it finished).
CREATE TRIGGER batches_watched_deleted AFTER DELETE ON batches WHEN OLD.watched
BEGIN
    DELETE FROM batch_events WHERE batch_id = OLD.id;
END;
