//! Parameter and result structs of the live-event methods of [`crate::Store`]
//! (docs/events.md): a stream watches a job (or a batch), and from then on
//! every change of its state, attempt or progress (a batch's state, counts
//! or progress) is logged in the transaction that makes it.

use grafter_core::{
    Batch, BatchCounts, BatchId, BatchState, Job, JobId, JobState, Progress, Timestamp,
};

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

/// A batch as a stream starts from it: the batch, and the id of the latest
/// event logged for it, read together, so every later change has a greater id.
#[derive(Clone, Debug)]
pub struct WatchedBatch {
    /// The batch now.
    pub batch: Batch,
    /// The latest event logged for it (0: none yet).
    pub last_event: i64,
}

/// A batch's logged events after a point, oldest first.
#[derive(Clone, Debug)]
pub struct BatchEventsList {
    /// The batch.
    pub batch_id: BatchId,
    /// Only events with a greater id.
    pub after: i64,
    /// Most events in the answer.
    pub limit: usize,
}

/// What a logged batch event says changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchEventKind {
    /// Its state changed, it was sealed, or it finished (or was reopened by
    /// a job retried by hand); its counts may have changed too.
    State,
    /// Only its counts or progress changed.
    Progress,
}

impl BatchEventKind {
    /// The kind a stored name stands for: `state` or `progress`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "state" => Some(BatchEventKind::State),
            "progress" => Some(BatchEventKind::Progress),
            _ => None,
        }
    }
}

/// One logged change of a watched batch: the batch's state, counts and
/// progress right after it.
#[derive(Clone, Debug)]
pub struct BatchEvent {
    /// The event's id: a batch's events have increasing ids, in commit order.
    pub seq: i64,
    /// The batch.
    pub batch_id: BatchId,
    /// When the change was made, by the database's clock.
    pub at: Timestamp,
    /// What changed.
    pub kind: BatchEventKind,
    /// Its state after the change.
    pub state: BatchState,
    /// Whether it was still open for more jobs.
    pub open: bool,
    /// Whether it had finished (sealed, every job finished): its stream ends.
    pub finished: bool,
    /// Its jobs per state.
    pub counts: BatchCounts,
    /// Its progress, from 0.0 to 1.0 (as [`Batch::progress`]).
    pub progress: f64,
}

/// The wake-up key of a batch's event streams in [`crate::Store::watchers`].
pub fn batch_watch_key(id: BatchId) -> String {
    format!("batch:{id}")
}
