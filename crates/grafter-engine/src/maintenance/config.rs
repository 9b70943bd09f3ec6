//! How often the maintenance services run, how much each pass may touch, and
//! how long finished jobs are kept (the `[maintenance]` and `[retention]`
//! tables of the config file).

use std::time::Duration;

use serde::Deserialize;

/// How often the maintenance services run and how much each run may touch.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Scheduler: promotes due `scheduled`/`retryable` jobs.
    pub schedule_interval_ms: u64,
    /// Rescuer: ends expired leases.
    pub rescue_interval_ms: u64,
    /// Periodic enqueuer: fires due schedules.
    pub periodic_interval_ms: u64,
    /// Expirer: expires jobs past `expires_at`.
    pub expire_interval_ms: u64,
    /// Most jobs one run of a service touches; a full batch runs again at once.
    pub batch_size: usize,
    /// A registered worker silent this long is dead: the rescuer forgets it and
    /// retries its running jobs at once.
    pub worker_stale_ms: u64,
    /// How long the maintenance leadership lasts unless renewed: when a leader
    /// dies, another node takes over within this time.
    pub leader_ttl_ms: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            schedule_interval_ms: 500,
            rescue_interval_ms: 1_000,
            periodic_interval_ms: 500,
            expire_interval_ms: 1_000,
            batch_size: 1_000,
            worker_stale_ms: 15_000,
            leader_ttl_ms: 5_000,
        }
    }
}

impl MaintenanceConfig {
    /// The scheduler's period.
    pub fn schedule_interval(&self) -> Duration {
        Duration::from_millis(self.schedule_interval_ms)
    }
    /// The rescuer's period.
    pub fn rescue_interval(&self) -> Duration {
        Duration::from_millis(self.rescue_interval_ms)
    }
    /// The periodic enqueuer's period.
    pub fn periodic_interval(&self) -> Duration {
        Duration::from_millis(self.periodic_interval_ms)
    }
    /// The expirer's period.
    pub fn expire_interval(&self) -> Duration {
        Duration::from_millis(self.expire_interval_ms)
    }
    /// How long a silent worker counts as alive.
    pub fn worker_stale_after(&self) -> Duration {
        Duration::from_millis(self.worker_stale_ms)
    }
    /// How long the maintenance leadership lasts unless renewed.
    pub fn leader_ttl(&self) -> Duration {
        Duration::from_millis(self.leader_ttl_ms)
    }
}

/// How long finished jobs and audit entries are kept before the pruner
/// deletes them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Completed, cancelled and expired jobs, in ms (default 1 day).
    pub finished_ms: u64,
    /// Dead jobs, in ms (default 30 days), to inspect and retry by hand.
    pub dead_ms: u64,
    /// Audit log entries, in ms (default 90 days).
    pub audit_ms: u64,
    /// How often the pruner runs, in ms.
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            finished_ms: 86_400_000,
            dead_ms: 30 * 86_400_000,
            audit_ms: 90 * 86_400_000,
            interval_ms: 60_000,
        }
    }
}
