//! Moves jobs not started by their `expires_at` to `expired`.

use std::time::Duration;

use grafter_store::MaintenanceBatch;

use super::{MaintenanceConfig, PassFuture, Service};
use crate::Engine;

/// The expirer service.
pub struct Expirer {
    engine: Engine,
    interval: Duration,
    batch_size: usize,
}

impl Expirer {
    /// An expirer passing as `config` says.
    pub fn new(engine: Engine, config: &MaintenanceConfig) -> Self {
        Expirer {
            engine,
            interval: config.expire_interval(),
            batch_size: config.batch_size,
        }
    }
}

impl Service for Expirer {
    fn name(&self) -> &'static str {
        "expirer"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn pass(&self) -> PassFuture<'_> {
        Box::pin(async move {
            let batch = MaintenanceBatch {
                now: self.engine.now(),
                limit: self.batch_size,
            };
            Ok(self.engine.store().jobs_expire(batch).await?)
        })
    }
}
