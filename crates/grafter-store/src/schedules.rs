//! Parameter and result structs of the schedule methods of [`crate::Store`].

use grafter_core::{Job, JobState, NewJob, Schedule, SkippedSlots, Timestamp};

/// Write a schedule whole, if no one changed it since it was read.
#[derive(Clone, Debug)]
pub struct ScheduleWrite {
    /// The schedule as it should be. Its `version` is ignored: the store
    /// writes `expected_version + 1` (or 1 for a new one).
    pub schedule: Schedule,
    /// The version read before (`None`: it must not exist yet).
    pub expected_version: Option<i64>,
}

/// A page of schedules, by id.
#[derive(Clone, Debug)]
pub struct SchedulesList {
    /// Continue after this id (exclusive).
    pub after: Option<String>,
    /// Most schedules in the answer.
    pub limit: usize,
}

/// Unpaused schedules whose next slot has come.
#[derive(Clone, Debug)]
pub struct SchedulesDue {
    /// Current time.
    pub now: Timestamp,
    /// Most schedules in the answer, earliest `next_run_at` first.
    pub limit: usize,
}

/// A due schedule, and the state of its last run (if that job still exists).
#[derive(Clone, Debug)]
pub struct DueSchedule {
    /// The schedule.
    pub schedule: Schedule,
    /// The state of the job `last_job_id` names, when it is still stored.
    pub last_job_state: Option<JobState>,
}

/// What firing one schedule comes to, decided by the engine and written by
/// the store in one transaction with the others of its call.
#[derive(Clone, Debug)]
pub struct Firing {
    /// The schedule.
    pub id: String,
    /// The version it was decided from: if the schedule changed since, this
    /// firing is not applied at all.
    pub expected_version: i64,
    /// When the schedule it was decided from was made: one deleted and made
    /// again under the same id starts its versions over, and is not it.
    pub created_at: Timestamp,
    /// Its next slot after this (`None`: none left).
    pub next_run_at: Option<Timestamp>,
    /// The latest slot fired or skipped by this firing, if any.
    pub last_slot: Option<Timestamp>,
    /// Clears the paused range once its slots are recorded.
    pub skip_before: Option<Timestamp>,
    /// The jobs to enqueue, each with its `schedule` set. A job whose slot
    /// (schedule id, slot) some stored job already holds is not inserted.
    pub jobs: Vec<NewJob>,
    /// Slots not run, and why.
    pub skipped: Vec<SkippedSlots>,
}

/// Fire schedules: every applied firing and its jobs commit together.
#[derive(Clone, Debug)]
pub struct SchedulesFire {
    /// One per schedule.
    pub firings: Vec<Firing>,
    /// Current time: the jobs' `created_at`, the schedules' `last_run_at`
    /// and `updated_at`.
    pub now: Timestamp,
}

/// What one firing came to.
#[derive(Clone, Debug, Default)]
pub struct Fired {
    /// False when the schedule had changed (or gone) since it was read:
    /// nothing of this firing was written.
    pub applied: bool,
    /// The jobs inserted.
    pub jobs: Vec<Job>,
    /// Jobs not inserted because their slot was already taken.
    pub duplicates: u64,
}

/// The latest skipped slots of one schedule.
#[derive(Clone, Debug)]
pub struct ScheduleSkipsList {
    /// The schedule.
    pub id: String,
    /// Most records, newest first.
    pub limit: usize,
}

/// How many skip records a store keeps per schedule (newest first); older
/// ones are deleted as new ones come.
pub const SKIPS_KEPT: usize = 100;
