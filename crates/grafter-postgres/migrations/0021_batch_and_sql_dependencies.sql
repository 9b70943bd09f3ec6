-- Jobs that wait for batches (`depends_on_batches`, docs/dependencies.md).
-- A dependent's `deps_left` counts the unfinished batches it waits for
-- beside its unfinished upstream jobs. The batch row's own move into
-- finished (`finished_at` set, its final state with it) releases or cancels
-- its pending dependents in that transaction; a batch reopened (a job of it
-- retried by hand) is unfinished again for those still pending, as a job
-- retried is. Hung on the batch row, not on the functions that count its
-- jobs (migration 15), so how those counts are written may change without
-- this. WHEN is false for batches nothing waits for. A dependent is linked
-- after its inserting transaction has written the batch's row
-- (`has_dependents`), so a batch finishing meanwhile either is seen
-- finished by the link or waits for it and then finds the edge.
ALTER TABLE batches ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

-- Edges: job_id waits for batch_id. By batch for the trigger and the
-- pruner, by job for GET /v1/jobs/{id}/dependencies and a retry's recount.
CREATE TABLE batch_dependencies (
    batch_id bigint NOT NULL,
    job_id   bigint NOT NULL,
    PRIMARY KEY (batch_id, job_id)
);
CREATE INDEX batch_dependencies_of_job ON batch_dependencies (job_id, batch_id);

