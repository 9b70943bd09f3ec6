//! Parameter and result structs of the live-event methods of [`crate::Store`]
//! (docs/events.md): a stream watches a job, and from then on every change of
//! its state, attempt or progress is logged in the transaction that makes it.

use grafter_core::{Job, JobId, JobState, Progress, Timestamp};

/// A job as a stream starts from it: the job, and the id of the latest event
/// logged for it, read together, so every later change has a greater id.
#[derive(Clone, Debug)]
pub struct WatchedJob {
    /// The job now.
    pub job: Job,
    /// The latest event logged for it (0: none yet).
    pub last_event: i64,
}

/// A job's logged events after a point, oldest first.
#[derive(Clone, Debug)]
pub struct JobEventsList {
    /// The job.
    pub job_id: JobId,
    /// Only events with a greater id.
    pub after: i64,
    /// Most events in the answer.
    pub limit: usize,
}

/// What a logged event says changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEventKind {
    /// The state or the attempt changed (perhaps the progress too).
    State,
    /// Only the progress changed.
    Progress,
    /// The job was deleted (by hand or by the pruner).
    Deleted,
}

impl JobEventKind {
    /// The name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEventKind::State => "state",
            JobEventKind::Progress => "progress",
            JobEventKind::Deleted => "deleted",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "state" => Some(JobEventKind::State),
            "progress" => Some(JobEventKind::Progress),
            "deleted" => Some(JobEventKind::Deleted),
            _ => None,
        }
    }
}

/// One logged change of a watched job: the job's state, attempt and
/// progress right after it (none of them for a deletion).
#[derive(Clone, Debug)]
pub struct JobEvent {
    /// The event's id: a job's events have increasing ids, in commit order.
    pub seq: i64,
    /// The job.
    pub job_id: JobId,
    /// When the change was made, by the database's clock.
    pub at: Timestamp,
    /// What changed.
    pub kind: JobEventKind,
    /// The state after the change.
    pub state: Option<JobState>,
    /// The attempt after the change.
    pub attempt: Option<i32>,
    /// The progress after the change.
    pub progress: Option<Progress>,
}

/// The wake-up key of a job's event streams in [`crate::Store::watchers`].
pub fn job_watch_key(id: JobId) -> String {
    format!("job:{id}")
}
