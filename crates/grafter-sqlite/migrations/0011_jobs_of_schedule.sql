-- A schedule's jobs by id, for the job list's `schedule` filter (the
-- dashboard's schedule page lists the latest runs). Only jobs made by a
-- schedule have an entry, and their schedule id never changes, so other
-- jobs and state changes cost nothing here.
CREATE INDEX jobs_of_schedule ON jobs (schedule_id, id) WHERE schedule_id IS NOT NULL;
