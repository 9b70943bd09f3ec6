//! Ends expired leases: the attempt is recorded as failed ("lease expired" or
//! "timed out") and the job retried or made dead by the usual rules. First it
//! forgets registered workers that went silent, ending their leases at once, so
//! a dead worker's jobs come back within seconds even under long leases.

use std::time::Duration;

use grafter_store::{JobsRescue, WorkersPrune};

use crate::{Engine, Result};

/// One pass: workers silent for `stale_after` forgotten, then up to
/// `batch_size` expired leases ended.
pub(super) async fn pass(engine: Engine, batch_size: usize, stale_after: Duration) -> Result<u64> {
    let store = engine.store();
    let now = engine.now();
    let forgotten = store
        .workers_prune(WorkersPrune { now, stale_after })
        .await?;
    if forgotten > 0 {
        tracing::warn!(
            workers = forgotten,
            "forgot silent workers; retrying their jobs"
        );
    }
    let rescue = JobsRescue {
        now,
        limit: batch_size,
        backoff: engine.config().retry,
    };
    let rescued = store.jobs_rescue_expired(rescue).await?;
    if rescued > 0 {
        engine.observer().leases_expired(rescued);
        // Each rescued job held a slot of its queue, if limited.
        engine.announce_freed(None);
    }
    Ok(rescued)
}
