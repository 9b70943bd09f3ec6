-- Transactional enqueue from any language: SQL functions that enqueue jobs
-- inside the caller's own transaction, so a job exists if and only if that
-- transaction commits, and waiting fetches on every node wake when it does.
--
--   SELECT grafter_enqueue_v1('{"kind": "send_email", "args": {"to": "a@b"}}');
--   SELECT grafter_enqueue_many_v1('[{"kind": "a"}, {"kind": "b", "queue": "mail"}]');
--
-- Input: the JSON of POST /v1/jobs (one job) or a JSON array of such jobs
-- (1 to 10,000, inserted in order: all or none), as `json` rather than
-- `jsonb`: `json` keeps the text as sent, so the functions can tell what
-- jsonb would lose and what the HTTP API tells apart (a duplicate field, a
-- NUL in a string, `1e2` versus `100`).
-- Output: each job as `jsonb` in the shape of GET /v1/jobs/{id}. A job whose
-- unique_key an unfinished job holds is not inserted: that job is returned.
-- Errors: SQLSTATE 22023 (invalid_parameter_value), the message
-- "<field>: <what is wrong>" and the field also as the error's column name
-- (PG_DIAG_COLUMN_NAME); 40001 when a unique_key keeps changing hands.
--
-- The rules are the Rust store's (NewJob::validate, inserts.rs, enqueue.rs),
-- restated in SQL; tests/enqueue_function.rs holds the two to the same
-- outcome. Versioned: an incompatible change adds grafter_enqueue_v2 (with
-- its own grafter_v2_ helpers) and keeps every v1 object as it is.
--
-- Runs with search_path set to the store's schema; the two entry points pin
-- it (SET search_path FROM CURRENT), so they find the tables and their
-- grafter_v1_ helpers whatever the caller's search_path, and callers need
-- only call them schema-qualified. The helpers are internal: they inherit
-- the entry point's settings (a SET clause on each call cost a third of
-- the time).

-- The channel the nodes LISTEN on, as migrations.rs computed it for this
-- schema (PostgresConfig::schema decides it, and from the database alone a
-- store configured without a schema cannot be told from one named "public").
DO $migration$
DECLARE
    channel text := current_setting('grafter.notify_channel', true);
BEGIN
    IF coalesce(channel, '') = '' THEN
        RAISE EXCEPTION 'migration 10 needs the setting grafter.notify_channel: run it with grafter migrate';
    END IF;
    EXECUTE format(
        'CREATE FUNCTION grafter_v1_channel() RETURNS text LANGUAGE sql IMMUTABLE AS %L',
        format('SELECT %L::text', channel));
END
$migration$;

-- A job as the functions parse it, before insert.
CREATE TYPE grafter_v1_new_job AS (
    kind         text,
    queue        text,
    args         jsonb,
    args_bytes   integer,
    priority     smallint,
    run_at       timestamptz,
    max_attempts integer,
    tags         text[],
    unique_key   text,
    timeout_ms   bigint,
    expires_at   timestamptz,
    backoff      jsonb
);

