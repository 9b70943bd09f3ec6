-- Batches (docs/batches.md): many jobs with one state, counts, progress and
-- callbacks. A batch's counts and progress change in the transaction of each
-- move of its jobs, by the triggers below, whose WHEN is false for jobs
-- outside batches (they pay only that test); the move that settles a batch
-- sets its state and enqueues its callbacks in the same transaction. SQLite
-- has one writer, so no two such moves interleave.
CREATE TABLE batches (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    state             TEXT    NOT NULL DEFAULT 'running',
    open              INTEGER NOT NULL,
    cancelled         INTEGER NOT NULL DEFAULT 0,         -- cancelled by hand
    total             INTEGER NOT NULL DEFAULT 0,
    completed         INTEGER NOT NULL DEFAULT 0,
    dead              INTEGER NOT NULL DEFAULT 0,
    cancelled_jobs    INTEGER NOT NULL DEFAULT 0,
    expired           INTEGER NOT NULL DEFAULT 0,
    -- Sum of the jobs' progress in millionths, a finished job counting a
    -- whole million: integers, so adding and taking away never drifts.
    progress          INTEGER NOT NULL DEFAULT 0,
    -- Callbacks as the job JSON of POST /v1/jobs, validated when the batch
    -- was created.
    on_success        TEXT,
    on_complete       TEXT,
    on_failure        TEXT,
    success_enqueued  INTEGER NOT NULL DEFAULT 0,
    complete_enqueued INTEGER NOT NULL DEFAULT 0,
    failure_enqueued  INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER
);
-- The pruner's way to finished batches.
CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE jobs ADD COLUMN batch_id INTEGER;
-- A batch's jobs by id (its job list, its cancel, its prune). Only jobs in a
-- batch have an entry, and their batch never changes.
CREATE INDEX jobs_of_batch ON jobs (batch_id, id) WHERE batch_id IS NOT NULL;

-- A job's share of its batch's progress, in millionths (see batches.progress):
-- a finished job a whole million, else its progress fraction. Restated in each
-- trigger, as SQLite has no functions.

-- Counts and progress follow each move of a job in a batch. Moves between
-- unfinished states without progress (a fetch, a retry) do not touch the
-- batch's row.
CREATE TRIGGER jobs_batch_moved AFTER UPDATE OF state, progress ON jobs
WHEN NEW.batch_id IS NOT NULL
    AND (OLD.progress IS NOT NEW.progress
         OR (OLD.state IS NOT NEW.state
             AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
                  OR NEW.state IN ('completed', 'dead', 'cancelled', 'expired'))))
BEGIN
    UPDATE batches SET
        completed = completed + (NEW.state = 'completed') - (OLD.state = 'completed'),
        dead = dead + (NEW.state = 'dead') - (OLD.state = 'dead'),
        cancelled_jobs = cancelled_jobs + (NEW.state = 'cancelled') - (OLD.state = 'cancelled'),
        expired = expired + (NEW.state = 'expired') - (OLD.state = 'expired'),
        progress = progress
            + CASE WHEN NEW.state IN ('completed', 'dead', 'cancelled', 'expired') THEN 1000000
                   ELSE coalesce(CAST(round(min(max(NEW.progress ->> '$.fraction', 0.0), 1.0) * 1000000) AS INTEGER), 0) END
            - CASE WHEN OLD.state IN ('completed', 'dead', 'cancelled', 'expired') THEN 1000000
                   ELSE coalesce(CAST(round(min(max(OLD.progress ->> '$.fraction', 0.0), 1.0) * 1000000) AS INTEGER), 0) END
    WHERE id = NEW.batch_id;
END;

-- A job deleted by hand leaves its batch (a pruned batch is deleted first).
CREATE TRIGGER jobs_batch_deleted AFTER DELETE ON jobs WHEN OLD.batch_id IS NOT NULL
BEGIN
    UPDATE batches SET
        total = total - 1,
        completed = completed - (OLD.state = 'completed'),
        dead = dead - (OLD.state = 'dead'),
        cancelled_jobs = cancelled_jobs - (OLD.state = 'cancelled'),
        expired = expired - (OLD.state = 'expired'),
        progress = progress
            - CASE WHEN OLD.state IN ('completed', 'dead', 'cancelled', 'expired') THEN 1000000
                   ELSE coalesce(CAST(round(min(max(OLD.progress ->> '$.fraction', 0.0), 1.0) * 1000000) AS INTEGER), 0) END
    WHERE id = OLD.batch_id;
END;

-- The first job to end dead enqueues on_failure, once.
CREATE TRIGGER batches_failed AFTER UPDATE OF dead ON batches
WHEN NEW.dead > OLD.dead AND NEW.on_failure IS NOT NULL AND NOT NEW.failure_enqueued
BEGIN
    INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                      timeout_ms, backoff, created_at, partition)
    SELECT cb ->> '$.queue', cb ->> '$.kind', cb -> '$.args', cb ->> '$.priority', 'available',
           now, cb ->> '$.max_attempts', coalesce(cb -> '$.tags', '[]'), cb ->> '$.timeout_ms',
           nullif(cb -> '$.backoff', 'null'), now, cb ->> '$.partition'
    FROM (SELECT NEW.on_failure AS cb, CAST(unixepoch('subsec') * 1000000 AS INTEGER) AS now);
    UPDATE batches SET failure_enqueued = 1 WHERE id = NEW.id;
END;

-- A sealed batch whose last job finished settles: its final state, and
-- on_success (every job completed) and on_complete, each at most once.
CREATE TRIGGER batches_settled AFTER UPDATE ON batches
WHEN NOT NEW.open AND NEW.finished_at IS NULL
    AND NEW.completed + NEW.dead + NEW.cancelled_jobs + NEW.expired = NEW.total
BEGIN
    INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                      timeout_ms, backoff, created_at, partition)
    SELECT cb ->> '$.queue', cb ->> '$.kind', cb -> '$.args', cb ->> '$.priority', 'available',
           now, cb ->> '$.max_attempts', coalesce(cb -> '$.tags', '[]'), cb ->> '$.timeout_ms',
           nullif(cb -> '$.backoff', 'null'), now, cb ->> '$.partition'
    FROM (SELECT NEW.on_success AS cb, CAST(unixepoch('subsec') * 1000000 AS INTEGER) AS now
          WHERE NEW.completed = NEW.total AND NOT NEW.success_enqueued
          UNION ALL
          SELECT NEW.on_complete, CAST(unixepoch('subsec') * 1000000 AS INTEGER)
          WHERE NOT NEW.complete_enqueued)
    WHERE cb IS NOT NULL;
    UPDATE batches SET
        finished_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER),
        state = CASE WHEN cancelled THEN 'cancelled'
                     WHEN completed = total THEN 'succeeded'
                     ELSE 'completed_with_failures' END,
        success_enqueued = success_enqueued OR (on_success IS NOT NULL AND completed = total),
        complete_enqueued = complete_enqueued OR on_complete IS NOT NULL
    WHERE id = NEW.id;
END;

-- A finished job of a settled batch retried by hand makes it run again (it
-- settles again when that job finishes; a callback already enqueued is not
-- enqueued again).
CREATE TRIGGER batches_reopened AFTER UPDATE ON batches
WHEN NEW.finished_at IS NOT NULL
    AND NEW.completed + NEW.dead + NEW.cancelled_jobs + NEW.expired < NEW.total
BEGIN
    UPDATE batches SET
        finished_at = NULL,
        state = CASE WHEN cancelled THEN 'cancelled' ELSE 'running' END
    WHERE id = NEW.id;
END;
