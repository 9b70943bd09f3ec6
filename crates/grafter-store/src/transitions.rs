//! The job state rules that do not depend on a backend: what a failed attempt
//! turns a job into. Backends call these inside their transaction so that every
//! backend moves jobs the same way.

use grafter_core::{time, AttemptError, Backoff, Job, JobState, Timestamp};

/// Longest error message kept per attempt, in bytes; longer ones are cut.
pub const MAX_ERROR_LEN: usize = 16 * 1024;

/// The error recorded when a lease ran out without an ack or fail.
pub const LEASE_EXPIRED: &str = "lease expired";
/// The error recorded when a job's own `timeout_ms` ran out.
pub const TIMED_OUT: &str = "timed out";
/// How the error begins when maintenance could not process a job (its row
/// could not be read or written) and made it `dead` so the rest go on.
pub const SET_ASIDE: &str = "set aside by maintenance";
/// How long a job that maintenance could neither process nor set aside
/// (its move to `dead` fails too) stays out of the rescue's way before it is
/// looked at again, so it cannot stall the rescue of the others.
pub const SET_ASIDE_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// The lease end that puts a job maintenance could not set aside out of
/// the rescue's way until [`SET_ASIDE_AGAIN_AFTER`] from `now`.
pub fn looked_at_again(now: grafter_core::Timestamp) -> grafter_core::Timestamp {
    grafter_core::time::after(now, SET_ASIDE_AGAIN_AFTER)
}

/// What a job becomes after a failed attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AfterFailure {
    /// `retryable`, `dead` or `cancelled`.
    pub state: JobState,
    /// When it runs next (unchanged for final states).
    pub run_at: Timestamp,
    /// The job's errors with this attempt's appended.
    pub errors: Vec<AttemptError>,
    /// Set when the new state is final.
    pub finished_at: Option<Timestamp>,
}

/// How a failed attempt ends.
#[derive(Clone, Debug)]
pub struct Failure<'a> {
    /// The message to record.
    pub error: &'a str,
    /// False to fail for good.
    pub retry: bool,
    /// Explicit time for the next attempt instead of backoff.
    pub retry_at: Option<Timestamp>,
    /// Backoff when the job has none of its own.
    pub default_backoff: &'a Backoff,
    /// Current time.
    pub now: Timestamp,
}

/// Applies the failure rules to a running `job`:
/// a requested cancel wins; then `retry: false` or no attempts left make it `dead`;
/// otherwise it is `retryable` at `retry_at` or after backoff.
pub fn after_failure(job: &Job, failure: Failure<'_>) -> AfterFailure {
    let mut errors = job.errors.clone();
    errors.push(AttemptError {
        attempt: job.attempt,
        at: failure.now,
        error: truncate(failure.error, MAX_ERROR_LEN).to_owned(),
        worker_id: job.worker_id.clone(),
    });
    let (state, run_at) = if job.cancel_requested {
        (JobState::Cancelled, job.run_at)
    } else if !failure.retry || job.attempt >= job.max_attempts {
        (JobState::Dead, job.run_at)
    } else {
        let backoff = job.backoff.as_ref().unwrap_or(failure.default_backoff);
        let delay = backoff.delay(job.attempt.max(1) as u32);
        let next = failure
            .retry_at
            .map_or_else(|| time::after(failure.now, delay), time::clamp);
        (JobState::Retryable, next)
    };
    AfterFailure {
        state,
        run_at,
        errors,
        finished_at: state.is_finished().then_some(failure.now),
    }
}

/// Why an expired lease is being rescued: the job's own timeout, or a silent
/// worker. Saturating, so no stored `timeout_ms` can make it fail.
pub fn rescue_reason(job: &Job, now: Timestamp) -> &'static str {
    match (job.timeout_ms, job.attempted_at) {
        (Some(timeout), Some(started)) if time::after_ms(started, timeout) <= now => TIMED_OUT,
        _ => LEASE_EXPIRED,
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use grafter_core::JobId;
    use serde_json::json;

    fn running(attempt: i32, max_attempts: i32) -> Job {
        let now = chrono::Utc::now();
        Job {
            id: JobId(1),
            queue: "default".into(),
            kind: "k".into(),
            args: json!({}),
            priority: 0,
            state: JobState::Running,
            run_at: now,
            attempt,
            max_attempts,
            errors: vec![],
            progress: None,
            result: None,
            tags: vec![],
            unique_key: None,
            timeout_ms: None,
            expires_at: None,
            backoff: None,
            cancel_requested: false,
            worker_id: Some("w1".into()),
            lease_expires_at: Some(now),
            created_at: now,
            attempted_at: Some(now),
            finished_at: None,
            partition: None,
            cut: Vec::new(),
            schedule: None,
            traceparent: None,
            tracestate: None,
            batch_id: None,
        }
    }

    fn fail(job: &Job, retry: bool) -> AfterFailure {
        let backoff = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        after_failure(
            job,
            Failure {
                error: "boom",
                retry,
                retry_at: None,
                default_backoff: &backoff,
                now: job.run_at,
            },
        )
    }

    #[test]
    fn retryable_until_attempts_run_out() {
        let job = running(1, 3);
        let next = fail(&job, true);
        assert_eq!(next.state, JobState::Retryable);
        assert_eq!(next.run_at - job.run_at, chrono::Duration::seconds(1));
        assert_eq!(next.errors.len(), 1);
        assert_eq!(next.errors[0].attempt, 1);
        assert_eq!(next.errors[0].worker_id.as_deref(), Some("w1"));
        assert_eq!(next.finished_at, None);

        let last = fail(&running(3, 3), true);
        assert_eq!(last.state, JobState::Dead);
        assert!(last.finished_at.is_some());
    }

    #[test]
    fn no_retry_is_dead_and_cancel_wins() {
        assert_eq!(fail(&running(1, 25), false).state, JobState::Dead);
        let mut job = running(1, 25);
        job.cancel_requested = true;
        assert_eq!(fail(&job, true).state, JobState::Cancelled);
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate(&long, MAX_ERROR_LEN);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn timeout_is_named() {
        let mut job = running(1, 3);
        job.timeout_ms = Some(1_000);
        let started = job.attempted_at.unwrap();
        assert_eq!(
            rescue_reason(&job, started + chrono::Duration::seconds(2)),
            TIMED_OUT
        );
        job.timeout_ms = Some(60_000);
        assert_eq!(
            rescue_reason(&job, started + chrono::Duration::seconds(2)),
            LEASE_EXPIRED
        );
    }
}