CREATE FUNCTION grafter_batch_dependents_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released record;
    now timestamptz := clock_timestamp();
    finished boolean;
    failed boolean;
    -- As in grafter_upstream_moved (migration 18): the dependents moved
    -- here are counted by their own batches, even inside a statement that
    -- counts its own batch's jobs.
    counted boolean := current_setting('grafter.batch_counted', true) = 'on';
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- A pruned batch takes its edges with it (the pruner keeps a batch
        -- while a job waiting for it is unfinished).
        DELETE FROM batch_dependencies WHERE batch_id = OLD.id;
        RETURN NULL;
    END IF;
    finished := NEW.finished_at IS NOT NULL;
    failed := finished AND NEW.state <> 'succeeded';
    IF counted THEN
        PERFORM set_config('grafter.batch_counted', 'off', true);
    END IF;
    FOR released IN
        UPDATE jobs SET
            deps_left = deps_left + CASE WHEN finished THEN -1 ELSE 1 END,
            state = CASE WHEN failed AND on_dependency_failure IS NULL THEN 'cancelled'
                         WHEN finished AND deps_left = 1
                             THEN CASE WHEN run_at > now THEN 'scheduled' ELSE 'available' END
                         ELSE state END,
            finished_at = CASE WHEN failed AND on_dependency_failure IS NULL THEN now
                               ELSE finished_at END
        WHERE id IN (SELECT job_id FROM batch_dependencies WHERE batch_id = NEW.id)
          AND state = 'pending'
        RETURNING queue, state
    LOOP
        IF released.state = 'available' THEN
            PERFORM pg_notify(grafter_v1_channel(), E'\n' || released.queue);
        END IF;
    END LOOP;
    IF counted THEN
        PERFORM set_config('grafter.batch_counted', 'on', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_dependents_moved AFTER UPDATE OF finished_at ON batches
    FOR EACH ROW
    WHEN (NEW.has_dependents AND (OLD.finished_at IS NULL) <> (NEW.finished_at IS NULL))
    EXECUTE FUNCTION grafter_batch_dependents_moved();
CREATE TRIGGER batches_dependents_deleted AFTER DELETE ON batches
    FOR EACH ROW WHEN (OLD.has_dependents)
    EXECUTE FUNCTION grafter_batch_dependents_moved();

-- As migration 18's, with the batches: a deleted dependent takes its batch
-- edges with it too, and a finished dependent retried by hand waits again
-- for the upstream jobs and batches that are unfinished now.
CREATE OR REPLACE FUNCTION grafter_dependencies_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- An unfinished upstream deleted by hand fails its dependents as a
        -- cancel would; a deleted dependent takes its edges with it.
        IF OLD.has_dependents THEN
            IF OLD.state NOT IN ('completed', 'dead', 'cancelled', 'expired') THEN
                PERFORM grafter_upstream_moved(OLD.id, -1, true);
            END IF;
            DELETE FROM job_dependencies WHERE depends_on = OLD.id;
        END IF;
        IF OLD.deps_left IS NOT NULL THEN
            DELETE FROM job_dependencies WHERE job_id = OLD.id;
            DELETE FROM batch_dependencies WHERE job_id = OLD.id;
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.has_dependents
       AND (OLD.state IN ('completed', 'dead', 'cancelled', 'expired'))
           IS DISTINCT FROM (NEW.state IN ('completed', 'dead', 'cancelled', 'expired')) THEN
        IF NEW.state IN ('completed', 'dead', 'cancelled', 'expired') THEN
            PERFORM grafter_upstream_moved(NEW.id, -1, NEW.state <> 'completed');
        ELSE
            PERFORM grafter_upstream_moved(NEW.id, 1, false);
        END IF;
    END IF;
    -- A finished dependent retried by hand waits again for the upstreams
    -- that are unfinished now; one that failed counts as done (the retry
    -- asked for the job to run).
    IF NEW.deps_left IS NOT NULL
       AND OLD.state IN ('completed', 'dead', 'cancelled', 'expired')
       AND NEW.state IN ('scheduled', 'available') THEN
        UPDATE jobs SET
            deps_left = u.unfinished,
            state = CASE WHEN u.unfinished > 0 THEN 'pending' ELSE jobs.state END
        FROM (SELECT ((SELECT count(*)
                       FROM job_dependencies AS d JOIN jobs AS j ON j.id = d.depends_on
                       WHERE d.job_id = NEW.id
                         AND j.state NOT IN ('completed', 'dead', 'cancelled', 'expired'))
                    + (SELECT count(*)
                       FROM batch_dependencies AS d JOIN batches AS b ON b.id = d.batch_id
                       WHERE d.job_id = NEW.id AND b.finished_at IS NULL))::integer
                     AS unfinished) AS u
        WHERE jobs.id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;

-- The SQL enqueue function takes dependencies (docs/protocol.md): a job's
-- `depends_on` (ids of jobs that exist before the call: refs, which name
-- jobs of the same request, are refused), `depends_on_batches` (ids of
-- sealed batches) and `on_dependency_failure`, checked and linked as the
-- Rust store does (dependencies.rs, with the same messages), after the
-- jobs are in. An addition to _v1: what it took before it takes the same.
ALTER TYPE grafter_v1_new_job
    ADD ATTRIBUTE depends_on bigint[],
    ADD ATTRIBUTE depends_on_batches bigint[],
    ADD ATTRIBUTE on_dependency_failure text;

-- One job of the input, as migration 10's, and the three fields above.
CREATE OR REPLACE FUNCTION grafter_v1_parse(job json, prefix text) RETURNS grafter_v1_new_job
LANGUAGE plpgsql AS $$
DECLARE
    j grafter_v1_new_job;
    field record;
    seen text[] := '{}';
    parsed record;
    has_nul boolean := false;
    tag json;
    i integer;
    backoff_field record;
    backoff_seen text[];
    base_ms numeric := 1000;
    max_ms numeric := 3600000;
    factor numeric := 2.0;
    jitter numeric := 0.1;
    backoff_given boolean := false;
    factor_literal text := '2.0';
    jitter_literal text := '0.1';
    source text := job::text;
    nul_marked boolean := false;
    body text := coalesce(nullif(rtrim(prefix, '.'), ''), 'body');
    upstream record;
    policy text;
BEGIN
    -- PostgreSQL's JSON functions fail on \u0000 anywhere in an object
    -- (they unescape every string), so each one not itself escaped becomes
    -- U+FDD0, and the strings that hold one are refused where serde would
    -- refuse the NUL.
    IF strpos(source, '\u0000') > 0 THEN
        WHILE source ~ '(^|[^\\])(\\\\)*\\u0000' LOOP
            source := regexp_replace(source, '((^|[^\\])(\\\\)*)\\u0000', '\1\\ufdd0', 'g');
        END LOOP;
        nul_marked := true;
        job := source::json;
    END IF;
    -- A lone UTF-16 surrogate escape is not text: refused whole, as JSON
    -- that does not parse.
    IF source ~* '\\ud[89a-f]' THEN
        BEGIN
            PERFORM source::jsonb;
        EXCEPTION WHEN invalid_text_representation THEN
            PERFORM grafter_v1_refuse(body, 'not valid JSON: a lone UTF-16 surrogate escape');
        END;
    END IF;
    IF json_typeof(job) IS DISTINCT FROM 'object' THEN
        PERFORM grafter_v1_invalid_type(body, job, 'struct NewJob');
    END IF;
    j.queue := 'default';
    j.priority := 0;
    j.max_attempts := 25;
    j.tags := '{}';
    FOR field IN SELECT key, value FROM json_each(job) LOOP
        IF field.key = ANY (seen) THEN
            PERFORM grafter_v1_refuse(body, format('duplicate field `%s`', field.key));
        END IF;
        seen := seen || field.key;
        CASE field.key
        WHEN 'kind' THEN
            j.kind := grafter_v1_string(prefix || 'kind', field.value, nul_marked);
        WHEN 'args' THEN
            parsed := grafter_v1_args(prefix || 'args', field.value, nul_marked);
            j.args := parsed.value;
            j.args_bytes := parsed.bytes;
            has_nul := parsed.has_nul;
        WHEN 'queue' THEN
            j.queue := grafter_v1_string(prefix || 'queue', field.value, nul_marked);
        WHEN 'priority' THEN
            j.priority := grafter_v1_integer(prefix || 'priority', field.value, -32768, 32767, 'i16');
        WHEN 'run_at' THEN
            IF json_typeof(field.value) <> 'null' THEN
                j.run_at := grafter_v1_time(prefix || 'run_at', field.value, nul_marked);
            END IF;
        WHEN 'max_attempts' THEN
            j.max_attempts := grafter_v1_integer(prefix || 'max_attempts', field.value, -2147483648, 2147483647, 'i32');
        WHEN 'tags' THEN
            IF json_typeof(field.value) <> 'array' THEN
                PERFORM grafter_v1_invalid_type(prefix || 'tags', field.value, 'a sequence');
            END IF;
            i := 0;
            FOR tag IN SELECT value FROM json_array_elements(field.value) LOOP
                j.tags := j.tags || grafter_v1_string(format('%stags[%s]', prefix, i), tag, nul_marked);
                i := i + 1;
            END LOOP;
        WHEN 'unique_key' THEN
            IF json_typeof(field.value) <> 'null' THEN
                j.unique_key := grafter_v1_string(prefix || 'unique_key', field.value, nul_marked);
            END IF;
        WHEN 'timeout_ms' THEN
            IF json_typeof(field.value) <> 'null' THEN
                j.timeout_ms := grafter_v1_integer(prefix || 'timeout_ms', field.value,
                                                   -9223372036854775808, 9223372036854775807, 'i64');
            END IF;
        WHEN 'expires_at' THEN
            IF json_typeof(field.value) <> 'null' THEN
                j.expires_at := grafter_v1_time(prefix || 'expires_at', field.value, nul_marked);
            END IF;
        WHEN 'backoff' THEN
            IF json_typeof(field.value) <> 'null' THEN
                IF json_typeof(field.value) <> 'object' THEN
                    PERFORM grafter_v1_invalid_type(prefix || 'backoff', field.value, 'struct Backoff');
                END IF;
                backoff_given := true;
                backoff_seen := '{}';
                FOR backoff_field IN SELECT key, value FROM json_each(field.value) LOOP
                    IF backoff_field.key = ANY (backoff_seen) THEN
                        PERFORM grafter_v1_refuse(prefix || 'backoff',
                                                  format('duplicate field `%s`', backoff_field.key));
                    END IF;
                    backoff_seen := backoff_seen || backoff_field.key;
                    CASE backoff_field.key
                    WHEN 'base_ms' THEN
                        base_ms := grafter_v1_integer(prefix || 'backoff.base_ms', backoff_field.value,
                                                      0, 18446744073709551615, 'u64');
                    WHEN 'max_ms' THEN
                        max_ms := grafter_v1_integer(prefix || 'backoff.max_ms', backoff_field.value,
                                                     0, 18446744073709551615, 'u64');
                    WHEN 'factor' THEN
                        IF json_typeof(backoff_field.value) IS DISTINCT FROM 'number' THEN
                            PERFORM grafter_v1_invalid_type(prefix || 'backoff.factor', backoff_field.value, 'f64');
                        END IF;
                        factor_literal := backoff_field.value::text;
                        factor := (grafter_v1_float(prefix || 'backoff.factor', factor_literal)).value;
                    WHEN 'jitter' THEN
                        IF json_typeof(backoff_field.value) IS DISTINCT FROM 'number' THEN
                            PERFORM grafter_v1_invalid_type(prefix || 'backoff.jitter', backoff_field.value, 'f64');
                        END IF;
                        jitter_literal := backoff_field.value::text;
                        jitter := (grafter_v1_float(prefix || 'backoff.jitter', jitter_literal)).value;
                    ELSE
                        PERFORM grafter_v1_refuse(prefix || 'backoff.' || backoff_field.key, format(
                            'unknown field `%s`, expected one of `base_ms`, `factor`, `max_ms`, `jitter`',
                            backoff_field.key));
                    END CASE;
                END LOOP;
            END IF;
        WHEN 'depends_on' THEN
            -- Ids of jobs that exist; a ref (a string) names a job of the
            -- same request, which the function does not take.
            IF json_typeof(field.value) <> 'array' THEN
                PERFORM grafter_v1_invalid_type(prefix || 'depends_on', field.value, 'a sequence');
            END IF;
            j.depends_on := '{}';
            FOR upstream IN SELECT value, ordinality - 1 AS k
                            FROM json_array_elements(field.value) WITH ORDINALITY LOOP
                IF json_typeof(upstream.value) = 'string' THEN
                    PERFORM grafter_v1_refuse(format('%sdepends_on[%s]', prefix, upstream.k),
                        'the SQL function takes job ids only, not refs (a ref names a job of the same request)');
                END IF;
                j.depends_on := j.depends_on || grafter_v1_integer(
                    format('%sdepends_on[%s]', prefix, upstream.k), upstream.value,
                    -9223372036854775808, 9223372036854775807,
                    'a job id (an integer) or a ref of this request (a string)')::bigint;
            END LOOP;
        WHEN 'depends_on_batches' THEN
            IF json_typeof(field.value) <> 'array' THEN
                PERFORM grafter_v1_invalid_type(prefix || 'depends_on_batches', field.value, 'a sequence');
            END IF;
            j.depends_on_batches := '{}';
            FOR upstream IN SELECT value, ordinality - 1 AS k
                            FROM json_array_elements(field.value) WITH ORDINALITY LOOP
                j.depends_on_batches := j.depends_on_batches || grafter_v1_integer(
                    format('%sdepends_on_batches[%s]', prefix, upstream.k), upstream.value,
                    -9223372036854775808, 9223372036854775807, 'i64')::bigint;
            END LOOP;
        WHEN 'on_dependency_failure' THEN
            IF json_typeof(field.value) <> 'null' THEN
                policy := grafter_v1_string(prefix || 'on_dependency_failure', field.value, nul_marked);
                IF policy NOT IN ('cancel', 'run') THEN
                    PERFORM grafter_v1_refuse(prefix || 'on_dependency_failure', format(
                        'unknown variant `%s`, expected `cancel` or `run`', left(policy, 100)));
                END IF;
                j.on_dependency_failure := policy;
            END IF;
        ELSE
            PERFORM grafter_v1_refuse(prefix || field.key, format(
                'unknown field `%s`, expected one of `kind`, `args`, `queue`, `priority`, `run_at`, '
                '`max_attempts`, `tags`, `unique_key`, `timeout_ms`, `expires_at`, `backoff`, '
                '`depends_on`, `depends_on_batches`, `on_dependency_failure`', field.key));
        END CASE;
    END LOOP;
    IF j.kind IS NULL THEN
        PERFORM grafter_v1_refuse(prefix || 'kind', 'missing field `kind`');
    END IF;
    IF NOT 'args' = ANY (seen) THEN
        j.args := '{}';
        j.args_bytes := 2;
    END IF;

    -- NewJob::validate, in its order.
    PERFORM grafter_v1_check_name(prefix || 'kind', j.kind);
    PERFORM grafter_v1_check_name(prefix || 'queue', j.queue);
    IF has_nul THEN
        PERFORM grafter_v1_refuse(prefix || 'args', 'must not contain the NUL character (\u0000)');
    END IF;
    IF j.max_attempts < 1 THEN
        PERFORM grafter_v1_refuse(prefix || 'max_attempts', format('must be at least 1, got %s', j.max_attempts));
    END IF;
    IF cardinality(j.tags) > 64 THEN
        PERFORM grafter_v1_refuse(prefix || 'tags', format('at most 64 tags, got %s', cardinality(j.tags)));
    END IF;
    FOR i IN 1 .. cardinality(j.tags) LOOP
        PERFORM grafter_v1_check_name(prefix || 'tags', j.tags[i]);
    END LOOP;
    IF j.unique_key IS NOT NULL THEN
        PERFORM grafter_v1_check_name(prefix || 'unique_key', j.unique_key);
    END IF;
    IF j.timeout_ms NOT BETWEEN 1 AND 3153600000000 THEN
        PERFORM grafter_v1_refuse(prefix || 'timeout_ms', format(
            'must be between 1 and 3153600000000 milliseconds (100 years), got %s', j.timeout_ms));
    END IF;
    -- run_at and expires_at were range-checked as they were read.
    IF backoff_given THEN
        IF factor < 1.0 THEN
            PERFORM grafter_v1_refuse(prefix || 'backoff', format('factor must be a number >= 1.0, got %s', factor_literal));
        END IF;
        IF jitter NOT BETWEEN 0.0 AND 1.0 THEN
            PERFORM grafter_v1_refuse(prefix || 'backoff', format('jitter must be between 0.0 and 1.0, got %s', jitter_literal));
        END IF;
        IF max_ms > 31536000000 THEN
            PERFORM grafter_v1_refuse(prefix || 'backoff', format('max_ms must be at most 31536000000 (365 days), got %s', max_ms));
        END IF;
        IF max_ms < base_ms THEN
            PERFORM grafter_v1_refuse(prefix || 'backoff', format('max_ms (%s) must be at least base_ms (%s)', max_ms, base_ms));
        END IF;
        j.backoff := jsonb_build_object('base_ms', base_ms, 'factor', factor, 'max_ms', max_ms, 'jitter', jitter);
    END IF;
    -- The graph's rules (grafter_core::dependency::plan) for a job alone.
    IF cardinality(j.depends_on) > 100 THEN
        PERFORM grafter_v1_refuse(prefix || 'depends_on', format(
            'at most 100 dependencies, got %s', cardinality(j.depends_on)));
    END IF;
    IF cardinality(j.depends_on_batches) > 100 THEN
        PERFORM grafter_v1_refuse(prefix || 'depends_on_batches', format(
            'at most 100 batches, got %s', cardinality(j.depends_on_batches)));
    END IF;
    IF (cardinality(j.depends_on) > 0 OR cardinality(j.depends_on_batches) > 0)
       AND j.unique_key IS NOT NULL THEN
        PERFORM grafter_v1_refuse(prefix || 'unique_key', 'a job with depends_on cannot have a unique_key');
    END IF;
    RETURN j;
END $$;

-- Links the jobs just inserted (`inserted`, grafter_v1_insert's answer, in
-- the order of `parsed`: a job with dependencies has no unique_key, so each
-- was created) to their upstreams, as dependencies.rs links them: every
-- upstream job's row written (`has_dependents`, which locks it) before any
-- batch's, each state read after its row is held, an id of a job of this
-- same call refused (only jobs that existed before may be named, so no id
-- makes a cycle), and each dependent settled `pending`, due or `cancelled`.
-- Answers `inserted` with the dependents' rows as they are now.
CREATE FUNCTION grafter_v1_link(parsed grafter_v1_new_job[], inserted jsonb, many boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    prefix text;
    upstream bigint;
    is_open boolean;
    settled jobs;
    now timestamptz := clock_timestamp();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(parsed) AS j
                   WHERE cardinality(j.depends_on) > 0 OR cardinality(j.depends_on_batches) > 0) THEN
        RETURN inserted;
    END IF;
    ids := ARRAY(SELECT (e ->> 'id')::bigint FROM jsonb_array_elements(inserted) WITH ORDINALITY AS a(e, n)
                 ORDER BY n);
    FOR i IN 1 .. cardinality(parsed) LOOP
        prefix := CASE WHEN many THEN format('jobs[%s].', i - 1) ELSE '' END;
        FOR k IN 1 .. coalesce(cardinality(parsed[i].depends_on), 0) LOOP
            upstream := parsed[i].depends_on[k];
            IF upstream = ANY (ids) THEN
                PERFORM grafter_v1_refuse(format('%sdepends_on[%s]', prefix, k - 1), format(
                    'job %s is inserted by this same request: name it by its ref '
                    '(an id must name a job that exists already)', upstream));
            END IF;
            UPDATE jobs SET has_dependents = true WHERE id = upstream;
            IF NOT FOUND THEN
                PERFORM grafter_v1_refuse(format('%sdepends_on[%s]', prefix, k - 1),
                                          format('job %s does not exist', upstream));
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

-- The entry points of migration 10, linking after inserting.
CREATE OR REPLACE FUNCTION grafter_enqueue_v1(job json) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT SET extra_float_digits TO 1 AS $$
DECLARE
    parsed grafter_v1_new_job[] := ARRAY[grafter_v1_parse(job, '')];
BEGIN
    RETURN grafter_v1_link(parsed, grafter_v1_insert(parsed), false) -> 0;
END $$;

CREATE OR REPLACE FUNCTION grafter_enqueue_many_v1(jobs json) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT SET extra_float_digits TO 1 AS $$
DECLARE
    parsed grafter_v1_new_job[] := '{}';
    job record;
    n integer;
BEGIN
    IF json_typeof(jobs) IS DISTINCT FROM 'array' THEN
        PERFORM grafter_v1_invalid_type('jobs', jobs, 'a sequence');
    END IF;
    n := json_array_length(jobs);
    IF n NOT BETWEEN 1 AND 10000 THEN
        PERFORM grafter_v1_refuse('jobs', format('must hold 1 to 10000 jobs, got %s', n));
    END IF;
    FOR job IN SELECT value, ordinality - 1 AS i FROM json_array_elements(jobs) WITH ORDINALITY LOOP
        parsed := parsed || grafter_v1_parse(job.value, format('jobs[%s].', job.i));
    END LOOP;
    RETURN grafter_v1_link(parsed, grafter_v1_insert(parsed), true);
END $$;
