-- The length of each job's args as compact JSON text (what SQLite keeps, so
-- both stores count alike), written with the args. A fetch adds these up to
-- stop within its byte budget, and a job list reads them to tell which args
-- it shows whole: PostgreSQL has no cheap way to learn how long a jsonb value
-- is (octet_length(args::text) reads and prints all of it; pg_column_size is
-- its compressed size). Jobs enqueued before this migration have none, and
-- are measured as `octet_length(args::text)` when needed.
ALTER TABLE jobs ADD COLUMN args_bytes integer;
