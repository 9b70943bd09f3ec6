//! Properties of the failure transitions over extreme stored values: a job
//! with any attempt counts, timeout, times and backoff moves to a final or
//! retryable state without panicking, and its next run is a storable time.

use std::time::Duration;

use grafter_core::{time, Backoff, Job, JobId, JobState, Timestamp};
use grafter_store::transitions::{after_failure, rescue_reason, Failure, LEASE_EXPIRED, TIMED_OUT};
use proptest::prelude::*;
use serde_json::json;

fn any_time() -> impl Strategy<Value = Timestamp> {
    let (min, max) = (
        Timestamp::MIN_UTC.timestamp(),
        Timestamp::MAX_UTC.timestamp(),
    );
    prop_oneof![
        Just(Timestamp::MIN_UTC),
        Just(Timestamp::MAX_UTC),
        Just(time::latest()),
        (min..=max).prop_map(|secs| Timestamp::from_timestamp(secs, 0).unwrap()),
    ]
}

fn any_backoff() -> impl Strategy<Value = Backoff> {
    (any::<u64>(), 1.0..1e6f64, any::<u64>(), 0.0..=1.0f64).prop_map(
        |(base_ms, factor, max_ms, jitter)| Backoff {
            base_ms,
            factor,
            max_ms: max_ms.max(base_ms),
            jitter,
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn running(
    attempt: i32,
    max_attempts: i32,
    timeout_ms: Option<i64>,
    attempted_at: Option<Timestamp>,
    run_at: Timestamp,
    backoff: Option<Backoff>,
    cancel_requested: bool,
) -> Job {
    Job {
        id: JobId(1),
        queue: "default".into(),
        kind: "k".into(),
        args: json!({}),
        priority: 0,
        state: JobState::Running,
        run_at,
        attempt,
        max_attempts,
        errors: vec![],
        progress: None,
        result: None,
        tags: vec![],
        unique_key: None,
        timeout_ms,
        expires_at: None,
        backoff,
        cancel_requested,
        worker_id: None,
        lease_expires_at: None,
        created_at: run_at,
        attempted_at,
        finished_at: None,
        partition: None,
        cut: Vec::new(),
        schedule: None,
        traceparent: None,
        tracestate: None,
        batch_id: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_failed_attempt_always_lands_somewhere_storable(
        attempt in any::<i32>(),
        max_attempts in any::<i32>(),
        timeout_ms in proptest::option::of(any::<i64>()),
        attempted_at in proptest::option::of(any_time()),
        run_at in any_time(),
        now in any_time(),
        own_backoff in proptest::option::of(any_backoff()),
        default_backoff in any_backoff(),
        retry in any::<bool>(),
        retry_at in proptest::option::of(any_time()),
        cancel_requested in any::<bool>(),
    ) {
        let job = running(attempt, max_attempts, timeout_ms, attempted_at, run_at, own_backoff, cancel_requested);
        let next = after_failure(&job, Failure {
            error: "boom",
            retry,
            retry_at,
            default_backoff: &default_backoff,
            now,
        });
        prop_assert_eq!(next.errors.len(), 1);
        match next.state {
            JobState::Retryable => {
                prop_assert!(retry && !cancel_requested && attempt < max_attempts);
                prop_assert!(next.run_at >= time::earliest() && next.run_at <= time::latest());
                prop_assert!(next.finished_at.is_none());
            }
            JobState::Dead | JobState::Cancelled => prop_assert_eq!(next.finished_at, Some(now)),
            other => prop_assert!(false, "a failure made the job {other}"),
        }
        let reason = rescue_reason(&job, now);
        prop_assert!(reason == LEASE_EXPIRED || reason == TIMED_OUT);
    }
}

#[test]
fn the_largest_stored_timeout_is_not_a_timeout_yet() {
    let now = Timestamp::from_timestamp(1_700_000_000, 0).unwrap();
    let job = running(1, 3, Some(i64::MAX), Some(now), now, None, false);
    assert_eq!(
        rescue_reason(&job, now + Duration::from_secs(60)),
        LEASE_EXPIRED
    );
}
