-- The W3C trace context a job was enqueued in (docs/traces.md): handed out
-- with its lease and sent with its pushes. Read only with the job, so no
-- index. Nullable without a default: adding them rewrites no row.
ALTER TABLE jobs ADD COLUMN traceparent text;
ALTER TABLE jobs ADD COLUMN tracestate text;
