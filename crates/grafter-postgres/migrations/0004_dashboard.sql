-- What the dashboard reads at any size without counting the jobs table,
-- mirroring grafter-sqlite/migrations/0004_dashboard.sql: job counts per queue
-- and state, throughput per minute, and tags as index rows.
--
-- Many nodes write jobs at once here, so a counter row updated by every
-- statement would make them queue behind each other's row locks. Instead each
-- statement appends its net change to a delta table (inserts never wait), and
-- readers add the deltas to the totals. A background task on each node folds
-- the deltas into the totals every second (rollup in src/browse.rs).
--
-- Trigger functions pin their search_path, so they find these tables however
-- the session that fires them has its own set.

-- No writes between counting what exists and the triggers taking over.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE job_counts (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL,
    PRIMARY KEY (queue, state)
);
CREATE TABLE job_count_deltas (
    queue text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL
);
INSERT INTO job_counts (queue, state, n) SELECT queue, state, count(*) FROM jobs GROUP BY queue, state;

-- Attempts ended per minute (UTC): completions in the minute of finished_at,
-- failures (running → retryable or dead) in the minute of the error recorded.
CREATE TABLE job_throughput (
    minute    timestamptz PRIMARY KEY,
    completed bigint      NOT NULL,
    failed    bigint      NOT NULL
);
CREATE TABLE job_throughput_deltas (
    minute    timestamptz NOT NULL,
    completed bigint      NOT NULL,
    failed    bigint      NOT NULL
);

CREATE FUNCTION jobs_counts_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_count_deltas (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_counts_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_count_deltas (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_counts_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    -- Rows whose queue and state did not change cancel out (a heartbeat adds nothing).
    INSERT INTO job_count_deltas (queue, state, n)
    SELECT queue, state, sum(n) FROM (
        SELECT queue, state, -1 AS n FROM old_rows
        UNION ALL
        SELECT queue, state, 1 FROM new_rows
    ) AS d
    GROUP BY queue, state
    HAVING sum(n) <> 0;

    INSERT INTO job_throughput_deltas (minute, completed, failed)
    SELECT minute, count(*) FILTER (WHERE done), count(*) FILTER (WHERE NOT done)
    FROM (
        SELECT n.state = 'completed' AS done,
               date_trunc('minute', CASE WHEN n.state = 'completed' THEN n.finished_at
                                         ELSE coalesce((n.errors -> -1 ->> 'at')::timestamptz,
                                                       n.attempted_at) END
                                    AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS minute
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE o.state = 'running' AND n.state IN ('completed', 'retryable', 'dead')
    ) AS t
    GROUP BY minute;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_counts_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_counts_inserted();
CREATE TRIGGER jobs_counts_deleted AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_counts_deleted();
CREATE TRIGGER jobs_counts_updated AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counts_updated();

-- Tags as rows, so "jobs tagged X, newest first" is an index range. Tags are
-- set on insert; the triggers skip untagged jobs before calling anything. Row
-- triggers of one event fire in name order: the old tags go before the new come.
CREATE TABLE job_tags (
    tag    text   NOT NULL,
    job_id bigint NOT NULL,
    PRIMARY KEY (tag, job_id)
);
INSERT INTO job_tags (tag, job_id)
    SELECT DISTINCT t, id FROM jobs, unnest(tags) AS t WHERE tags <> '{}';

CREATE FUNCTION jobs_tags_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_tags (tag, job_id) SELECT DISTINCT t, NEW.id FROM unnest(NEW.tags) AS t
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION jobs_tags_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM job_tags WHERE tag = ANY (OLD.tags) AND job_id = OLD.id;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_tags_inserted AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.tags <> '{}') EXECUTE FUNCTION jobs_tags_inserted();
CREATE TRIGGER jobs_tags_deleted AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.tags <> '{}') EXECUTE FUNCTION jobs_tags_deleted();
CREATE TRIGGER jobs_tags_updated_1_old AFTER UPDATE OF tags ON jobs
    FOR EACH ROW WHEN (OLD.tags IS DISTINCT FROM NEW.tags AND OLD.tags <> '{}')
    EXECUTE FUNCTION jobs_tags_deleted();
CREATE TRIGGER jobs_tags_updated_2_new AFTER UPDATE OF tags ON jobs
    FOR EACH ROW WHEN (OLD.tags IS DISTINCT FROM NEW.tags AND NEW.tags <> '{}')
    EXECUTE FUNCTION jobs_tags_inserted();

-- Listing by queue or kind, with or without a state, newest first: one ordered
-- range per state. Counting no longer reads the jobs table.
DROP INDEX jobs_queue_state;
CREATE INDEX jobs_queue_state ON jobs (queue, state, id);
DROP INDEX jobs_kind;
CREATE INDEX jobs_kind_state ON jobs (kind, state, id);
