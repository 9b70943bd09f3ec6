//! Ends expired leases: the attempt is recorded as failed ("lease expired" or
//! "timed out") and the job retried or made dead by the usual rules. First it
//! forgets registered workers that went silent, ending their leases at once, so
//! a dead worker's jobs come back within seconds even under long leases.

use std::time::Duration;

use grafter_store::{JobsRescue, WorkersPrune};

use super::{MaintenanceConfig, PassFuture, Service};
use crate::Engine;

/// The rescuer service.
pub struct Rescuer {
    engine: Engine,
    interval: Duration,
    batch_size: usize,
    worker_stale_after: Duration,
}

impl Rescuer {
    /// A rescuer passing as `config` says.
    pub fn new(engine: Engine, config: &MaintenanceConfig) -> Self {
        Rescuer {
            engine,
            interval: config.rescue_interval(),
            batch_size: config.batch_size,
            worker_stale_after: config.worker_stale_after(),
        }
    }
}

impl Service for Rescuer {
    fn name(&self) -> &'static str {
        "rescuer"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn pass(&self) -> PassFuture<'_> {
        Box::pin(async move {
            let store = self.engine.store();
            let now = self.engine.now();
            let forgotten = store
                .workers_prune(WorkersPrune {
                    now,
                    stale_after: self.worker_stale_after,
                })
                .await?;
            if forgotten > 0 {
                tracing::warn!(
                    workers = forgotten,
                    "forgot silent workers; retrying their jobs"
                );
            }
            let rescue = JobsRescue {
                now,
                limit: self.batch_size,
                backoff: self.engine.config().retry,
            };
            Ok(store.jobs_rescue_expired(rescue).await?)
        })
    }
}
