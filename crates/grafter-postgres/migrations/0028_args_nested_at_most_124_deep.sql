-- Args are refused nested more than 124 arrays and objects deep, as the
-- Rust validation refuses them (grafter-core storable.rs MAX_JSON_DEPTH): a
-- fetch's answer carries them three levels down, and serde_json reads no
-- document nested more than 127 deep. The function is migration 10's but
-- for that limit.

CREATE OR REPLACE FUNCTION grafter_v1_args(field text, raw json, nul_marked boolean,
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
    -- grafter-core's MAX_JSON_DEPTH: an array or object at level 124 (the
    -- top one is level 0) is the 125th nested.
    IF jsonb_path_exists(value, 'strict $.**{124 to last} ? (@.type() == "array" || @.type() == "object")') THEN
        PERFORM grafter_v1_refuse(field,
            'must not nest arrays and objects more than 124 deep (it could not be read back)');
    END IF;
    -- jsonb's text is the compact text with a space after each comma and
    -- colon between values (strings are escaped as serde_json does).
    stored := value::text;
    bytes := octet_length(stored) + adjust
        - (SELECT length(bare) - length(translate(bare, ',:', ''))
           FROM regexp_replace(stored, '"(?:[^"\\]|\\.)*"', '', 'g') AS bare);
END $$;
