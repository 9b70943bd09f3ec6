-- Jobs without a unique key (nearly all of them) no longer get entries in the
-- unique-key index. Each entry cost an index insert on every insert and every
-- state change before the job finished. Inserts name this predicate in
-- ON CONFLICT; their clause implies both the old and the new one. NULL keys
-- never conflicted, so uniqueness is unchanged.
DROP INDEX jobs_unique_key;
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');
