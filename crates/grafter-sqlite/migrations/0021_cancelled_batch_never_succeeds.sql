-- A cancelled batch never enqueues on_success, even when every job it had
-- completed (it was cancelled with none waiting, or empty): it ends
-- `cancelled`, and the jobs waiting for it count it failed. Migration 13's
-- settling trigger, with that one condition more (on_success and its flag).
--
-- SQLite fires a table's triggers newest first, and the triggers on a
-- batch's update rely on their order (an event logged after the settling
-- one reads the settled row: migration 17). So the ones created after the
-- settling trigger are created again after it, unchanged, in their order.
DROP TRIGGER batches_upstream_moved;
DROP TRIGGER batches_watched_changed;
DROP TRIGGER batches_reopened;
DROP TRIGGER batches_settled;
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
          WHERE NEW.completed = NEW.total AND NOT NEW.cancelled AND NOT NEW.success_enqueued
          UNION ALL
          SELECT NEW.on_complete, CAST(unixepoch('subsec') * 1000000 AS INTEGER)
          WHERE NOT NEW.complete_enqueued)
    WHERE cb IS NOT NULL;
    UPDATE batches SET
        finished_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER),
        state = CASE WHEN cancelled THEN 'cancelled'
                     WHEN completed = total THEN 'succeeded'
                     ELSE 'completed_with_failures' END,
        success_enqueued = success_enqueued
                           OR (on_success IS NOT NULL AND completed = total AND NOT cancelled),
        complete_enqueued = complete_enqueued OR on_complete IS NOT NULL
    WHERE id = NEW.id;
END;

-- Unchanged (migration 13).
CREATE TRIGGER batches_reopened AFTER UPDATE ON batches
WHEN NEW.finished_at IS NOT NULL
    AND NEW.completed + NEW.dead + NEW.cancelled_jobs + NEW.expired < NEW.total
BEGIN
    UPDATE batches SET
        finished_at = NULL,
        state = CASE WHEN cancelled THEN 'cancelled' ELSE 'running' END
    WHERE id = NEW.id;
END;

-- Unchanged (migration 17).
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

-- Unchanged (migration 19).
CREATE TRIGGER batches_upstream_moved AFTER UPDATE OF finished_at ON batches
WHEN NEW.has_dependents AND (OLD.finished_at IS NULL) IS NOT (NEW.finished_at IS NULL)
BEGIN
    UPDATE jobs SET
        deps_left = deps_left + CASE WHEN NEW.finished_at IS NOT NULL THEN -1 ELSE 1 END,
        state = CASE
            WHEN NEW.finished_at IS NOT NULL AND NEW.state <> 'succeeded'
                 AND on_dependency_failure IS NULL
                THEN 'cancelled'
            WHEN NEW.finished_at IS NOT NULL AND deps_left = 1
                THEN CASE WHEN run_at > CAST(unixepoch('subsec') * 1000000 AS INTEGER)
                          THEN 'scheduled' ELSE 'available' END
            ELSE state END,
        finished_at = CASE
            WHEN NEW.finished_at IS NOT NULL AND NEW.state <> 'succeeded'
                 AND on_dependency_failure IS NULL
                THEN CAST(unixepoch('subsec') * 1000000 AS INTEGER)
            ELSE finished_at END
    WHERE id IN (SELECT job_id FROM batch_dependencies WHERE batch_id = NEW.id)
      AND state = 'pending';
    SELECT grafter_released(queue) FROM jobs
    WHERE id IN (SELECT job_id FROM batch_dependencies WHERE batch_id = NEW.id)
      AND state = 'available' AND deps_left = 0;
END;
