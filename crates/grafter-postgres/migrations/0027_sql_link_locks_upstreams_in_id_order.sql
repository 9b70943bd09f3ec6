-- Migration 25's linking for the SQL enqueue, locking the upstream jobs and
-- then the upstream batches each in id order before linking (as
-- dependencies.rs now does): locked in the order a call named them, two
-- calls naming the same upstreams in other orders deadlocked (PostgreSQL
-- broke it by failing one). Unchanged otherwise: the walk that links still
-- refuses, naming the entry, an upstream the first pass found missing.
CREATE OR REPLACE FUNCTION grafter_v1_link(parsed grafter_v1_new_job[], inserted jsonb, many boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    prefix text;
    upstream bigint;
    is_open boolean;
    marked bigint[] := '{}';
    settled jobs;
    now timestamptz := clock_timestamp();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(parsed) AS j
                   WHERE cardinality(j.depends_on) > 0 OR cardinality(j.depends_on_batches) > 0) THEN
        RETURN inserted;
    END IF;
    ids := ARRAY(SELECT (e ->> 'id')::bigint FROM jsonb_array_elements(inserted) WITH ORDINALITY AS a(e, n)
                 ORDER BY n);
    FOR upstream IN SELECT DISTINCT u FROM unnest(parsed) AS j, unnest(j.depends_on) AS u
                    WHERE NOT u = ANY (ids) ORDER BY u LOOP
        UPDATE jobs SET has_dependents = true WHERE id = upstream;
        IF FOUND THEN
            marked := marked || upstream;
        END IF;
    END LOOP;
    FOR upstream IN SELECT DISTINCT u FROM unnest(parsed) AS j, unnest(j.depends_on_batches) AS u
                    ORDER BY u LOOP
        UPDATE batches SET has_dependents = true WHERE id = upstream;
    END LOOP;
    FOR i IN 1 .. cardinality(parsed) LOOP
        prefix := CASE WHEN many THEN format('jobs[%s].', i - 1) ELSE '' END;
        FOR k IN 1 .. coalesce(cardinality(parsed[i].depends_on), 0) LOOP
            upstream := parsed[i].depends_on[k];
            IF upstream = ANY (ids) THEN
                PERFORM grafter_v1_refuse(format('%sdepends_on[%s]', prefix, k - 1), format(
                    'job %s is inserted by this same request: name it by its ref '
                    '(an id must name a job that exists already)', upstream));
            END IF;
            IF NOT upstream = ANY (marked) THEN
                UPDATE jobs SET has_dependents = true WHERE id = upstream;
                IF NOT FOUND THEN
                    PERFORM grafter_v1_refuse(format('%sdepends_on[%s]', prefix, k - 1),
                                              format('job %s does not exist', upstream));
                END IF;
                marked := marked || upstream;
            END IF;
            INSERT INTO job_dependencies (depends_on, job_id) VALUES (upstream, ids[i])
            ON CONFLICT DO NOTHING;
        END LOOP;
    END LOOP;
    FOR i IN 1 .. cardinality(parsed) LOOP
        prefix := CASE WHEN many THEN format('jobs[%s].', i - 1) ELSE '' END;
        FOR k IN 1 .. coalesce(cardinality(parsed[i].depends_on_batches), 0) LOOP
            upstream := parsed[i].depends_on_batches[k];
            UPDATE batches SET has_dependents = true WHERE id = upstream RETURNING batches.open INTO is_open;
            IF NOT FOUND THEN
                PERFORM grafter_v1_refuse(format('%sdepends_on_batches[%s]', prefix, k - 1),
                                          format('batch %s does not exist', upstream));
            END IF;
            IF is_open THEN
                PERFORM grafter_v1_refuse(format('%sdepends_on_batches[%s]', prefix, k - 1), format(
                    'batch %s is open: seal it first (an open batch could yet take a job '
                    'that waits for this one)', upstream));
            END IF;
            INSERT INTO batch_dependencies (batch_id, job_id) VALUES (upstream, ids[i])
            ON CONFLICT DO NOTHING;
        END LOOP;
    END LOOP;
    FOR i IN 1 .. cardinality(parsed) LOOP
        CONTINUE WHEN coalesce(cardinality(parsed[i].depends_on), 0) = 0
                  AND coalesce(cardinality(parsed[i].depends_on_batches), 0) = 0;
        -- As dependencies.rs's SETTLE: NULL is the policy cancel.
        UPDATE jobs SET
            deps_left = u.unfinished,
            on_dependency_failure = nullif(parsed[i].on_dependency_failure, 'cancel'),
            state = CASE WHEN u.failed > 0 AND nullif(parsed[i].on_dependency_failure, 'cancel') IS NULL
                             THEN 'cancelled'
                         WHEN u.unfinished > 0 THEN 'pending'
                         ELSE jobs.state END,
            finished_at = CASE WHEN u.failed > 0 AND nullif(parsed[i].on_dependency_failure, 'cancel') IS NULL
                                   THEN now
                               ELSE jobs.finished_at END
        FROM (SELECT coalesce(sum(unfinished), 0)::integer AS unfinished,
                     coalesce(sum(failed), 0) AS failed
              FROM (SELECT (j.state NOT IN ('completed', 'dead', 'cancelled', 'expired'))::integer
                               AS unfinished,
                           (j.state IN ('dead', 'cancelled', 'expired'))::integer AS failed
                    FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
                    WHERE d.job_id = ids[i]
                    UNION ALL
                    SELECT (b.finished_at IS NULL)::integer,
                           (b.finished_at IS NOT NULL AND b.state <> 'succeeded')::integer
                    FROM batch_dependencies AS d JOIN batches AS b ON b.id = d.batch_id
                    WHERE d.job_id = ids[i]) AS edges) AS u
        WHERE jobs.id = ids[i]
        RETURNING jobs.* INTO settled;
        inserted := jsonb_set(inserted, ARRAY[(i - 1)::text], grafter_v1_job_json(settled));
    END LOOP;
    RETURN inserted;
END $$;
