-- API tokens (docs/access.md). The secret itself is never stored: a request's
-- secret is looked up by its SHA-256, which is safe as a password hash here
-- because secrets are 256 random bits, not words a person chose.
CREATE TABLE api_tokens (
    id            text        PRIMARY KEY,
    secret_sha256 text        NOT NULL UNIQUE,
    name          text        NOT NULL,
    scopes        text[]      NOT NULL,
    queues        text[]      NOT NULL,   -- queue patterns, {} = all
    expires_at    timestamptz,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Every change made through the API or the dashboard, newest read first.
CREATE TABLE audit_log (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL,
    token_id text,
    actor    text        NOT NULL,
    action   text        NOT NULL,
    target   text        NOT NULL,
    details  jsonb
);
-- The pruner's way to the oldest entries.
CREATE INDEX audit_log_at ON audit_log (at);
