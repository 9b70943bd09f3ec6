//! Moves jobs not started by their `expires_at` to `expired`.

use grafter_store::MaintenanceBatch;

use crate::{Engine, Result};

/// One pass: up to `batch_size` jobs.
pub(super) async fn pass(engine: Engine, batch_size: usize) -> Result<u64> {
    let batch = MaintenanceBatch {
        now: engine.now(),
        limit: batch_size,
    };
    Ok(engine.store().jobs_expire(batch).await?)
}
