//! Typed jobs: what a job is, what it may answer, and what it sees while it runs.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use grafter_core::{JobId, Progress};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A kind of job: its arguments are the type's fields (serialized as JSON), its
/// work is [`Job::perform`].
///
/// ```
/// use grafter::{Job, JobContext, JobError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
/// }
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "send_email";
///     const QUEUE: &'static str = "mail";
///     const MAX_ATTEMPTS: i32 = 5;
///     type Output = ();
///
///     async fn perform(self, ctx: JobContext) -> Result<(), JobError> {
///         if self.to.is_empty() {
///             return Err(JobError::fail("no recipient")); // dead at once, no retries
///         }
///         ctx.progress(0.5, "rendering").await;
///         Ok(())
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job's name, stored as its `kind`; workers dispatch on it.
    const KIND: &'static str;
    /// The queue jobs of this kind go to unless told otherwise.
    const QUEUE: &'static str = grafter_core::DEFAULT_QUEUE;
    /// Attempts before the job is dead, unless told otherwise.
    const MAX_ATTEMPTS: i32 = grafter_core::DEFAULT_MAX_ATTEMPTS;
    /// Priority (lower runs first), unless told otherwise.
    const PRIORITY: i16 = 0;
    /// Longest one attempt may run; past it the attempt fails with "timed out".
    const TIMEOUT: Option<Duration> = None;

    /// What a successful run returns; stored as the job's `result` (use `()` for none).
    type Output: Serialize + Send + 'static;

    /// Does the work. `Err` decides what happens next (see [`JobError`]); a panic
    /// is caught and recorded as a failed attempt.
    fn perform(
        self,
        ctx: JobContext,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}

/// How a run did not succeed, and what should happen next.
///
/// Any `std::error::Error` converts into a retryable failure, so `?` works.
pub struct JobError {
    pub(crate) action: ErrorAction,
    pub(crate) message: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ErrorAction {
    /// Count the attempt as failed and retry by the backoff (or after a delay).
    Retry(Option<Duration>),
    /// Fail for good: the job is `dead` whatever attempts remain.
    Fail,
    /// Stop: the job is `cancelled`.
    Cancel,
    /// Not a failure: run again after the delay; the attempt is not counted.
    Snooze(Duration),
}

impl JobError {
    /// A failed attempt, retried after the usual backoff.
    pub fn retry(message: impl fmt::Display) -> Self {
        JobError {
            action: ErrorAction::Retry(None),
            message: message.to_string(),
        }
    }

    /// A failed attempt, retried after `delay` instead of the backoff.
    pub fn retry_after(message: impl fmt::Display, delay: Duration) -> Self {
        JobError {
            action: ErrorAction::Retry(Some(delay)),
            message: message.to_string(),
        }
    }

    /// Fail for good: the job becomes `dead` whatever attempts remain.
    pub fn fail(message: impl fmt::Display) -> Self {
        JobError {
            action: ErrorAction::Fail,
            message: message.to_string(),
        }
    }

    /// Cancel the job: it becomes `cancelled`.
    pub fn cancel(message: impl fmt::Display) -> Self {
        JobError {
            action: ErrorAction::Cancel,
            message: message.to_string(),
        }
    }

    /// Not ready yet: run again after `delay`, without counting this attempt.
    pub fn snooze(delay: Duration) -> Self {
        JobError {
            action: ErrorAction::Snooze(delay),
            message: format!("snoozed for {delay:?}"),
        }
    }

    /// The message recorded with the attempt.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobError({:?}: {})", self.action, self.message)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        JobError::retry(message)
    }
}

/// What a running job can see and do: its identity, progress reporting, and the
/// cancellation signal.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) queue: String,
    pub(crate) progress: watch::Sender<Option<Progress>>,
    pub(crate) cancel: CancellationToken,
    /// This run's own W3C trace context (docs/traces.md), where the runtime
    /// made one.
    pub(crate) traceparent: Option<String>,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// This attempt's number (1-based).
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// The attempt count after which a failure is final.
    pub fn max_attempts(&self) -> i32 {
        self.max_attempts
    }

    /// The queue the job came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This run's W3C `traceparent` (the worker's `grafter.job` span as the
    /// parent), for the job to send with its own requests so that what they
    /// do joins the run's trace. `None` inside a `PushEndpoint`, where the
    /// request Grafter pushed carries the job's `traceparent` header for the
    /// app's own HTTP tracing to continue.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Reports progress (0.0–1.0, clamped) with a message; it is sent with the
    /// next heartbeat, which follows promptly, and shows in the API.
    pub async fn progress(&self, fraction: f64, message: impl Into<String>) {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let message = Some(message.into()).filter(|m| !m.is_empty());
        self.progress
            .send_replace(Some(Progress { fraction, message }));
        tokio::task::yield_now().await;
    }

    /// True once someone asked to cancel this job through the API (the worker
    /// learns of it at its next heartbeat). A worker shutting down does not
    /// use this: past its deadline it stops the job's task and hands the job
    /// back.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the job should stop; use in `tokio::select!` around long work.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}
