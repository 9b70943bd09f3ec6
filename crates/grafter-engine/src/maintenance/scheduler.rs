//! Makes due `scheduled` and `retryable` jobs `available` (which wakes fetches).

use std::time::Duration;

use super::{MaintenanceConfig, PassFuture, Service};
use crate::Engine;

/// The scheduler service.
pub struct Scheduler {
    engine: Engine,
    interval: Duration,
    batch_size: usize,
}

impl Scheduler {
    /// A scheduler passing as `config` says.
    pub fn new(engine: Engine, config: &MaintenanceConfig) -> Self {
        Scheduler {
            engine,
            interval: config.schedule_interval(),
            batch_size: config.batch_size,
        }
    }
}

impl Service for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn pass(&self) -> PassFuture<'_> {
        Box::pin(self.engine.schedule_due(self.batch_size))
    }
}
