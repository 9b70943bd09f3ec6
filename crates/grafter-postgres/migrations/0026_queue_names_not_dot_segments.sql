-- validate_path_name (grafter-core job.rs) for the SQL enqueue: a queue is
-- not named `.` or `..`, which no URL can name. Migration 10's name rule
-- otherwise unchanged.
CREATE OR REPLACE FUNCTION grafter_v1_check_name(field text, value text) RETURNS void
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
    IF field ~ '(^|\.)queue$' AND value IN ('.', '..') THEN
        PERFORM grafter_v1_refuse(field, 'must not be . or .. (no URL can name it)');
    END IF;
    IF value ~ '^[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]'
       OR value ~ '[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]$' THEN
        PERFORM grafter_v1_refuse(field, 'must not start or end with a space');
    END IF;
END $$;