CREATE FUNCTION grafter_v1_refuse(field text, message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
        MESSAGE = field || ': ' || message, COLUMN = field;
END $$;

-- What serde says a JSON value is, for "invalid type" messages.
CREATE FUNCTION grafter_v1_describe(value json) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE json_typeof(value)
        WHEN 'string' THEN 'string ' || left(value::text, 100)
        WHEN 'number' THEN CASE WHEN value::text ~ '^-?(0|[1-9][0-9]*)$' AND value::text <> '-0'
                                THEN 'integer `' || value::text || '`'
                                ELSE 'floating point `' || value::text || '`' END
        WHEN 'boolean' THEN 'boolean `' || value::text || '`'
        WHEN 'array' THEN 'sequence'
        WHEN 'object' THEN 'map'
        ELSE 'null' END
$$;

CREATE FUNCTION grafter_v1_invalid_type(field text, value json, expected text) RETURNS void
LANGUAGE sql AS $$
    SELECT grafter_v1_refuse(field, 'invalid type: ' || grafter_v1_describe(value) || ', expected ' || expected)
$$;

-- A JSON string's text. PostgreSQL text cannot hold NUL: grafter_v1_parse
-- wrote each \u0000 as U+FDD0 (a noncharacter) and says so in `nul_marked`.
CREATE FUNCTION grafter_v1_string(field text, value json, nul_marked boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    text_out text;
BEGIN
    IF json_typeof(value) IS DISTINCT FROM 'string' THEN
        PERFORM grafter_v1_invalid_type(field, value, 'a string');
    END IF;
    text_out := value #>> '{}';
    IF nul_marked AND strpos(text_out, U&'\FDD0') > 0 THEN
        PERFORM grafter_v1_refuse(field, 'must not contain control or invisible characters (found U+0000)');
    END IF;
    RETURN text_out;
END $$;

-- A JSON integer in [min, max]: serde reads 1.0, 1e2 and -0 as floating
-- point, which an integer field refuses.
CREATE FUNCTION grafter_v1_integer(field text, value json, min numeric, max numeric, rust_type text)
RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    literal text := value::text;
BEGIN
    IF json_typeof(value) IS DISTINCT FROM 'number'
       OR literal !~ '^-?(0|[1-9][0-9]*)$' OR literal = '-0' THEN
        PERFORM grafter_v1_invalid_type(field, value, rust_type);
    END IF;
    IF length(literal) > 40 OR literal::numeric NOT BETWEEN min AND max THEN
        PERFORM grafter_v1_refuse(field, 'invalid value: integer `' || left(literal, 100) || '`, expected ' || rust_type);
    END IF;
    RETURN literal::numeric;
END $$;

-- A JSON number read as serde_json reads it into an f64, then written back
-- as the Rust store writes it: `value` is what jsonb then holds, `json_len`
-- the length of serde_json's own text for it (1e+22, 100.0, -0.0). Shortest
-- round-trip digits come from float8's text: the entry points set
-- extra_float_digits to 1 for it.
CREATE FUNCTION grafter_v1_float(field text, literal text, OUT value numeric, OUT json_len integer)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    exact numeric := literal::numeric;
    f float8;
    digits text;
    n integer;
    e integer;
BEGIN
    BEGIN
        f := exact::float8;
    EXCEPTION WHEN numeric_value_out_of_range THEN
        IF abs(exact) >= 1 THEN
            PERFORM grafter_v1_refuse(field, 'number out of range');
        END IF;
        f := 0;  -- too small for an f64: serde_json reads 0
    END;
    IF f = 0 THEN
        value := 0.0;
        json_len := CASE WHEN left(literal, 1) = '-' THEN 4 ELSE 3 END;  -- -0.0, 0.0
        RETURN;
    END IF;
    value := f::text::numeric;
    IF value = trunc(value) AND abs(value) < 1e16 THEN
        value := round(value, 1);  -- written 100.0, so stored with one decimal
    END IF;
    -- The significant digits and the exponent of the first one.
    digits := rtrim(ltrim(replace(abs(value)::text, '.', ''), '0'), '0');
    n := length(digits);
    IF abs(value) >= 1 THEN
        e := length(trunc(abs(value))::text) - 1;
    ELSE
        e := -(length(substring(abs(value)::text FROM '^0\.(0*)')) + 1);
    END IF;
    -- serde_json's float text (the zmij crate): positional between 1e-5 and 1e16.
    json_len := CASE
        WHEN e BETWEEN -5 AND 15 AND n - 1 <= e THEN e + 3
        WHEN e BETWEEN 0 AND 15 THEN n + 1
        WHEN e BETWEEN -5 AND -1 THEN 1 - e + n
        ELSE n + CASE WHEN n > 1 THEN 1 ELSE 0 END + 2 + length(abs(e)::text)
    END + CASE WHEN f < 0 THEN 1 ELSE 0 END;
END $$;

-- Whether a JSON number is an integer serde_json keeps as one (i64 or u64;
-- -0 is the float -0.0).
CREATE FUNCTION grafter_v1_whole(literal text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT literal ~ '^-?(0|[1-9][0-9]{0,19})$' AND literal <> '-0'
       AND literal::numeric BETWEEN -9223372036854775808 AND 18446744073709551615
$$;

-- A job's args: what the Rust store would hold for the same JSON (numbers
-- as serde_json reads and writes them), the length of their compact JSON
-- text (args_bytes) and whether they hold a NUL (see grafter_v1_string;
-- refused later, in NewJob::validate's order). serde_json refuses JSON nested deeper than
-- this within a POST /v1/jobs body.
CREATE FUNCTION grafter_v1_args(field text, raw json, nul_marked boolean,
                                OUT value jsonb, OUT bytes integer, OUT has_nul boolean)
LANGUAGE plpgsql AS $$
DECLARE
    text_in text := raw::text;
    adjust integer;
    rewrite boolean;
    stored text;
BEGIN
    has_nul := false;
    -- Numbers outside strings: integers within i64/u64 stay as written
    -- (grafter_v1_whole), the rest are f64s to serde_json.
    SELECT coalesce(sum(f.json_len - length(f.value::text)), 0),
           coalesce(bool_or(f.value::text <> t.literal::numeric::text), false)
    INTO adjust, rewrite
    FROM (SELECT m[1] AS literal
          FROM regexp_matches(text_in, '"(?:[^"\\]|\\.)*"|(-?[0-9][0-9.eE+-]*)', 'g') AS m) AS t
    CROSS JOIN LATERAL grafter_v1_float(field, t.literal) AS f
    WHERE t.literal IS NOT NULL AND NOT grafter_v1_whole(t.literal);
    IF rewrite THEN
        -- Every token again, in order, each f64 now as serde_json writes it.
        SELECT string_agg(CASE WHEN m[2] IS NULL THEN coalesce(m[1], m[3])
                               WHEN grafter_v1_whole(m[2]) THEN m[2]
                               ELSE (grafter_v1_float(field, m[2])).value::text END,
                          '' ORDER BY o)
        INTO text_in
        FROM regexp_matches(text_in, '("(?:[^"\\]|\\.)*")|(-?[0-9][0-9.eE+-]*)|([^"0-9-]+)', 'g')
             WITH ORDINALITY AS t(m, o);
    END IF;
    value := text_in::jsonb;
    has_nul := nul_marked AND strpos(value::text, U&'\FDD0') > 0;
    IF jsonb_path_exists(value, 'strict $.**{126 to last} ? (@.type() == "array" || @.type() == "object")') THEN
        PERFORM grafter_v1_refuse(field, 'nested more than 126 levels deep (recursion limit exceeded)');
    END IF;
    -- jsonb's text is the compact text with a space after each comma and
    -- colon between values (strings are escaped as serde_json does).
    stored := value::text;
    bytes := octet_length(stored) + adjust
        - (SELECT length(bare) - length(translate(bare, ',:', ''))
           FROM regexp_replace(stored, '"(?:[^"\\]|\\.)*"', '', 'g') AS bare);
END $$;

-- NewJob::validate's name rule (grafter-core job.rs validate_name): not
-- empty, at most 255 bytes, no control (Cc) or invisible character, no
-- White_Space at either end.
CREATE FUNCTION grafter_v1_check_name(field text, value text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    bad text;
BEGIN
    IF value = '' THEN
        PERFORM grafter_v1_refuse(field, 'must not be empty');
    END IF;
    IF octet_length(value) > 255 THEN
        PERFORM grafter_v1_refuse(field, format('must be at most 255 bytes, got %s', octet_length(value)));
    END IF;
    bad := substring(value FROM '[\u0001-\u001F\u007F-\u009F\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u202A-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF9-\uFFFB\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]');
    IF bad IS NOT NULL THEN
        PERFORM grafter_v1_refuse(field, format(
            'must not contain control or invisible characters (found U+%s)',
            upper(lpad(to_hex(ascii(bad)), 4, '0'))));
    END IF;
    IF value ~ '^[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]'
       OR value ~ '[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]$' THEN
        PERFORM grafter_v1_refuse(field, 'must not start or end with a space');
    END IF;
END $$;

-- A time as the API reads it (chrono's relaxed RFC 3339: 2030-01-01T00:00:00Z,
-- a space or t for T, z or UTC for Z, ±hh:mm or ±hhmm, up to nanoseconds),
-- within years 1 to 9999, and stored as the Rust driver stores it:
-- microseconds, the rest cut toward 2000-01-01.
CREATE FUNCTION grafter_v1_time(field text, raw json, nul_marked boolean) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    input text := grafter_v1_string(field, raw, nul_marked);
    m text[];
    year bigint;
    local timestamp;
    utc timestamp;
    fraction text;
    beyond_micros boolean;
    offset_minutes integer;
    out_of_range text := 'must be between 0001-01-01T00:00:00+00:00 and 9999-12-31T23:59:59.999999+00:00, got ';
BEGIN
    m := regexp_match(input,
        '^\s*([+-][0-9]{1,9}|[0-9]{1,4})\s*-([0-9]{1,2})\s*-([0-9]{1,2})[Tt ]\s*([0-9]{1,2})\s*:([0-9]{1,2})\s*:([0-9]{1,2})(?:\.([0-9]+))?\s*(?:([Uu][Tt][Cc]|[Zz])|([-+\u2212])([0-9]{2}):?([0-9]{2}))\s*$');
    IF m IS NULL THEN
        PERFORM grafter_v1_refuse(field, 'not an RFC 3339 time such as 2030-01-01T00:00:00Z');
    END IF;
    year := m[1]::bigint;
    IF m[4]::int > 23 OR m[5]::int > 59 OR m[6]::int > 60
       OR (m[8] IS NULL AND (m[10]::int > 23 OR m[11]::int > 59)) THEN
        PERFORM grafter_v1_refuse(field, 'input is out of range');
    END IF;
    IF year NOT BETWEEN -1 AND 10000 THEN
        -- A day of offset cannot bring it back into years 1 to 9999.
        PERFORM grafter_v1_refuse(field, out_of_range || btrim(input));
    END IF;
    BEGIN
        local := make_timestamp(CASE WHEN year <= 0 THEN year - 1 ELSE year END::int,
                                m[2]::int, m[3]::int, m[4]::int, m[5]::int, 0);
    EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
        PERFORM grafter_v1_refuse(field, 'input is out of range');
    END;
    fraction := coalesce(m[7], '');
    beyond_micros := substr(fraction, 7, 3) ~ '[1-9]';
    -- Second 60 is a leap second: chrono and PostgreSQL both carry it into the next minute.
    local := local + make_interval(secs => m[6]::int)
        + (coalesce(nullif(rpad(left(fraction, 6), 6, '0'), ''), '0') || ' microseconds')::interval;
    offset_minutes := CASE WHEN m[8] IS NOT NULL THEN 0
        ELSE (CASE WHEN m[9] = '+' THEN 1 ELSE -1 END) * (m[10]::int * 60 + m[11]::int) END;
    utc := local - make_interval(mins => offset_minutes);
    IF utc < '0001-01-01 00:00:00' OR utc > '9999-12-31 23:59:59.999999'
       OR (utc = '9999-12-31 23:59:59.999999' AND beyond_micros) THEN
        PERFORM grafter_v1_refuse(field, out_of_range || btrim(input));
    END IF;
    IF beyond_micros AND utc < '2000-01-01' THEN
        utc := utc + interval '1 microsecond';
    END IF;
    RETURN utc AT TIME ZONE 'UTC';
END $$;

-- One job of the input: parsed as serde parses a NewJob (fields in their
-- order, unknown and repeated fields refused), then checked in
-- NewJob::validate's order. `prefix` names the job in a batch (jobs[3].).
CREATE FUNCTION grafter_v1_parse(job json, prefix text) RETURNS grafter_v1_new_job
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
        ELSE
            PERFORM grafter_v1_refuse(prefix || field.key, format(
                'unknown field `%s`, expected one of `kind`, `args`, `queue`, `priority`, `run_at`, '
                '`max_attempts`, `tags`, `unique_key`, `timeout_ms`, `expires_at`, `backoff`', field.key));
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
    RETURN j;
END $$;

-- A time as the API writes it (chrono's AutoSi: 0, 3 or 6 decimals).
-- PL/pgSQL, whose plans are kept: PostgreSQL did not inline this as SQL,
-- and planned it again on every call.
CREATE FUNCTION grafter_v1_time_json(at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    micros bigint := extract(microseconds FROM at)::bigint % 1000000;
BEGIN
    IF at IS NULL THEN
        RETURN 'null';
    END IF;
    RETURN to_jsonb(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN micros = 0 THEN ''
                WHEN micros % 1000 = 0 THEN '.' || lpad((micros / 1000)::text, 3, '0')
                ELSE '.' || lpad(micros::text, 6, '0') END
        || 'Z');
END $$;

-- A job in the shape of GET /v1/jobs/{id}.
CREATE FUNCTION grafter_v1_job_json(j jobs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', j.id, 'queue', j.queue, 'kind', j.kind, 'args', j.args, 'priority', j.priority,
        'state', j.state, 'run_at', grafter_v1_time_json(j.run_at), 'attempt', j.attempt,
        'max_attempts', j.max_attempts, 'errors', j.errors, 'progress', j.progress,
        'result', j.result, 'tags', to_jsonb(j.tags), 'unique_key', j.unique_key,
        'timeout_ms', j.timeout_ms, 'expires_at', grafter_v1_time_json(j.expires_at),
        'backoff', j.backoff, 'cancel_requested', j.cancel_requested, 'worker_id', j.worker_id,
        'lease_expires_at', grafter_v1_time_json(j.lease_expires_at),
        'created_at', grafter_v1_time_json(j.created_at),
        'attempted_at', grafter_v1_time_json(j.attempted_at),
        'finished_at', grafter_v1_time_json(j.finished_at))
$$;

-- Inserts parsed jobs in order, as inserts.rs does: the advisory locks on
-- two or more distinct unique keys first (in lock-key order), runs of jobs
-- without a key in one statement, keyed jobs one at a time returning the
-- unfinished holder of the key instead. Then one NOTIFY, sent by
-- PostgreSQL when the caller's transaction commits (never on rollback),
-- from no node (an empty first line), so every node wakes its waiters.
CREATE FUNCTION grafter_v1_insert(jobs grafter_v1_new_job[]) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    now timestamptz := clock_timestamp();
    out jsonb[] := '{}';
    woken text[] := '{}';
    inserted jobs;
    keyed grafter_v1_new_job;
    created boolean;
    run_start integer;
    i integer := 1;
    n integer := cardinality(jobs);
    attempts integer;
    payload text;
BEGIN
    IF (SELECT count(DISTINCT j.unique_key) FROM unnest(jobs) AS j) >= 2 THEN
        PERFORM pg_advisory_xact_lock(1735550581, lock_key)  -- 0x67726675, "grfu", as inserts.rs
        FROM (SELECT DISTINCT hashtext(current_schema() || E'\n' || j.unique_key) AS lock_key
              FROM unnest(jobs) AS j WHERE j.unique_key IS NOT NULL) AS keys
        ORDER BY lock_key;
    END IF;
    WHILE i <= n LOOP
        IF jobs[i].unique_key IS NULL THEN
            run_start := i;
            WHILE i <= n AND jobs[i].unique_key IS NULL LOOP
                i := i + 1;
            END LOOP;
            WITH rows AS (
                INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                                  timeout_ms, expires_at, backoff, created_at, args_bytes)
                SELECT j.queue, j.kind, j.args, j.priority,
                       CASE WHEN coalesce(j.run_at, now) > now THEN 'scheduled' ELSE 'available' END,
                       coalesce(j.run_at, now), j.max_attempts, j.tags, j.timeout_ms, j.expires_at,
                       j.backoff, now, j.args_bytes
                FROM unnest(jobs[run_start:i - 1]) WITH ORDINALITY AS j
                ORDER BY ordinality
                RETURNING *
            )
            SELECT out || array_agg(grafter_v1_job_json(rows) ORDER BY rows.id),
                   woken || coalesce(array_agg(rows.queue) FILTER (WHERE rows.state = 'available'), '{}')
            INTO out, woken
            FROM rows;
        ELSE
            keyed := jobs[i];
            attempts := 0;
            LOOP
                INSERT INTO jobs (queue, kind, args, priority, state, run_at, max_attempts, tags,
                                  unique_key, timeout_ms, expires_at, backoff, created_at, args_bytes)
                VALUES (keyed.queue, keyed.kind, keyed.args, keyed.priority,
                        CASE WHEN coalesce(keyed.run_at, now) > now THEN 'scheduled' ELSE 'available' END,
                        coalesce(keyed.run_at, now), keyed.max_attempts, keyed.tags, keyed.unique_key,
                        keyed.timeout_ms, keyed.expires_at, keyed.backoff, now, keyed.args_bytes)
                ON CONFLICT (unique_key)
                    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
                    DO NOTHING
                RETURNING * INTO inserted;
                created := FOUND;
                EXIT WHEN created;
                -- A statement of its own, so with a snapshot that sees a holder
                -- committed while the insert waited on it.
                SELECT * INTO inserted FROM jobs
                WHERE unique_key = keyed.unique_key
                  AND state IN ('scheduled', 'available', 'running', 'retryable');
                EXIT WHEN FOUND;
                -- The holder finished between the two statements: insert again.
                attempts := attempts + 1;
                IF attempts >= 5 THEN
                    RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                        MESSAGE = format('unique_key %s kept changing hands; try again', to_json(keyed.unique_key));
                END IF;
            END LOOP;
            IF created AND inserted.state = 'available' THEN
                woken := woken || inserted.queue;
            END IF;
            out := out || grafter_v1_job_json(inserted);
            i := i + 1;
        END IF;
    END LOOP;
    SELECT string_agg(E'\n' || queue, '' ORDER BY queue COLLATE "C") INTO payload
    FROM (SELECT DISTINCT queue FROM unnest(woken) AS queue) AS distinct_queues;
    IF payload IS NOT NULL THEN
        -- Too many queues for one notification: "any queue" (notifier.rs).
        PERFORM pg_notify(grafter_v1_channel(), CASE WHEN octet_length(payload) > 7900 THEN '' ELSE payload END);
    END IF;
    RETURN to_jsonb(out);
END $$;

-- Enqueues one job (the JSON of POST /v1/jobs) in the caller's transaction;
-- returns the job, or the unfinished job already holding its unique_key.
CREATE FUNCTION grafter_enqueue_v1(job json) RETURNS jsonb
LANGUAGE sql SET search_path FROM CURRENT SET extra_float_digits TO 1 AS $$
    SELECT grafter_v1_insert(ARRAY[grafter_v1_parse(job, '')]) -> 0
$$;

-- Enqueues 1 to 10,000 jobs (a JSON array of POST /v1/jobs bodies) in the
-- caller's transaction, in order; returns the jobs as a JSON array in the
-- same order. Errors name the job: jobs[3].kind.
CREATE FUNCTION grafter_enqueue_many_v1(jobs json) RETURNS jsonb
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
    RETURN grafter_v1_insert(parsed);
END $$;

COMMENT ON FUNCTION grafter_enqueue_v1(json) IS
    'Enqueues one job (the JSON of POST /v1/jobs) inside the calling transaction; returns the job as JSON. docs/protocol.md';
COMMENT ON FUNCTION grafter_enqueue_many_v1(json) IS
    'Enqueues a JSON array of 1 to 10,000 jobs inside the calling transaction, in order; returns them as a JSON array. docs/protocol.md';
