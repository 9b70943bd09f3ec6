-- SQLite changes an index entry (a delete and an insert) whenever a column it
-- holds changes, and the single writer thread does all of it: on the hot path
-- (insert, fetch, complete) a job made 23 b-tree changes in indexes, and the
-- three list indexes with state in them were a quarter of the writer's time.
-- Now a job makes 11, as on PostgreSQL (its migration 0007):
--
-- * jobs_state (state, id) goes: lists by state alone merge one ordered range
--   of jobs_queue_state per queue (src/browse.rs), as lists by queue alone
--   merge one range per state.
-- * jobs_running_worker goes, and the list indexes leave running jobs out:
--   running jobs are few (at most the workers' concurrency) and jobs_leases
--   holds exactly them, so lists of running jobs and running counts per worker
--   are read from it, and a queue's running count from job_counts. Queries
--   that use the list indexes say `state <> 'running'` in so many words, which
--   is how SQLite knows a partial index holds what they ask for.
DROP INDEX jobs_state;
DROP INDEX jobs_running_worker;
DROP INDEX jobs_queue_state;
CREATE INDEX jobs_queue_state ON jobs (queue, state) WHERE state <> 'running';
DROP INDEX jobs_kind_state;
CREATE INDEX jobs_kind_state ON jobs (kind, state) WHERE state <> 'running';
