//! Moves jobs not started by their `expires_at` to `expired`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_store::{MaintenanceBatch, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The expirer service.
pub struct Expirer {
    store: Arc<dyn Store>,
    interval: Duration,
    batch_size: usize,
}

impl Expirer {
    /// An expirer passing every `interval`, touching at most `batch_size` jobs a pass.
    pub fn new(store: Arc<dyn Store>, interval: Duration, batch_size: usize) -> Self {
        Expirer {
            store,
            interval,
            batch_size,
        }
    }

    /// Runs until cancelled, doing passes while this node leads.
    pub async fn run(self, leading: watch::Receiver<bool>, cancel: CancellationToken) {
        let Expirer {
            store,
            interval,
            batch_size,
        } = self;
        super::run_periodically("expirer", interval, batch_size, leading, cancel, || {
            store.jobs_expire(MaintenanceBatch {
                now: Utc::now(),
                limit: batch_size,
            })
        })
        .await;
    }
}
