//! Ends expired leases: the attempt is recorded as failed ("lease expired" or
//! "timed out") and the job retried or made dead by the usual rules.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::Backoff;
use grafter_store::{JobsRescue, Store};
use tokio_util::sync::CancellationToken;

/// The rescuer service.
pub struct Rescuer {
    store: Arc<dyn Store>,
    interval: Duration,
    batch_size: usize,
    backoff: Backoff,
}

impl Rescuer {
    /// A rescuer passing every `interval`, touching at most `batch_size` jobs a pass.
    pub fn new(store: Arc<dyn Store>, interval: Duration, batch_size: usize, backoff: Backoff) -> Self {
        Rescuer { store, interval, batch_size, backoff }
    }

    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let Rescuer { store, interval, batch_size, backoff } = self;
        super::run_periodically("rescuer", interval, batch_size, cancel, || {
            store.jobs_rescue_expired(JobsRescue { now: Utc::now(), limit: batch_size, backoff })
        })
        .await;
    }
}
