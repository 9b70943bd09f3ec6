//! The range of times and durations Grafter accepts, and arithmetic that
//! stays inside it.
//!
//! Every backend must store every time the API accepts, and every client must
//! read it back: PostgreSQL stops at 4713 BC, JavaScript's `Date` and many
//! JSON libraries at four-digit years. So times are kept within years 1 to
//! 9999, durations within [`MAX_DURATION`], and sums saturate at [`latest`]
//! instead of overflowing: no stored value can make a later computation
//! panic or fail.

use std::time::Duration;

use crate::{Timestamp, ValidationError};

/// The longest delay, timeout or interval accepted anywhere: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3_600);

/// [`MAX_DURATION`] in milliseconds, as API fields count it.
pub const MAX_DURATION_MS: u64 = MAX_DURATION.as_millis() as u64;

/// 0001-01-01T00:00:00Z, the earliest time accepted.
pub fn earliest() -> Timestamp {
    Timestamp::from_timestamp(-62_135_596_800, 0).expect("year 1 is a valid time")
}

/// 9999-12-31T23:59:59.999999Z, the latest time accepted and where sums stop.
pub fn latest() -> Timestamp {
    Timestamp::from_timestamp(253_402_300_799, 999_999_000).expect("year 9999 is a valid time")
}

/// `at` moved into the accepted range.
pub fn clamp(at: Timestamp) -> Timestamp {
    at.clamp(earliest(), latest())
}

/// `at + delay`, or [`latest`] if that is later or overflows.
pub fn after(at: Timestamp, delay: Duration) -> Timestamp {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .map_or_else(latest, clamp)
}

/// `at + ms` milliseconds, saturating as [`after`] does; negative counts as 0.
pub fn after_ms(at: Timestamp, ms: i64) -> Timestamp {
    after(at, Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// `at - age`, or [`earliest`] if that is earlier or overflows.
pub fn before(at: Timestamp, age: Duration) -> Timestamp {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|d| at.checked_sub_signed(d))
        .map_or_else(earliest, clamp)
}

/// Checks `at` is within years 1 to 9999; the error names `field`.
pub fn validate_time(field: &str, at: Timestamp) -> Result<(), ValidationError> {
    if at < earliest() || at > latest() {
        return Err(ValidationError::new(
            field,
            format!(
                "must be between {} and {}, got {}",
                earliest().to_rfc3339(),
                latest().to_rfc3339(),
                at.to_rfc3339()
            ),
        ));
    }
    Ok(())
}

/// Checks a count of milliseconds is within `min..=`[`MAX_DURATION_MS`] and
/// returns it as a duration; the error names `field` and the range.
pub fn validate_ms(field: &str, ms: i128, min: u64) -> Result<Duration, ValidationError> {
    if ms < i128::from(min) || ms > i128::from(MAX_DURATION_MS) {
        return Err(ValidationError::new(
            field,
            format!(
                "must be between {min} and {MAX_DURATION_MS} milliseconds (100 years), got {ms}"
            ),
        ));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// `duration` in whole milliseconds, at most [`MAX_DURATION_MS`]: what a
/// client sends for a [`Duration`] it was given.
pub fn saturating_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_DURATION_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_stop_at_the_ends_of_the_range() {
        let now = Timestamp::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(after(now, Duration::MAX), latest());
        assert_eq!(after(latest(), Duration::from_millis(1)), latest());
        assert_eq!(after_ms(now, i64::MAX), latest());
        assert_eq!(after_ms(now, -5), now);
        assert_eq!(
            after(now, Duration::from_secs(1)).timestamp(),
            1_700_000_001
        );
        assert_eq!(before(now, Duration::MAX), earliest());
        assert_eq!(before(earliest(), Duration::from_secs(1)), earliest());
        assert_eq!(clamp(Timestamp::MIN_UTC), earliest());
        assert_eq!(clamp(Timestamp::MAX_UTC), latest());
    }

    #[test]
    fn the_range_is_four_digit_years() {
        assert_eq!(earliest().to_rfc3339(), "0001-01-01T00:00:00+00:00");
        assert_eq!(latest().to_rfc3339(), "9999-12-31T23:59:59.999999+00:00");
        assert!(validate_time("run_at", earliest()).is_ok());
        assert!(validate_time("run_at", latest()).is_ok());
        let error = validate_time("run_at", Timestamp::MIN_UTC).unwrap_err();
        assert_eq!(error.field, "run_at");
        assert!(error.message.contains("0001-01-01"), "{}", error.message);
        assert!(validate_time("run_at", Timestamp::MAX_UTC).is_err());
    }

    #[test]
    fn durations_are_checked_against_their_range() {
        assert_eq!(validate_ms("x", 0, 0).unwrap(), Duration::ZERO);
        assert!(validate_ms("x", 0, 1).is_err());
        assert!(validate_ms("x", -1, 0).is_err());
        assert!(validate_ms("x", i128::from(MAX_DURATION_MS), 1).is_ok());
        let error = validate_ms("timeout_ms", i128::from(u64::MAX), 1).unwrap_err();
        assert_eq!(error.field, "timeout_ms");
        assert!(error.message.contains("100 years"), "{}", error.message);
        assert_eq!(saturating_ms(Duration::MAX), MAX_DURATION_MS);
        assert_eq!(saturating_ms(Duration::from_millis(7)), 7);
    }
}
