//! Ends expired leases: the attempt is recorded as failed ("lease expired" or
//! "timed out") and the job retried or made dead by the usual rules. First it
//! forgets registered workers that went silent, ending their leases at once, so
//! a dead worker's jobs come back within seconds even under long leases.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use grafter_core::Backoff;
use grafter_store::{JobsRescue, Store, WorkersPrune};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The rescuer service.
pub struct Rescuer {
    store: Arc<dyn Store>,
    interval: Duration,
    batch_size: usize,
    backoff: Backoff,
    worker_stale_after: Duration,
}

impl Rescuer {
    /// A rescuer passing every `interval`, touching at most `batch_size` jobs a pass.
    pub fn new(
        store: Arc<dyn Store>,
        interval: Duration,
        batch_size: usize,
        backoff: Backoff,
        worker_stale_after: Duration,
    ) -> Self {
        Rescuer {
            store,
            interval,
            batch_size,
            backoff,
            worker_stale_after,
        }
    }

    /// Runs until cancelled, doing passes while this node leads.
    pub async fn run(self, leading: watch::Receiver<bool>, cancel: CancellationToken) {
        let Rescuer {
            store,
            interval,
            batch_size,
            backoff,
            worker_stale_after,
        } = self;
        super::run_periodically("rescuer", interval, batch_size, leading, cancel, || {
            let store = store.clone();
            async move {
                let now = Utc::now();
                let forgotten = store
                    .workers_prune(WorkersPrune {
                        now,
                        stale_after: worker_stale_after,
                    })
                    .await?;
                if forgotten > 0 {
                    tracing::warn!(
                        workers = forgotten,
                        "forgot silent workers; retrying their jobs"
                    );
                }
                store
                    .jobs_rescue_expired(JobsRescue {
                        now,
                        limit: batch_size,
                        backoff,
                    })
                    .await
            }
        })
        .await;
    }
}
