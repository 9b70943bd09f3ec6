-- The W3C trace context a job was enqueued in (docs/traces.md): handed out
-- with its lease and sent with its pushes. Read only with the job, so no
-- index.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
ALTER TABLE jobs ADD COLUMN tracestate TEXT;
