use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest wait between attempts: a year.
const MAX_DELAY_MS: u64 = 365 * 24 * 3_600_000;

/// Exponential backoff with jitter: the wait before attempt `n + 1` after attempt
/// `n` failed is `min(max, base * factor^(n-1))`, then moved by up to `jitter`
/// (a fraction) either way so that jobs that failed together do not all come back
/// at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Wait after the first failed attempt, in milliseconds (at most `max_ms`).
    #[cfg_attr(feature = "openapi", schema(maximum = 31536000000_u64))]
    pub base_ms: u64,
    /// Multiplier applied for each further attempt (at least 1.0).
    #[cfg_attr(feature = "openapi", schema(minimum = 1.0))]
    pub factor: f64,
    /// Upper bound on any single wait, in milliseconds (at most 365 days).
    #[cfg_attr(feature = "openapi", schema(maximum = 31536000000_u64))]
    pub max_ms: u64,
    /// Fraction (0.0–1.0) by which each wait is randomly moved.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, doubling, capped at 1 h, ±10 %: 25 attempts span about a day.
    fn default() -> Self {
        Backoff {
            base_ms: 1_000,
            factor: 2.0,
            max_ms: 3_600_000,
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// Checks the values make sense; returns the offending field's message.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(format!(
                "factor must be a number >= 1.0, got {}",
                self.factor
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be between 0.0 and 1.0, got {}",
                self.jitter
            ));
        }
        if self.max_ms > MAX_DELAY_MS {
            return Err(format!(
                "max_ms must be at most {MAX_DELAY_MS} (365 days), got {}",
                self.max_ms
            ));
        }
        if self.max_ms < self.base_ms {
            return Err(format!(
                "max_ms ({}) must be at least base_ms ({})",
                self.max_ms, self.base_ms
            ));
        }
        Ok(())
    }

    /// The wait without jitter after failed attempt number `attempt` (1-based).
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1_000) as i32;
        let millis = (self.base_ms as f64) * self.factor.powi(exponent);
        let capped = if millis.is_finite() {
            millis.min(self.max_ms as f64)
        } else {
            self.max_ms as f64
        };
        Duration::from_millis(capped as u64)
    }

    /// The wait, with jitter, after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal_delay(attempt).as_millis() as f64;
        if self.jitter == 0.0 || nominal == 0.0 {
            return Duration::from_millis(nominal as u64);
        }
        let spread = rand::rng().random_range(-self.jitter..=self.jitter);
        Duration::from_millis((nominal * (1.0 + spread)).max(0.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let b = Backoff {
            base_ms: 100,
            factor: 2.0,
            max_ms: 1_000,
            jitter: 0.0,
        };
        let waits: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.delay(u32::MAX).as_millis(), 1_000);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff {
            base_ms: 1_000,
            factor: 2.0,
            max_ms: 60_000,
            jitter: 0.25,
        };
        let samples: Vec<u128> = (0..500).map(|_| b.delay(3).as_millis()).collect();
        assert!(samples.iter().all(|&ms| (3_000..=5_000).contains(&ms)));
        // With 500 samples the spread must actually show.
        assert!(samples.iter().min() != samples.iter().max());
    }

    #[test]
    fn rejects_nonsense() {
        let bad_factor = Backoff {
            factor: 0.5,
            ..Backoff::default()
        };
        assert!(bad_factor.validate().unwrap_err().contains("factor"));
        let bad_jitter = Backoff {
            jitter: 2.0,
            ..Backoff::default()
        };
        assert!(bad_jitter.validate().unwrap_err().contains("jitter"));
        let huge = Backoff {
            max_ms: u64::MAX,
            ..Backoff::default()
        };
        assert!(huge.validate().unwrap_err().contains("max_ms"));
        let bad_max = Backoff {
            base_ms: 10,
            max_ms: 1,
            ..Backoff::default()
        };
        assert!(bad_max.validate().unwrap_err().contains("max_ms"));
        assert!(Backoff::default().validate().is_ok());
    }
}
