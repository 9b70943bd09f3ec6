-- Periodic jobs (docs/schedules.md), mirroring the SQLite schema
-- (grafter-sqlite/migrations/0009_schedules.sql). Numbered 11: number 10 is
-- taken by another change; the runner applies whichever are missing, in order.
--
-- A job made by a schedule names it and the slot (the nominal instant) it
-- was made for; a slot is taken at most once, whatever races, failovers or
-- restarts happen.
ALTER TABLE jobs ADD COLUMN schedule_id text;
ALTER TABLE jobs ADD COLUMN schedule_slot timestamptz;
CREATE UNIQUE INDEX jobs_schedule_slot ON jobs (schedule_id, schedule_slot)
    WHERE schedule_slot IS NOT NULL;

-- A schedule: its definition (as the API takes it) and where it stands.
-- Every change bumps `version`, and writes name the version they were
-- decided from.
CREATE TABLE schedules (
    id          text        PRIMARY KEY,
    spec        jsonb       NOT NULL,
    paused      boolean     NOT NULL DEFAULT false,
    source      text        NOT NULL,
    next_run_at timestamptz,
    last_slot   timestamptz,
    last_run_at timestamptz,
    last_job_id bigint,
    skip_before timestamptz,
    version     bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
-- The firing pass reads only the schedules that are due.
CREATE INDEX schedules_due ON schedules (next_run_at)
    WHERE NOT paused AND next_run_at IS NOT NULL;

-- Slots not run, a run of consecutive ones per row, the newest 100 kept per
-- schedule.
CREATE TABLE schedule_skips (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_id text        NOT NULL,
    first_slot  timestamptz NOT NULL,
    last_slot   timestamptz NOT NULL,
    count       bigint      NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX schedule_skips_of ON schedule_skips (schedule_id, id);
