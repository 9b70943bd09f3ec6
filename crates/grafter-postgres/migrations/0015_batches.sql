-- Batches (docs/batches.md): many jobs with one state, counts, progress and
-- callbacks. A batch's counts and progress change in the transaction of each
-- move of its jobs, by a row trigger whose WHEN is false for jobs outside
-- batches (they pay only that test). The move that settles a batch sets its
-- state and enqueues its callbacks in the same transaction: every counted
-- move writes the batch's row first, so two moves that could each settle it
-- (the last two jobs finishing on two nodes) go one after the other, and the
-- second sees what the first did.
CREATE TABLE batches (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state             text        NOT NULL DEFAULT 'running',
    open              boolean     NOT NULL,
    cancelled         boolean     NOT NULL DEFAULT false,   -- cancelled by hand
    total             bigint      NOT NULL DEFAULT 0,
    completed         bigint      NOT NULL DEFAULT 0,
    dead              bigint      NOT NULL DEFAULT 0,
    cancelled_jobs    bigint      NOT NULL DEFAULT 0,
    expired           bigint      NOT NULL DEFAULT 0,
    -- Sum of the jobs' progress in millionths, a finished job counting a
    -- whole million: integers, so adding and taking away never drifts.
    progress          bigint      NOT NULL DEFAULT 0,
    -- Callbacks as the job JSON of POST /v1/jobs (validated when the batch
    -- was created) with its args_bytes.
    on_success        jsonb,
    on_complete       jsonb,
    on_failure        jsonb,
    success_enqueued  boolean     NOT NULL DEFAULT false,
    complete_enqueued boolean     NOT NULL DEFAULT false,
    failure_enqueued  boolean     NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL,
    finished_at       timestamptz
);
-- The pruner's way to finished batches.
CREATE INDEX batches_finished ON batches (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE jobs ADD COLUMN batch_id bigint;
-- A batch's jobs by id (its job list, its cancel, its prune). Only jobs in a
-- batch have an entry, and their batch never changes.
CREATE INDEX jobs_of_batch ON jobs (batch_id, id) WHERE batch_id IS NOT NULL;

-- A job's share of its batch's progress, in millionths.
CREATE FUNCTION grafter_batch_share(state text, progress jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN state IN ('completed', 'dead', 'cancelled', 'expired') THEN 1000000
                ELSE coalesce(round(least(greatest((progress ->> 'fraction')::float8, 0), 1)
                                    * 1000000)::bigint, 0) END
$$;

-- Enqueues a callback now, available at once, and wakes every node's
-- waiters of its queue when the transaction commits (as grafter_v1_insert).
CREATE FUNCTION grafter_batch_enqueue(cb jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    now timestamptz := clock_timestamp();
    queue text := cb ->> 'queue';
BEGIN
    INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                      timeout_ms, backoff, created_at, args_bytes, partition)
    VALUES (queue, cb ->> 'kind', cb -> 'args', (cb ->> 'priority')::smallint, 'available', now,
            (cb ->> 'max_attempts')::integer,
            ARRAY(SELECT t FROM jsonb_array_elements_text(coalesce(cb -> 'tags', '[]'))
                           WITH ORDINALITY AS e(t, n) ORDER BY n),
            (cb ->> 'timeout_ms')::bigint, nullif(cb -> 'backoff', 'null'::jsonb), now,
            (cb ->> 'args_bytes')::integer, cb ->> 'partition');
    PERFORM pg_notify(grafter_v1_channel(), E'\n' || queue);
END
$$;

-- Settles a batch whose row this transaction has just written (so holds
-- locked): on_failure once at the first dead job; once sealed and every job
-- finished, its final state, on_success (all completed) and on_complete,
-- each at most once; back to running if a job of a settled batch was retried.
CREATE FUNCTION grafter_batch_settle(batch_id bigint) RETURNS void
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
    IF b.completed = b.total AND b.on_success IS NOT NULL AND NOT b.success_enqueued THEN
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
        success_enqueued = success_enqueued OR (on_success IS NOT NULL AND completed = total),
        complete_enqueued = complete_enqueued OR on_complete IS NOT NULL
    WHERE id = b.id;
END
$$;

-- A statement that moves many jobs of one batch counts them itself, in one
-- write of the batch's row, with grafter.batch_counted set for its
-- transaction (SET LOCAL): each row's own write of that row would leave one
-- more version of it for the next to walk past, quadratic in the jobs moved.
CREATE FUNCTION grafter_batch_job_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('grafter.batch_counted', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        UPDATE batches SET
            total = total - 1,
            completed = completed - (OLD.state = 'completed')::int,
            dead = dead - (OLD.state = 'dead')::int,
            cancelled_jobs = cancelled_jobs - (OLD.state = 'cancelled')::int,
            expired = expired - (OLD.state = 'expired')::int,
            progress = progress - grafter_batch_share(OLD.state, OLD.progress)
        WHERE id = OLD.batch_id;
        PERFORM grafter_batch_settle(OLD.batch_id);
        RETURN NULL;
    END IF;
    UPDATE batches SET
        completed = completed + (NEW.state = 'completed')::int - (OLD.state = 'completed')::int,
        dead = dead + (NEW.state = 'dead')::int - (OLD.state = 'dead')::int,
        cancelled_jobs = cancelled_jobs + (NEW.state = 'cancelled')::int
                                        - (OLD.state = 'cancelled')::int,
        expired = expired + (NEW.state = 'expired')::int - (OLD.state = 'expired')::int,
        progress = progress + grafter_batch_share(NEW.state, NEW.progress)
                            - grafter_batch_share(OLD.state, OLD.progress)
    WHERE id = NEW.batch_id;
    IF OLD.state IS DISTINCT FROM NEW.state THEN
        PERFORM grafter_batch_settle(NEW.batch_id);
    END IF;
    RETURN NULL;
END
$$;

-- Moves between unfinished states without progress (a fetch, a retry) do not
-- touch the batch's row, so they take no lock on it.
CREATE TRIGGER jobs_batch_moved AFTER UPDATE OF state, progress ON jobs
    FOR EACH ROW
    WHEN (NEW.batch_id IS NOT NULL
          AND (OLD.progress IS DISTINCT FROM NEW.progress
               OR (OLD.state IS DISTINCT FROM NEW.state
                   AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
                        OR NEW.state IN ('completed', 'dead', 'cancelled', 'expired')))))
    EXECUTE FUNCTION grafter_batch_job_moved();
-- A job deleted by hand leaves its batch (a pruned batch is deleted first).
CREATE TRIGGER jobs_batch_deleted AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.batch_id IS NOT NULL)
    EXECUTE FUNCTION grafter_batch_job_moved();
