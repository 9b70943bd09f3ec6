//! Makes due `scheduled` and `retryable` jobs `available` (which wakes fetches).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_store::{MaintenanceBatch, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The scheduler service.
pub struct Scheduler {
    store: Arc<dyn Store>,
    interval: Duration,
    batch_size: usize,
}

impl Scheduler {
    /// A scheduler passing every `interval`, touching at most `batch_size` jobs a pass.
    pub fn new(store: Arc<dyn Store>, interval: Duration, batch_size: usize) -> Self {
        Scheduler {
            store,
            interval,
            batch_size,
        }
    }

    /// Runs until cancelled, doing passes while this node leads.
    pub async fn run(self, leading: watch::Receiver<bool>, cancel: CancellationToken) {
        let Scheduler {
            store,
            interval,
            batch_size,
        } = self;
        super::run_periodically("scheduler", interval, batch_size, leading, cancel, || {
            store.jobs_schedule(MaintenanceBatch {
                now: Utc::now(),
                limit: batch_size,
            })
        })
        .await;
    }
}
