-- Periodic jobs (docs/schedules.md). A job made by a schedule names it and
-- the slot (the nominal instant, microseconds) it was made for; a slot is
-- taken at most once, whatever races, failovers or restarts happen.
ALTER TABLE jobs ADD COLUMN schedule_id TEXT;
ALTER TABLE jobs ADD COLUMN schedule_slot INTEGER;
CREATE UNIQUE INDEX jobs_schedule_slot ON jobs (schedule_id, schedule_slot)
    WHERE schedule_slot IS NOT NULL;

-- A schedule: its definition (JSON, as the API takes it) and where it
-- stands. Every change bumps `version`, and writes name the version they
-- were decided from.
CREATE TABLE schedules (
    id          TEXT    PRIMARY KEY,
    spec        TEXT    NOT NULL,
    paused      INTEGER NOT NULL DEFAULT 0,
    source      TEXT    NOT NULL,
    next_run_at INTEGER,
    last_slot   INTEGER,
    last_run_at INTEGER,
    last_job_id INTEGER,
    skip_before INTEGER,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- The firing pass reads only the schedules that are due.
CREATE INDEX schedules_due ON schedules (next_run_at)
    WHERE paused = 0 AND next_run_at IS NOT NULL;

-- Slots not run, a run of consecutive ones per row, the newest 100 kept per
-- schedule.
CREATE TABLE schedule_skips (
    id          INTEGER PRIMARY KEY,
    schedule_id TEXT    NOT NULL,
    first_slot  INTEGER NOT NULL,
    last_slot   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX schedule_skips_of ON schedule_skips (schedule_id, id);
