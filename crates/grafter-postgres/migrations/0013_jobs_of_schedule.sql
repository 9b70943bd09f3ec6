-- A schedule's jobs by id, for the job list's `schedule` filter (the
-- dashboard's schedule page lists the latest runs), as in SQLite's
-- migrations/0011_jobs_of_schedule.sql. Only jobs made by a schedule have
-- entries.
CREATE INDEX jobs_of_schedule ON jobs (schedule_id, id) WHERE schedule_id IS NOT NULL;
