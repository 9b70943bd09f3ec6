-- A cancelled batch never enqueues on_success, even when every job it had
-- completed (it was cancelled with none waiting, or empty): it ends
-- `cancelled`, and the jobs waiting for it count it failed. Migration 15's
-- settling, with that one condition more (on_success and its flag).
CREATE OR REPLACE FUNCTION grafter_batch_settle(batch_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b batches;
BEGIN
    SELECT * INTO b FROM batches WHERE id = batch_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF b.dead > 0 AND b.on_failure IS NOT NULL AND NOT b.failure_enqueued THEN
        PERFORM grafter_batch_enqueue(b.on_failure);
        UPDATE batches SET failure_enqueued = true WHERE id = b.id;
    END IF;
    IF b.open OR b.completed + b.dead + b.cancelled_jobs + b.expired < b.total THEN
        IF b.finished_at IS NOT NULL THEN
            UPDATE batches
            SET finished_at = NULL,
                state = CASE WHEN cancelled THEN 'cancelled' ELSE 'running' END
            WHERE id = b.id;
        END IF;
        RETURN;
    END IF;
    IF b.finished_at IS NOT NULL THEN
        RETURN;
    END IF;
    IF b.completed = b.total AND NOT b.cancelled AND b.on_success IS NOT NULL
       AND NOT b.success_enqueued THEN
        PERFORM grafter_batch_enqueue(b.on_success);
    END IF;
    IF b.on_complete IS NOT NULL AND NOT b.complete_enqueued THEN
        PERFORM grafter_batch_enqueue(b.on_complete);
    END IF;
    UPDATE batches
    SET finished_at = clock_timestamp(),
        state = CASE WHEN cancelled THEN 'cancelled'
                     WHEN completed = total THEN 'succeeded'
                     ELSE 'completed_with_failures' END,
        success_enqueued = success_enqueued
                           OR (on_success IS NOT NULL AND completed = total AND NOT cancelled),
        complete_enqueued = complete_enqueued OR on_complete IS NOT NULL
    WHERE id = b.id;
END
$$;
