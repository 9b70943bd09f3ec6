//! How the engine treats jobs that do not say for themselves.

use std::time::Duration;

use grafter_core::Backoff;

/// The engine's defaults and bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Retry backoff for jobs without their own.
    pub retry: Backoff,
    /// Lease length when a fetch or heartbeat names none.
    pub default_lease: Duration,
    /// Longest a fetch may wait for jobs.
    pub max_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            retry: Backoff::default(),
            default_lease: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
        }
    }
}
