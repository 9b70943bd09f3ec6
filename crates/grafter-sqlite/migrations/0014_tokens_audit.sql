-- API tokens (docs/access.md). The secret itself is never stored: a request's
-- secret is looked up by its SHA-256, which is safe as a password hash here
-- because secrets are 256 random bits, not words a person chose.
CREATE TABLE api_tokens (
    id            TEXT    PRIMARY KEY,
    secret_sha256 TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    scopes        TEXT    NOT NULL,   -- JSON array of scope names
    queues        TEXT    NOT NULL,   -- JSON array of queue patterns, [] = all
    expires_at    INTEGER,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);

-- Every change made through the API or the dashboard, newest read first.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    token_id TEXT,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    target   TEXT    NOT NULL,
    details  TEXT
);
-- The pruner's way to the oldest entries.
CREATE INDEX audit_log_at ON audit_log (at);
