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
    /// Most bytes of args one fetch leases (at least one job whatever its
    /// size), so a fetch of many large jobs answers a bounded size.
    pub fetch_max_bytes: usize,
}

/// [`EngineConfig::fetch_max_bytes`] when not set: 4 MiB. Parsed args take
/// several times their JSON size in memory (a megabyte of tiny objects, about
/// sixty), on the server and in the worker; a thousand jobs of 4 KB still fit.
pub const DEFAULT_FETCH_MAX_BYTES: usize = 4 * 1024 * 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            retry: Backoff::default(),
            default_lease: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            fetch_max_bytes: DEFAULT_FETCH_MAX_BYTES,
        }
    }
}
