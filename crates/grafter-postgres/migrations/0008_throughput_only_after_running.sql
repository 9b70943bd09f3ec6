-- Per-minute throughput counts attempts that end: rows leaving 'running'. The
-- trigger joined the rows before and after every update to find them, also
-- for the updates that have none (every fetch, every heartbeat). It now looks
-- for a running row before the join, and counts per queue and state as before.
CREATE OR REPLACE FUNCTION jobs_counts_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT SET enable_nestloop TO off AS $$
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

    IF EXISTS (SELECT 1 FROM old_rows WHERE state = 'running')
       AND EXISTS (SELECT 1 FROM new_rows WHERE state IN ('completed', 'retryable', 'dead')) THEN
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
    END IF;
    RETURN NULL;
END $$;
