-- Every state change of a job writes a new row version, and PostgreSQL adds an
-- entry for it to every index whose predicate the new version meets: on the
-- hot path (insert, fetch, complete) index inserts were most of the
-- database's work, some 3 µs each. Fetching a job (available → running) wrote
-- six entries; now it writes two (the primary key and jobs_leases).
--
-- * jobs_state (state, id) goes: lists by state alone merge one ordered range
--   of jobs_queue_state per queue (src/browse.rs), as lists by queue alone
--   merge one range per state.
-- * jobs_running_worker goes, and the list indexes leave running jobs out:
--   running jobs are few (at most the workers' concurrency) and jobs_leases
--   holds exactly them, so lists of running jobs, running counts per worker
--   and a worker's jobs are read from it. Lists name their state as a literal,
--   so the planner can match these predicates.
DROP INDEX jobs_state;
DROP INDEX jobs_running_worker;
DROP INDEX jobs_queue_state;
CREATE INDEX jobs_queue_state ON jobs (queue, state, id) WHERE state <> 'running';
DROP INDEX jobs_kind_state;
CREATE INDEX jobs_kind_state ON jobs (kind, state, id) WHERE state <> 'running';
