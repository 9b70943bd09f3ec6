//! Hooks around job execution, for error reporting and instrumentation. Every
//! job also runs inside a `tracing` span named `grafter.job`.

use grafter_core::JobId;

/// Who a hook is about.
#[derive(Clone, Debug)]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// This attempt (1-based).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum JobOutcome {
    /// Succeeded.
    Completed,
    /// Failed; `will_retry` says whether another attempt follows.
    Failed {
        /// The recorded error.
        error: String,
        /// False when the job is now dead (or cancelled).
        will_retry: bool,
    },
    /// Stopped on request.
    Cancelled,
    /// Asked to run again later, without counting the attempt.
    Snoozed,
    /// Handed back unfinished because the worker is shutting down.
    Released,
    /// The lease was lost (expired and taken elsewhere, or the job deleted);
    /// this worker's result was not recorded.
    LeaseLost,
}

/// Callbacks around each job. All methods have empty defaults.
///
/// ```
/// use grafter::{Hooks, JobInfo};
///
/// struct ReportErrors;
///
/// impl Hooks for ReportErrors {
///     fn on_failure(&self, job: &JobInfo, error: &str) {
///         eprintln!("job {} ({}) failed on attempt {}: {error}", job.id, job.kind, job.attempt);
///     }
/// }
/// ```
pub trait Hooks: Send + Sync + 'static {
    /// Before `perform` is called.
    fn before_job(&self, _job: &JobInfo) {}
    /// After the run, once its outcome is recorded.
    fn after_job(&self, _job: &JobInfo, _outcome: &JobOutcome) {}
    /// When a run failed (error, panic, timeout), before the outcome is recorded.
    fn on_failure(&self, _job: &JobInfo, _error: &str) {}
}
