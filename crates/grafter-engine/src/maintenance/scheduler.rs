//! Makes due `scheduled` and `retryable` jobs `available` (which wakes fetches).

use crate::{Engine, Result};

/// One pass: up to `batch_size` jobs.
pub(super) async fn pass(engine: Engine, batch_size: usize) -> Result<u64> {
    engine.schedule_due(batch_size).await
}
