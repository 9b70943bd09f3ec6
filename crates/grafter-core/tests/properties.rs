//! Properties of validation and time arithmetic over extreme inputs: nothing
//! panics, and whatever validation accepts stays within the ranges every
//! backend and client can hold.

use std::time::Duration;

use grafter_core::time::{self, MAX_DURATION_MS};
use grafter_core::{validate_name, Backoff, NewJob, Timestamp};
use proptest::prelude::*;
use serde_json::json;

/// Any time chrono can represent, from far before year 1 to far after 9999.
fn any_time() -> impl Strategy<Value = Timestamp> {
    let (min, max) = (
        Timestamp::MIN_UTC.timestamp(),
        Timestamp::MAX_UTC.timestamp(),
    );
    prop_oneof![
        Just(Timestamp::MIN_UTC),
        Just(Timestamp::MAX_UTC),
        Just(time::earliest()),
        Just(time::latest()),
        (min..=max, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| Timestamp::from_timestamp(secs, nanos).unwrap()),
    ]
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        any::<u64>().prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-1i64),
        Just(0i64),
        Just(1i64),
        Just(i64::MAX),
        Just(MAX_DURATION_MS as i64),
        Just(MAX_DURATION_MS as i64 + 1),
        any::<i64>(),
    ]
}

/// Names of every kind: ordinary, empty, long, with controls, zero-width and
/// bidi characters, NUL, and outer spaces.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,20}",
        Just(String::new()),
        Just(" sp ".to_owned()),
        Just("\u{200b}".to_owned()),
        Just("a\u{0}b".to_owned()),
        Just("x".repeat(256)),
        any::<String>(),
    ]
}

fn any_backoff() -> impl Strategy<Value = Backoff> {
    (
        any::<u64>(),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            1.0..10.0f64
        ],
        any::<u64>(),
        prop_oneof![any::<f64>(), 0.0..=1.0f64],
    )
        .prop_map(|(base_ms, factor, max_ms, jitter)| Backoff {
            base_ms,
            factor,
            max_ms,
            jitter,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn sums_never_panic_and_stay_in_range(at in any_time(), delay in any_duration()) {
        let later = time::after(at, delay);
        prop_assert!(later >= time::earliest() && later <= time::latest());
        let earlier = time::before(at, delay);
        prop_assert!(earlier >= time::earliest() && earlier <= time::latest());
        if at >= time::earliest() && at <= time::latest() {
            prop_assert!(later >= at && earlier <= at);
        }
    }

    #[test]
    fn accepted_jobs_hold_only_storable_values(
        kind in any_name(),
        queue in any_name(),
        max_attempts in any::<i32>(),
        timeout_ms in proptest::option::of(extreme_i64()),
        run_at in proptest::option::of(any_time()),
        expires_at in proptest::option::of(any_time()),
        backoff in proptest::option::of(any_backoff()),
    ) {
        let mut job = NewJob::new(kind, json!({}));
        job.queue = queue;
        job.max_attempts = max_attempts;
        job.timeout_ms = timeout_ms;
        job.run_at = run_at;
        job.expires_at = expires_at;
        job.backoff = backoff;
        if job.validate().is_ok() {
            prop_assert!(validate_name("kind", &job.kind).is_ok());
            prop_assert!(job.max_attempts >= 1);
            if let Some(ms) = job.timeout_ms {
                prop_assert!((1..=MAX_DURATION_MS as i64).contains(&ms));
            }
            for at in [job.run_at, job.expires_at].into_iter().flatten() {
                prop_assert!(at >= time::earliest() && at <= time::latest());
            }
        }
    }

    #[test]
    fn a_valid_backoff_waits_within_its_bounds(backoff in any_backoff(), attempt in any::<u32>()) {
        if backoff.validate().is_ok() {
            let wait = backoff.delay(attempt).as_millis();
            let most = backoff.max_ms as f64 * (1.0 + backoff.jitter);
            prop_assert!(wait as f64 <= most.ceil());
        }
    }

    #[test]
    fn durations_in_ms_are_checked_without_panicking(ms in any::<i128>(), min in any::<u64>()) {
        if let Ok(duration) = time::validate_ms("x", ms, min) {
            prop_assert!(duration.as_millis() as u64 <= MAX_DURATION_MS);
        }
    }
}
