//! Batches (docs/batches.md): many jobs with one state, counts, progress and
//! callbacks. The stores keep the counts in the transaction of each job's
//! move, and settle the batch (its final state and callbacks) in the
//! transaction of the move that finishes it.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{NewJob, ValidationError};

/// Most jobs one request may put in a batch (as `POST /v1/jobs/batch`); a
/// batch grows past it by adding jobs while it is open.
pub const MAX_BATCH_REQUEST_JOBS: usize = 10_000;

/// A batch's id: assigned by the store, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct BatchId(pub i64);

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Open, or some job in it is unfinished.
    Running,
    /// Sealed, and every job in it completed.
    Succeeded,
    /// Sealed, every job in it finished, and some did not complete (dead,
    /// cancelled or expired).
    CompletedWithFailures,
    /// Cancelled by hand: no more jobs start; it stays `cancelled` whatever
    /// its running jobs come to.
    Cancelled,
}

impl BatchState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Succeeded => "succeeded",
            BatchState::CompletedWithFailures => "completed_with_failures",
            BatchState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BatchState {
    type Err = crate::UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => BatchState::Running,
            "succeeded" => BatchState::Succeeded,
            "completed_with_failures" => BatchState::CompletedWithFailures,
            "cancelled" => BatchState::Cancelled,
            other => return Err(crate::UnknownState(other.to_owned())),
        })
    }
}

/// How many of a batch's jobs are where. Finished jobs are counted by final
/// state; `pending` is every job not finished yet (scheduled, available,
/// running or retryable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchCounts {
    /// Every job in the batch.
    pub total: i64,
    /// Not finished yet.
    pub pending: i64,
    /// Completed.
    pub completed: i64,
    /// Dead (out of attempts or failed for good).
    pub dead: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// Expired before they started.
    pub expired: i64,
}

impl BatchCounts {
    /// The counts of a batch of `total` jobs of which these finished: the
    /// rest are pending.
    pub fn with_finished(
        total: i64,
        completed: i64,
        dead: i64,
        cancelled: i64,
        expired: i64,
    ) -> Self {
        BatchCounts {
            total,
            pending: total - completed - dead - cancelled - expired,
            completed,
            dead,
            cancelled,
            expired,
        }
    }
}

/// The jobs a batch enqueues when it settles, each at most once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchCallbacks {
    /// When the batch is sealed and every job in it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<NewJob>,
    /// When the batch is sealed and every job in it finished, whatever the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete: Option<NewJob>,
    /// When the first job in it ends dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<NewJob>,
}

impl BatchCallbacks {
    /// Checks each callback as a job, and refuses what cannot be decided
    /// when the batch is created: a `run_at` or `expires_at` (the callback
    /// runs when the batch settles), a `unique_key` (a callback is enqueued
    /// in the transaction of the job move that settles the batch, which must
    /// not fail on someone else's key) or a `schedule`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, job) in self.named() {
            let Some(job) = job else { continue };
            job.validate()
                .map_err(|e| ValidationError::new(format!("{field}.{}", e.field), e.message))?;
            let refused = [
                ("run_at", job.run_at.is_some()),
                ("expires_at", job.expires_at.is_some()),
                ("unique_key", job.unique_key.is_some()),
                ("schedule", job.schedule.is_some()),
                ("depends_on", !job.depends_on.is_empty()),
                ("depends_on_batches", !job.depends_on_batches.is_empty()),
                ("ref", job.r#ref.is_some()),
                ("on_dependency_failure", job.on_dependency_failure.is_some()),
            ];
            if let Some((name, _)) = refused.iter().find(|(_, set)| *set) {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    "is not allowed on a batch callback: it is enqueued when the batch settles",
                ));
            }
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, Option<&NewJob>); 3] {
        [
            ("on_success", self.on_success.as_ref()),
            ("on_complete", self.on_complete.as_ref()),
            ("on_failure", self.on_failure.as_ref()),
        ]
    }
}

/// Checks the jobs of a batch request: 0 to [`MAX_BATCH_REQUEST_JOBS`]
/// (`allow_empty` for a new batch; adding needs at least one), each valid,
/// none with a `unique_key` (a duplicate would be answered with a job
/// outside the batch) or a `schedule`. Errors name the job: `jobs[3].kind`.
pub fn validate_batch_jobs(jobs: &[NewJob], allow_empty: bool) -> Result<(), ValidationError> {
    let min = usize::from(!allow_empty);
    if jobs.len() < min || jobs.len() > MAX_BATCH_REQUEST_JOBS {
        return Err(ValidationError::new(
            "jobs",
            format!(
                "must hold {min} to {MAX_BATCH_REQUEST_JOBS} jobs, got {}",
                jobs.len()
            ),
        ));
    }
    for (i, job) in jobs.iter().enumerate() {
        job.validate()
            .map_err(|e| ValidationError::new(format!("jobs[{i}].{}", e.field), e.message))?;
        if job.unique_key.is_some() {
            return Err(ValidationError::new(
                format!("jobs[{i}].unique_key"),
                "is not allowed in a batch: a duplicate would stand for a job outside it",
            ));
        }
        if job.schedule.is_some() {
            return Err(ValidationError::new(
                format!("jobs[{i}].schedule"),
                "is not allowed in a batch",
            ));
        }
    }
    crate::dependency::plan(jobs).map(drop)
}

/// A batch as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Batch {
    /// Assigned on create.
    pub id: BatchId,
    /// Where it stands.
    pub state: BatchState,
    /// Whether jobs may still be added (until sealed or cancelled). An open
    /// batch never settles.
    pub open: bool,
    /// Its jobs per state.
    pub counts: BatchCounts,
    /// From 0.0 to 1.0: the mean of its jobs' progress, a finished job
    /// counting 1.0; 1.0 for a batch without jobs.
    pub progress: f64,
    /// The callbacks, as given.
    #[serde(flatten)]
    pub callbacks: BatchCallbacks,
    /// Which callbacks were enqueued, by name.
    pub callbacks_enqueued: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last job finished, once sealed; cleared if a job of it is
    /// retried by hand.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A batch's progress from the sum of its jobs' shares in millionths (a
/// finished job a whole million), as the stores keep it: 1.0 without jobs.
pub fn progress(millionths: i64, total: i64) -> f64 {
    if total <= 0 {
        return 1.0;
    }
    (millionths as f64 / (total as f64 * 1_000_000.0)).clamp(0.0, 1.0)
}
