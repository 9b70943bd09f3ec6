-- Jobs without a unique key or a deadline (nearly all of them) no longer get
-- entries in the indexes that only serve keyed or expiring jobs. Each entry
-- cost a b-tree write on every insert and state change. The queries that use
-- these indexes compare the column (`unique_key = ?`, `expires_at <= ?`),
-- which implies IS NOT NULL, so they still use them. NULL keys never
-- conflicted, so uniqueness is unchanged.
DROP INDEX jobs_unique_key;
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');

DROP INDEX jobs_expiry;
CREATE INDEX jobs_expiry ON jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('scheduled', 'available', 'retryable');
