-- Live events (docs/events.md): while a stream watches a job, every change of
-- its state, attempt or progress is logged, in the transaction that makes it,
-- so a stream that reconnects with Last-Event-ID (on any node) replays exactly
-- what it missed; and the change is notified on the events channel, so a
-- stream on any node hears of it once it commits. Only watched jobs are
-- logged: the trigger's WHEN is false for every other job, which then pays
-- nothing but that test. (A NOTIFY holds a database-wide lock from its commit
-- until the commit is on disk; only transactions that change a watched job
-- send one.)
ALTER TABLE jobs ADD COLUMN watched boolean NOT NULL DEFAULT false;

-- seq orders a job's events and is each event's id: a job's updates take its
-- row lock in turn, so its events' seqs grow in the order they commit.
CREATE TABLE job_events (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   bigint      NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind     text        NOT NULL,   -- 'state', 'progress' or 'deleted'
    state    text,
    attempt  integer,
    progress jsonb
);
CREATE INDEX job_events_of_job ON job_events (job_id, seq);
-- The pruner's way to the deletions, which outlive their jobs.
CREATE INDEX job_events_deletions ON job_events (at) WHERE kind = 'deleted';

DO $migration$
DECLARE
    channel text := current_setting('grafter.events_channel', true);
BEGIN
    IF coalesce(channel, '') = '' THEN
        RAISE EXCEPTION 'migration 14 needs the setting grafter.events_channel: run it with grafter migrate';
    END IF;
    EXECUTE format(
        'CREATE FUNCTION grafter_v1_events_channel() RETURNS text LANGUAGE sql IMMUTABLE AS %L',
        format('SELECT %L::text', channel));
END
$migration$;

CREATE FUNCTION grafter_job_watched_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM job_events WHERE job_id = OLD.id;
        INSERT INTO job_events (job_id, kind) VALUES (OLD.id, 'deleted');
        PERFORM pg_notify(grafter_v1_events_channel(), 'job:' || OLD.id);
        RETURN NULL;
    END IF;
    INSERT INTO job_events (job_id, kind, state, attempt, progress)
    VALUES (NEW.id,
            CASE WHEN OLD.state = NEW.state AND OLD.attempt = NEW.attempt
                 THEN 'progress' ELSE 'state' END,
            NEW.state, NEW.attempt, NEW.progress);
    PERFORM pg_notify(grafter_v1_events_channel(), 'job:' || NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_watched_changed AFTER UPDATE OF state, attempt, progress ON jobs
    FOR EACH ROW
    WHEN (NEW.watched AND (OLD.state, OLD.attempt, OLD.progress)
                          IS DISTINCT FROM (NEW.state, NEW.attempt, NEW.progress))
    EXECUTE FUNCTION grafter_job_watched_changed();
CREATE TRIGGER jobs_watched_deleted AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.watched)
    EXECUTE FUNCTION grafter_job_watched_changed();
