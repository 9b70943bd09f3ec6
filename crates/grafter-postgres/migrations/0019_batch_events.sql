-- A batch's live events (docs/events.md), as a job's (migration 14): while a
-- stream watches a batch, every change of its state, sealing, finishing,
-- counts or progress is logged in the transaction that makes it, and
-- notified on the events channel as `batch:<id>`, so a stream on any node
-- hears of it once it commits and one that reconnects with Last-Event-ID
-- replays exactly what it missed. The trigger's WHEN is false for batches no
-- one watches.
ALTER TABLE batches ADD COLUMN watched boolean NOT NULL DEFAULT false;

-- seq orders a batch's events and is each event's id: every change of a
-- batch writes its row, so they take its lock in turn and their seqs grow in
-- the order they commit. Each row is the batch right after the change.
CREATE TABLE batch_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id       bigint      NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind           text        NOT NULL,   -- 'state' (state, sealing or finishing) or 'progress'
    state          text        NOT NULL,
    open           boolean     NOT NULL,
    finished       boolean     NOT NULL,
    total          bigint      NOT NULL,
    completed      bigint      NOT NULL,
    dead           bigint      NOT NULL,
    cancelled_jobs bigint      NOT NULL,
    expired        bigint      NOT NULL,
    progress       bigint      NOT NULL    -- millionths, as batches.progress
);
CREATE INDEX batch_events_of_batch ON batch_events (batch_id, seq);

CREATE FUNCTION grafter_batch_watched_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- A pruned batch's log goes with it (its streams ended when it finished).
        DELETE FROM batch_events WHERE batch_id = OLD.id;
        RETURN NULL;
    END IF;
    INSERT INTO batch_events (batch_id, kind, state, open, finished, total, completed, dead,
                              cancelled_jobs, expired, progress)
    VALUES (NEW.id,
            CASE WHEN OLD.state = NEW.state AND OLD.open = NEW.open
                      AND (OLD.finished_at IS NULL) = (NEW.finished_at IS NULL)
                 THEN 'progress' ELSE 'state' END,
            NEW.state, NEW.open, NEW.finished_at IS NOT NULL, NEW.total, NEW.completed,
            NEW.dead, NEW.cancelled_jobs, NEW.expired, NEW.progress);
    PERFORM pg_notify(grafter_v1_events_channel(), 'batch:' || NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_watched_changed AFTER UPDATE ON batches
    FOR EACH ROW
    WHEN (NEW.watched
          AND (OLD.state, OLD.open, OLD.finished_at IS NULL, OLD.total, OLD.completed,
               OLD.dead, OLD.cancelled_jobs, OLD.expired, OLD.progress)
              IS DISTINCT FROM
              (NEW.state, NEW.open, NEW.finished_at IS NULL, NEW.total, NEW.completed,
               NEW.dead, NEW.cancelled_jobs, NEW.expired, NEW.progress))
    EXECUTE FUNCTION grafter_batch_watched_changed();
CREATE TRIGGER batches_watched_deleted AFTER DELETE ON batches
    FOR EACH ROW WHEN (OLD.watched)
    EXECUTE FUNCTION grafter_batch_watched_changed();
